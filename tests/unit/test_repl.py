from __future__ import annotations

import os
from dataclasses import replace
from typing import TextIO

import pytest
import trio

from p2psync.cli.repl import serve_repl
from p2psync.cli.repl_commands import (
    Command,
    CreateRecipe,
    DeleteRecipe,
    Help,
    ListPeers,
    ListRecipes,
    ListRemoteRecipes,
    ListSyncProgress,
    ParseError,
    PublishRecipe,
    Quit,
    Status,
    parse_command,
)
from p2psync.cli.repl_execute import execute
from p2psync.node.service import PeerView, RecipeView, StatusView, UserError

OWN_ID = "12D3KooWOwnPeerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OTHER_ID = "12D3KooWOtherPeerBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("help", Help()),
        ("  HELP  ", Help()),
        ("ls p", ListPeers()),
        ("ls sp", ListSyncProgress()),
        ("ls r", ListRecipes()),
        ("ls r all", ListRemoteRecipes(None)),
        ("ls r 12D3KooWAb", ListRemoteRecipes("12D3KooWAb")),
        ("create r Soup|water, salt|boil it", CreateRecipe("Soup", "water, salt", "boil it")),
        (
            "create r  Pea  soup | peas |  boil   slowly ",
            CreateRecipe("Pea  soup", "peas", "boil   slowly"),
        ),
        ("create r Toast||", CreateRecipe("Toast", "", "")),
        ("publish r abc123", PublishRecipe("abc123")),
        ("delete r abc123", DeleteRecipe("abc123")),
        ("status", Status()),
        ("quit", Quit()),
        ("exit", Quit()),
    ],
)
def test_parse_good_lines(line: str, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize("line", ["", "   ", "\n", "\t \n"])
def test_blank_lines_are_no_command(line: str) -> None:
    assert parse_command(line) is None


@pytest.mark.parametrize(
    ("line", "message_part"),
    [
        ("frobnicate", "unknown command"),
        ("ls", "usage: ls"),
        ("ls x", "usage: ls"),
        ("ls p extra", "usage: ls"),
        ("ls r a b", "usage: ls"),
        ("create r Soup|water", "exactly three fields"),
        ("create r a|b|c|d", "exactly three fields"),
        ("create r  |b|c", "needs a name"),
        ("create x a|b|c", "usage: create r"),
        ("create", "usage: create r"),
        ("publish r", "usage: publish r ID"),
        ("publish x abc", "usage: publish r ID"),
        ("delete r a b", "usage: delete r ID"),
        ("status now", "takes no arguments"),
        ("quit please", "takes no arguments"),
    ],
)
def test_parse_bad_lines(line: str, message_part: str) -> None:
    with pytest.raises(ParseError) as raised:
        parse_command(line)
    message = str(raised.value)
    assert message_part in message
    assert "\n" not in message


class FakeNode:
    def __init__(self) -> None:
        self.recipes: dict[str, RecipeView] = {}
        self.stopped = 0
        self.remote: dict[str, list[RecipeView]] = {}
        self.remote_calls: list[tuple[str | None, float]] = []
        self.peers = [
            PeerView(
                OTHER_ID,
                ["/ip4/10.0.0.2/tcp/4001"],
                True,
                "mdns",
                "connected",
                3,
                1,
                "2024-05-01T12:00:00Z",
                12.5,
            ),
        ]

    def status(self) -> StatusView:
        return StatusView(
            OWN_ID,
            "node1",
            "/data/node1",
            "default",
            ["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.1/tcp/4001"],
            1,
            7,
            len(self.recipes),
            "ab" * 16,
        )

    def list_recipes(self) -> list[RecipeView]:
        return [self.recipes[key] for key in sorted(self.recipes)]

    def get_recipe(self, recipe_id: str) -> RecipeView | None:
        return self.recipes.get(recipe_id)

    async def create_recipe(self, name: str, ingredients: str, instructions: str) -> RecipeView:
        recipe_id = f"r{len(self.recipes):04d}"
        recipe = RecipeView(recipe_id, name, ingredients, instructions, OWN_ID, False, 1)
        self.recipes[recipe_id] = recipe
        return recipe

    async def publish_recipe(self, recipe_id: str) -> RecipeView:
        if recipe_id not in self.recipes:
            raise UserError(f"no recipe {recipe_id}", status=404)
        self.recipes[recipe_id] = replace(self.recipes[recipe_id], published=True)
        return self.recipes[recipe_id]

    async def delete_recipe(self, recipe_id: str) -> None:
        if recipe_id not in self.recipes:
            raise UserError(f"no recipe {recipe_id}", status=404)
        del self.recipes[recipe_id]

    def list_peers(self) -> list[PeerView]:
        return list(self.peers)

    def sync_progress(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            "self": {OWN_ID: {"held": 7, "known": 7}},
            OTHER_ID: {OWN_ID: {"held": 3, "known": 7}},
        }

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        self.remote_calls.append((peer_prefix, timeout))
        if peer_prefix is not None and not OTHER_ID.startswith(peer_prefix):
            raise UserError(f"no connected peer matches {peer_prefix!r}", status=404)
        return self.remote

    async def stop(self) -> None:
        self.stopped += 1


def discard(text: str) -> None:
    pass


async def run_lines(node: FakeNode, *lines: str) -> list[str]:
    output: list[str] = []
    for line in lines:
        command = parse_command(line)
        assert command is not None
        assert await execute(node, command, output.append)
    return output


async def test_create_publish_list_delete() -> None:
    node = FakeNode()
    output = await run_lines(node, "create r Pancakes|flour, milk, eggs|fry")
    assert "created r0000" in output[0]
    assert "not published" in output[0]

    output = await run_lines(node, "ls r")
    table = "\n".join(output)
    assert "ID" in table and "NAME" in table and "AUTHOR" in table and "INGREDIENTS" in table
    assert "Pancakes" in table and "flour, milk, eggs" in table and "me" in table
    assert " no" in table

    await run_lines(node, "publish r r0000")
    assert node.recipes["r0000"].published
    assert "yes" in "\n".join(await run_lines(node, "ls r"))

    output = await run_lines(node, "delete r r0000")
    assert output == ["deleted r0000"]
    assert "no recipes" in "\n".join(await run_lines(node, "ls r"))


async def test_unknown_recipe_is_an_error_line_and_repl_goes_on() -> None:
    node = FakeNode()
    output = await run_lines(node, "publish r nope", "delete r nope")
    assert output == ["error: no recipe nope", "error: no recipe nope"]


async def test_status_shows_full_peer_id() -> None:
    output = "\n".join(await run_lines(FakeNode(), "status"))
    assert OWN_ID in output
    assert "/ip4/127.0.0.1/tcp/4001" in output and "/ip4/10.0.0.1/tcp/4001" in output
    assert "ab" * 16 in output
    assert "entries:   7" in output


async def test_peers_and_sync_progress_tables() -> None:
    node = FakeNode()
    peers = "\n".join(await run_lines(node, "ls p"))
    assert OTHER_ID[:14] in peers and OTHER_ID not in peers
    assert "/ip4/10.0.0.2/tcp/4001" in peers and "mdns" in peers and "connected" in peers
    assert "3 ok / 1 failed" in peers

    progress = "\n".join(await run_lines(node, "ls sp"))
    assert "self" in progress
    assert "42%" in progress and "100%" in progress
    assert "2024-05-01T12:00:00Z" in progress


async def test_remote_recipes_per_peer() -> None:
    node = FakeNode()
    node.remote = {
        OTHER_ID: [RecipeView("r9", "Borscht", "beets", "simmer", OTHER_ID, True, 5)],
    }
    output = "\n".join(await run_lines(node, "ls r all"))
    assert f"peer {OTHER_ID}: 1 published recipe" in output
    assert "Borscht" in output and "beets" in output
    assert node.remote_calls == [(None, 3.0)]

    output = "\n".join(await run_lines(node, "ls r 12D3KooWZzz"))
    assert output.startswith("error: no connected peer matches")

    node.remote = {}
    assert await run_lines(node, "ls r all") == ["no connected peer answered"]


async def test_help_lists_every_command() -> None:
    output = "\n".join(await run_lines(FakeNode(), "help"))
    commands = ("ls p", "ls sp", "ls r all", "create r", "publish r", "delete r", "status", "quit")
    for word in commands:
        assert word in output


async def test_quit_stops_the_node_and_returns_false() -> None:
    node = FakeNode()
    assert await execute(node, Quit(), discard) is False
    assert node.stopped == 1


def _pipe_reader(data: bytes, *, close_writer: bool = True) -> tuple[TextIO, int]:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    if close_writer:
        os.close(write_fd)
        write_fd = -1
    return os.fdopen(read_fd, "r", encoding="utf-8"), write_fd


async def test_serve_repl_from_pipe_runs_commands_and_end_of_input_does_not_stop() -> None:
    node = FakeNode()
    stdin, _ = _pipe_reader(b"create r Soup|water|boil\n\nbogus\nls r\n")
    output: list[str] = []
    with stdin, trio.fail_after(2):
        await serve_repl(node, stdin=stdin, out=output.append)
    text = "\n".join(output)
    assert "created r0000" in text
    assert "error: unknown command 'bogus'" in text
    assert "Soup" in text
    assert node.stopped == 0


async def test_serve_repl_quit_stops_node_and_ignores_the_rest() -> None:
    node = FakeNode()
    stdin, _ = _pipe_reader(b"quit\ncreate r Late|x|y\n")
    with stdin, trio.fail_after(2):
        await serve_repl(node, stdin=stdin, out=discard)
    assert node.stopped == 1
    assert node.recipes == {}


async def test_serve_repl_is_cancellable_while_stdin_is_silent() -> None:
    node = FakeNode()
    stdin, write_fd = _pipe_reader(b"", close_writer=False)
    try:
        with trio.fail_after(2):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve_repl(
                        node, stdin=stdin, out=discard, task_status=task_status
                    )
                )
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    finally:
        # Lets the abandoned reader thread see end of input and finish.
        os.close(write_fd)
    assert node.stopped == 0


async def test_serve_repl_end_of_input_on_a_terminal_stops_the_node() -> None:
    controller_fd, terminal_fd = os.openpty()
    terminal = os.fdopen(terminal_fd, "r", encoding="utf-8")
    node = FakeNode()
    try:
        os.write(controller_fd, b"status\n\x04")  # Ctrl-D at the start of a line
        with terminal, trio.fail_after(2):
            await serve_repl(node, stdin=terminal, out=discard)
    finally:
        os.close(controller_fd)
    assert node.stopped == 1
