"""The REPL's command language: one value per command, and `parse_command` (pure).

`parse_command` turns a line into a command value; repl_execute.py runs it and
repl.py reads the lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class ListPeers:
    pass


@dataclass(frozen=True, slots=True)
class ListSyncProgress:
    pass


@dataclass(frozen=True, slots=True)
class ListRecipes:
    mine: bool = False  # `ls r mine`: only this node's own recipes


@dataclass(frozen=True, slots=True)
class ListRemoteRecipes:
    peer_prefix: str | None  # None: every connected peer


@dataclass(frozen=True, slots=True)
class CreateRecipe:
    name: str
    ingredients: str
    instructions: str


@dataclass(frozen=True, slots=True)
class PublishRecipe:
    recipe_id: str


@dataclass(frozen=True, slots=True)
class EditRecipe:
    recipe_id: str
    name: str | None  # None: keep the current value
    ingredients: str | None
    instructions: str | None


@dataclass(frozen=True, slots=True)
class UnpublishRecipe:
    recipe_id: str


@dataclass(frozen=True, slots=True)
class DeleteRecipe:
    recipe_id: str


@dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


Command = (
    Help
    | ListPeers
    | ListSyncProgress
    | ListRecipes
    | ListRemoteRecipes
    | CreateRecipe
    | EditRecipe
    | PublishRecipe
    | UnpublishRecipe
    | DeleteRecipe
    | Status
    | Quit
)

HELP_TEXT = """\
commands:
  help                                    this list
  ls p                                    connected and known peers
  ls sp                                   sync progress per peer and origin
  ls r                                    recipes in the local store
  ls r mine                               only your own recipes
  ls r all                                published recipes of every connected peer
  ls r PEER                               published recipes of one peer (id or unique prefix)
  create r NAME|INGREDIENTS|INSTRUCTIONS  create a recipe (not yet published)
  edit r ID NAME|INGREDIENTS|INSTRUCTIONS change one of your recipes (empty field: keep it)
  publish r ID                            publish one of your recipes
  unpublish r ID                          unpublish it again
  delete r ID                             delete one of your recipes
  status                                  peer id, addresses, peers, entries, digest
  quit                                    stop the node"""

_LS_USAGE = "usage: ls p | ls sp | ls r [all | mine | PEER]"
_EDIT_USAGE = "usage: edit r ID NAME|INGREDIENTS|INSTRUCTIONS (an empty field keeps its value)"
_CREATE_USAGE = "usage: create r NAME|INGREDIENTS|INSTRUCTIONS"


class ParseError(ValueError):
    """A line that is not a command; the message is one line for the user."""


def parse_command(line: str) -> Command | None:
    """The command on `line`, None for a blank line, or ParseError."""
    words = line.split()
    if not words:
        return None
    verb, arguments = words[0].lower(), words[1:]
    if verb in ("help", "?"):
        _expect_no_arguments(verb, arguments)
        return Help()
    if verb == "status":
        _expect_no_arguments(verb, arguments)
        return Status()
    if verb in ("quit", "exit"):
        _expect_no_arguments(verb, arguments)
        return Quit()
    if verb == "ls":
        return _parse_ls(arguments)
    if verb == "create":
        return _parse_create(line)
    if verb == "edit":
        return _parse_edit(line)
    if verb in ("publish", "unpublish", "delete"):
        if len(arguments) != 2 or arguments[0].lower() != "r":
            raise ParseError(f"usage: {verb} r ID")
        recipe_id = arguments[1]
        if verb == "publish":
            return PublishRecipe(recipe_id)
        return UnpublishRecipe(recipe_id) if verb == "unpublish" else DeleteRecipe(recipe_id)
    raise ParseError(f"unknown command {words[0]!r}; type help for the list")


def _expect_no_arguments(verb: str, arguments: Sequence[str]) -> None:
    if arguments:
        raise ParseError(f"{verb} takes no arguments")


def _parse_ls(arguments: Sequence[str]) -> Command:
    what = [argument.lower() for argument in arguments[:1]]
    if what == ["p"] and len(arguments) == 1:
        return ListPeers()
    if what == ["sp"] and len(arguments) == 1:
        return ListSyncProgress()
    if what == ["r"]:
        if len(arguments) == 1:
            return ListRecipes()
        if len(arguments) == 2:
            target = arguments[1]
            if target.lower() == "mine":
                return ListRecipes(mine=True)
            return ListRemoteRecipes(None if target.lower() == "all" else target)
    raise ParseError(_LS_USAGE)


def _parse_create(line: str) -> CreateRecipe:
    # Split off "create r" by hand: the fields keep their inner spacing.
    _, _, rest = line.strip().partition(" ")
    kind, _, fields_text = rest.strip().partition(" ")
    if kind.lower() != "r":
        raise ParseError(_CREATE_USAGE)
    fields = [field.strip() for field in fields_text.split("|")]
    if len(fields) != 3:
        raise ParseError(f"{_CREATE_USAGE} (exactly three fields separated by |)")
    name, ingredients, instructions = fields
    if not name:
        raise ParseError("the recipe needs a name: create r NAME|INGREDIENTS|INSTRUCTIONS")
    return CreateRecipe(name, ingredients, instructions)


def _parse_edit(line: str) -> EditRecipe:
    # "edit r ID fields": the fields keep their inner spacing; an empty one keeps its value.
    parts = line.strip().split(None, 3)
    if len(parts) < 4 or parts[1].lower() != "r":
        raise ParseError(_EDIT_USAGE)
    fields = [field.strip() for field in parts[3].split("|")]
    if len(fields) != 3:
        raise ParseError(f"{_EDIT_USAGE}; exactly three fields separated by |")
    if not any(fields):
        raise ParseError("nothing to change: every field is empty")
    name, ingredients, instructions = (field or None for field in fields)
    return EditRecipe(parts[2], name, ingredients, instructions)


__all__ = [
    "HELP_TEXT",
    "Command",
    "CreateRecipe",
    "DeleteRecipe",
    "EditRecipe",
    "Help",
    "ListPeers",
    "ListRecipes",
    "ListRemoteRecipes",
    "ListSyncProgress",
    "ParseError",
    "PublishRecipe",
    "Quit",
    "Status",
    "UnpublishRecipe",
    "parse_command",
]
