"""The command prompt on stdin of `p2psync run`.

Three layers, each testable alone: `parse_command` turns a line into a
command value (pure), `execute` runs one command against a NodeService and
renders the answer, and `serve_repl` reads stdin in worker threads so that a
silent terminal never holds up the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import termios
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import trio

from p2psync.node.service import NodeService, PeerView, RecipeView, UserError

PROMPT = "p2psync> "
REMOTE_RECIPES_TIMEOUT_SECONDS = 3.0
# The service enforces the timeout per peer; this only guards against it not doing so.
_REMOTE_RECIPES_GRACE_SECONDS = 2.0
HISTORY_LENGTH = 1000
SHORT_PEER_ID_CHARS = 14  # every Ed25519 peer id starts with "12D3KooW"; 6 more tell them apart
_MAX_CELL_CHARS = 40

log = logging.getLogger(__name__)


class ReadyStatus(Protocol):
    """trio's task_status as serve_repl uses it. Spelled out because trio-typing's
    stubs (installed for tests) shadow trio's own types and lack trio.TaskStatus."""

    def started(self) -> None: ...


# Typed loosely because trio-typing's stale stubs do not know abandon_on_cancel
# (trio >= 0.23), while trio itself no longer accepts the old `cancellable`.
_run_in_worker_thread: Callable[..., Awaitable[str]] = trio.to_thread.run_sync


# --- commands ---------------------------------------------------------------


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
    pass


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
    | PublishRecipe
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
  ls r all                                published recipes of every connected peer
  ls r PEER                               published recipes of one peer (id or unique prefix)
  create r NAME|INGREDIENTS|INSTRUCTIONS  create a recipe (not yet published)
  publish r ID                            publish one of your recipes
  delete r ID                             delete one of your recipes
  status                                  peer id, addresses, peers, entries, digest
  quit                                    stop the node"""

_LS_USAGE = "usage: ls p | ls sp | ls r [all | PEER]"
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
    if verb in ("publish", "delete"):
        if len(arguments) != 2 or arguments[0].lower() != "r":
            raise ParseError(f"usage: {verb} r ID")
        recipe_id = arguments[1]
        return PublishRecipe(recipe_id) if verb == "publish" else DeleteRecipe(recipe_id)
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


# --- execution and rendering ------------------------------------------------


async def execute(service: NodeService, command: Command, out: Callable[[str], None]) -> bool:
    """Run one command, writing its answer through `out`; False once the node should stop.

    A UserError becomes an `error: ...` line: the prompt goes on.
    """
    try:
        return await _execute(service, command, out)
    except UserError as error:
        out(f"error: {_one_line(str(error))}")
        return True


async def _execute(service: NodeService, command: Command, out: Callable[[str], None]) -> bool:
    match command:
        case Help():
            out(HELP_TEXT)
        case Status():
            _show_status(service, out)
        case ListRecipes():
            _show_local_recipes(service, out)
        case ListPeers():
            _show_peers(service.list_peers(), out)
        case ListSyncProgress():
            _show_sync_progress(service, out)
        case ListRemoteRecipes(peer_prefix):
            await _show_remote_recipes(service, peer_prefix, out)
        case CreateRecipe(name, ingredients, instructions):
            recipe = await service.create_recipe(name, ingredients, instructions)
            out(f"created {recipe.id} {recipe.name!r} (not published; publish r {recipe.id})")
        case PublishRecipe(recipe_id):
            recipe = await service.publish_recipe(recipe_id)
            out(f"published {recipe.id} {recipe.name!r}")
        case DeleteRecipe(recipe_id):
            await service.delete_recipe(recipe_id)
            out(f"deleted {recipe_id}")
        case Quit():
            out("stopping")
            await service.stop()
            return False
    return True


def _show_status(service: NodeService, out: Callable[[str], None]) -> None:
    status = service.status()
    listen = status.listen_addrs or ["(not listening)"]
    lines = [
        f"peer id:   {status.peer_id}",
        f"profile:   {status.profile or '-'}",
        f"data dir:  {status.data_dir}",
        f"network:   {status.network}",
        f"listening: {listen[0]}",
        *(f"           {address}" for address in listen[1:]),
        f"peers:     {status.peers}",
        f"entries:   {status.entries}",
        f"recipes:   {status.recipes}",
        f"digest:    {status.digest}",
    ]
    out("\n".join(lines))


def _show_local_recipes(service: NodeService, out: Callable[[str], None]) -> None:
    recipes = service.list_recipes()
    if not recipes:
        out("no recipes yet; create r NAME|INGREDIENTS|INSTRUCTIONS")
        return
    own_peer_id = service.status().peer_id
    rows = [
        [
            recipe.id,
            recipe.name,
            "me" if recipe.author == own_peer_id else short_peer_id(recipe.author),
            "yes" if recipe.published else "no",
            recipe.ingredients,
        ]
        for recipe in recipes
    ]
    out(render_table(["ID", "NAME", "AUTHOR", "PUBLISHED", "INGREDIENTS"], rows))
    out(f"{len(recipes)} recipe{'s' if len(recipes) != 1 else ''}")


def _show_peers(peers: Sequence[PeerView], out: Callable[[str], None]) -> None:
    if not peers:
        out("no peers known yet")
        return
    rows = [
        [
            short_peer_id(peer.peer_id),
            _addresses_cell(peer.addrs),
            peer.source,
            peer.state,
            f"{peer.syncs_ok} ok / {peer.syncs_failed} failed",
            _when(peer.last_sync),
        ]
        for peer in sorted(peers, key=lambda peer: (not peer.connected, peer.peer_id))
    ]
    out(render_table(["PEER", "ADDRESS", "SOURCE", "STATE", "SYNCS", "LAST SYNC"], rows))


def _show_sync_progress(service: NodeService, out: Callable[[str], None]) -> None:
    progress = service.sync_progress()
    if not progress:
        out("no sync progress yet")
        return
    last_sync = {peer.peer_id: peer.last_sync for peer in service.list_peers()}
    rows: list[list[str]] = []
    # This node's own counts first: they are what the peers are measured against.
    peers_in_order = sorted(progress, key=lambda peer: (peer != "self", peer))
    for peer in peers_in_order:
        peer_label = "self" if peer == "self" else short_peer_id(peer)
        for origin, counts in sorted(progress[peer].items()):
            held, known = counts.get("held", 0), counts.get("known", 0)
            rows.append(
                [
                    peer_label,
                    short_peer_id(origin),
                    str(held),
                    str(known),
                    _percent(held, known),
                    "-" if peer == "self" else _when(last_sync.get(peer)),
                ]
            )
    out(render_table(["PEER", "ORIGIN", "HELD", "KNOWN", "PERCENT", "LAST SYNC"], rows))


async def _show_remote_recipes(
    service: NodeService, peer_prefix: str | None, out: Callable[[str], None]
) -> None:
    with trio.move_on_after(
        REMOTE_RECIPES_TIMEOUT_SECONDS + _REMOTE_RECIPES_GRACE_SECONDS
    ) as deadline:
        answers = await service.remote_published(peer_prefix, REMOTE_RECIPES_TIMEOUT_SECONDS)
    if deadline.cancelled_caught:
        raise UserError(f"no answer within {REMOTE_RECIPES_TIMEOUT_SECONDS:g} s")
    if not answers:
        out("no connected peer answered")
        return
    for position, (peer_id, recipes) in enumerate(sorted(answers.items())):
        if position:
            out("")
        count = f"{len(recipes)} published recipe{'s' if len(recipes) != 1 else ''}"
        out(f"peer {peer_id}: {count}")
        if recipes:
            out(_remote_recipes_table(recipes))


def _remote_recipes_table(recipes: Sequence[RecipeView]) -> str:
    rows = [
        [recipe.id, recipe.name, short_peer_id(recipe.author), recipe.ingredients]
        for recipe in recipes
    ]
    return render_table(["ID", "NAME", "AUTHOR", "INGREDIENTS"], rows)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, long cells cut to stay readable."""
    cells = [list(headers)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def short_peer_id(peer_id: str) -> str:
    if len(peer_id) <= SHORT_PEER_ID_CHARS + 1:
        return peer_id
    return peer_id[:SHORT_PEER_ID_CHARS] + "…"


def _cell(value: str) -> str:
    flat = _one_line(value)
    return flat if len(flat) <= _MAX_CELL_CHARS else flat[: _MAX_CELL_CHARS - 1] + "…"


def _addresses_cell(addresses: Sequence[str]) -> str:
    if not addresses:
        return "-"
    more = f" (+{len(addresses) - 1})" if len(addresses) > 1 else ""
    return addresses[0] + more


def _percent(held: int, known: int) -> str:
    if known <= 0:
        return "100%"
    return f"{min(held, known) * 100 // known}%"


def _when(iso_time: str | None) -> str:
    return iso_time or "never"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the stdin loop ---------------------------------------------------------


async def serve_repl(
    service: NodeService,
    *,
    stdin: TextIO | None = None,
    history_path: Path | None = None,
    out: Callable[[str], None] | None = None,
    task_status: ReadyStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read and run commands until `quit`, end of input, or cancellation.

    End of input on a terminal means the user pressed Ctrl-D: stop the node.
    End of input on a pipe or file only ends the REPL; the node runs on.
    """
    input_stream = sys.stdin if stdin is None else stdin
    write = out if out is not None else _print_to_stdout
    interactive = _is_terminal(input_stream)
    read_line = (
        _terminal_reader(input_stream, history_path) if interactive else input_stream.readline
    )
    task_status.started()
    with _terminal_restored_on_exit(input_stream if interactive else None):
        while True:
            # abandon_on_cancel: a thread blocked on a silent stdin must not delay
            # shutdown; trio's worker threads are daemon threads, so exit proceeds.
            line = await _run_in_worker_thread(read_line, abandon_on_cancel=True)
            if not line:
                if interactive:
                    write("")
                    await service.stop()
                else:
                    log.info("stdin closed: REPL ends, the node keeps running")
                return
            if not await _handle_line(service, line, write):
                return


async def _handle_line(service: NodeService, line: str, write: Callable[[str], None]) -> bool:
    try:
        command = parse_command(line)
    except ParseError as error:
        write(f"error: {error}")
        return True
    if command is None:
        return True
    try:
        return await execute(service, command, write)
    except Exception:
        # A bug behind one command must not take the node (and its peers' syncs) down.
        log.exception("REPL command %r failed", line.strip())
        write("error: internal error (details in the log)")
        return True


def _print_to_stdout(text: str) -> None:
    print(text, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_reader(stream: TextIO, history_path: Path | None) -> Callable[[], str]:
    """A blocking read of one line with a prompt; '' at end of input."""
    line_editor = _load_line_editor(history_path) if _is_process_stdin(stream) else None

    def read_with_line_editing() -> str:
        try:
            line = input(PROMPT)
        except EOFError:
            return ""
        if line_editor is not None and history_path is not None and line.strip():
            with contextlib.suppress(OSError):
                line_editor.append_history_file(1, str(history_path))
        return line + "\n"

    def read_with_prompt() -> str:
        sys.stdout.write(PROMPT)
        sys.stdout.flush()
        return stream.readline()

    # input() reads the process's stdin only; another terminal gets a plain prompt.
    return read_with_line_editing if _is_process_stdin(stream) else read_with_prompt


def _is_process_stdin(stream: TextIO) -> bool:
    try:
        return stream is sys.stdin or stream.fileno() == sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return False


def _load_line_editor(history_path: Path | None) -> Any:
    try:
        import readline
    except ImportError:  # Python built without readline: input() still works, unedited
        return None
    readline.set_history_length(HISTORY_LENGTH)
    if history_path is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(history_path)
        with contextlib.suppress(OSError):
            # Creating it now lets append_history_file work from the first line.
            history_path.touch(mode=0o600, exist_ok=True)
    return readline


@contextlib.contextmanager
def _terminal_restored_on_exit(terminal: TextIO | None) -> Iterator[None]:
    """Put the terminal back as found: an abandoned readline may have it in raw mode."""
    saved_mode = None
    if terminal is not None:
        with contextlib.suppress(OSError, ValueError, termios.error):
            saved_mode = termios.tcgetattr(terminal.fileno())
    try:
        yield
    finally:
        if terminal is not None and saved_mode is not None:
            with contextlib.suppress(OSError, ValueError, termios.error):
                termios.tcsetattr(terminal.fileno(), termios.TCSADRAIN, saved_mode)


__all__ = [
    "PROMPT",
    "Command",
    "CreateRecipe",
    "DeleteRecipe",
    "Help",
    "ListPeers",
    "ListRecipes",
    "ListRemoteRecipes",
    "ListSyncProgress",
    "ParseError",
    "PublishRecipe",
    "Quit",
    "Status",
    "execute",
    "parse_command",
    "render_table",
    "serve_repl",
    "short_peer_id",
]
