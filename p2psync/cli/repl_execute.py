"""Running one REPL command against a NodeService and rendering its answer.

`execute` takes a command value (repl_commands.py) and writes the answer as
text lines; a UserError becomes one `error: ...` line and the prompt goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from p2psync.cli.repl_commands import (
    HELP_TEXT,
    Command,
    CreateRecipe,
    DeleteRecipe,
    EditRecipe,
    Help,
    ListPeers,
    ListRecipes,
    ListRemoteRecipes,
    ListSyncProgress,
    PublishRecipe,
    Quit,
    Status,
    UnpublishRecipe,
)
from p2psync.node.service import NodeService, PeerView, RecipeView, StatusView, UserError

REMOTE_RECIPES_TIMEOUT_SECONDS = 3.0
# The service enforces the timeout per peer; this only guards against it not doing so.
_REMOTE_RECIPES_GRACE_SECONDS = 2.0
SHORT_PEER_ID_CHARS = 14  # every Ed25519 peer id starts with "12D3KooW"; 6 more tell them apart
_MAX_CELL_CHARS = 40
STORE_BUDGET_HIT = "BUDGET HIT: entries of other origins are refused, own writes still work"


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
        case ListRecipes(mine=mine):
            _show_local_recipes(service, out, mine=mine)
        case ListPeers():
            _show_peers(service.list_peers(), out, service.status().forked_origins)
        case ListSyncProgress():
            _show_sync_progress(service, out)
        case ListRemoteRecipes(peer_prefix):
            await _show_remote_recipes(service, peer_prefix, out)
        case CreateRecipe(name, ingredients, instructions):
            recipe = await service.create_recipe(name, ingredients, instructions)
            out(f"created {recipe.id} {recipe.name!r} (not published; publish r {recipe.id})")
        case EditRecipe(recipe_id, name, ingredients, instructions):
            recipe = await service.update_recipe(recipe_id, name, ingredients, instructions)
            out(f"updated {recipe.id} {recipe.name!r}")
        case PublishRecipe(recipe_id):
            recipe = await service.publish_recipe(recipe_id)
            out(f"published {recipe.id} {recipe.name!r}")
        case UnpublishRecipe(recipe_id):
            recipe = await service.unpublish_recipe(recipe_id)
            out(f"unpublished {recipe.id} {recipe.name!r}")
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
        f"forked:    {status.forked_origins} origin{'s' if status.forked_origins != 1 else ''}"
        + (" (see ls sp)" if status.forked_origins else ""),
        f"store:     {_store_line(status)}",
    ]
    out("\n".join(lines))


def _store_line(status: StatusView) -> str:
    size = "-" if status.store_bytes is None else _mib(status.store_bytes)
    if status.max_store_bytes is None:
        return f"{size} (no --max-store-mb)"
    line = f"{size} of {_mib(status.max_store_bytes)} (--max-store-mb)"
    if status.store_budget_hit:
        line += f"; {STORE_BUDGET_HIT}"
    return line


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.2f} MiB"


def _show_local_recipes(
    service: NodeService, out: Callable[[str], None], *, mine: bool = False
) -> None:
    recipes = service.list_recipes()
    own_peer_id = service.status().peer_id
    if mine:
        recipes = [recipe for recipe in recipes if recipe.author == own_peer_id]
    if not recipes:
        out(f"no {'own ' if mine else ''}recipes yet; create r NAME|INGREDIENTS|INSTRUCTIONS")
        return
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


def _show_peers(
    peers: Sequence[PeerView], out: Callable[[str], None], forked_origins: int = 0
) -> None:
    if not peers:
        out("no peers known yet")
        return
    rows = [
        [
            short_peer_id(peer.peer_id),
            _addresses_cell(peer.addrs),
            peer.source,
            peer.state,
            ("relayed" if peer.relayed else "direct") if peer.connected else "-",
            f"{peer.syncs_ok} ok / {peer.syncs_failed} failed",
            _when(peer.last_sync),
        ]
        for peer in sorted(peers, key=lambda peer: (not peer.connected, peer.peer_id))
    ]
    header = ["PEER", "ADDRESS", "SOURCE", "STATE", "LINK", "SYNCS", "LAST SYNC"]
    out(render_table(header, rows))
    if forked_origins:
        out(
            f"{forked_origins} origin{'s' if forked_origins != 1 else ''} proven forked"
            " (signed two entries for one seq): ls sp marks them"
        )


def _show_sync_progress(service: NodeService, out: Callable[[str], None]) -> None:
    progress = service.sync_progress()
    status = service.status()
    if not progress:
        out("no sync progress yet")
    else:
        _sync_progress_table(service, progress, out)
    if status.store_budget_hit and status.max_store_bytes is not None:
        size = "-" if status.store_bytes is None else _mib(status.store_bytes)
        out(
            f"store budget hit ({size} of {_mib(status.max_store_bytes)}, --max-store-mb):"
            " entries of other origins are refused, so their held counts stop growing;"
            " own writes still work"
        )


def _sync_progress_table(
    service: NodeService,
    progress: dict[str, dict[str, dict[str, int]]],
    out: Callable[[str], None],
) -> None:
    last_sync = {peer.peer_id: peer.last_sync for peer in service.list_peers()}
    rows: list[list[str]] = []
    # This node's own counts first: they are what the peers are measured against.
    peers_in_order = sorted(progress, key=lambda peer: (peer != "self", peer))
    for peer in peers_in_order:
        peer_label = "self" if peer == "self" else short_peer_id(peer)
        for origin, counts in sorted(progress[peer].items()):
            held, known = counts.get("held", 0), counts.get("known", 0)
            forked_at = counts.get("forked_at")
            origin_label = short_peer_id(origin)
            if forked_at is not None:
                origin_label += f" FORKED@{forked_at}"
            rows.append(
                [
                    peer_label,
                    origin_label,
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


__all__ = [
    "REMOTE_RECIPES_TIMEOUT_SECONDS",
    "execute",
    "render_table",
    "short_peer_id",
]
