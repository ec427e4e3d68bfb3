"""What the front ends (REPL, HTTP API) may ask of a running node.

The REPL and the HTTP API are thin: they parse input, call one of these
methods, and render the answer. All methods run inside the node's trio
thread. Errors a user caused raise `UserError` (message is one line, shown
as is); anything else is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class UserError(Exception):
    """The user asked for something that cannot be done; the message says why."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status  # HTTP status the API should answer with (400, 403, 404, 409, 503)


@dataclass(frozen=True, slots=True)
class RecipeView:
    id: str
    name: str
    ingredients: str
    instructions: str
    author: str  # peer id of the author (base58, "12D3KooW...")
    published: bool
    updated: int  # HLC of the last op applied to this recipe

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "ingredients": self.ingredients,
            "instructions": self.instructions,
            "author": self.author,
            "published": self.published,
            "updated": self.updated,
        }


@dataclass(frozen=True, slots=True)
class PeerView:
    peer_id: str
    addrs: list[str]
    connected: bool
    source: str  # "mdns" | "static" | "local" | "relay" | "inbound"
    state: str  # "connecting" | "connected" | "backing_off" | "failed" | "known"
    syncs_ok: int
    syncs_failed: int
    last_sync: str | None  # ISO 8601 UTC
    avg_sync_ms: float | None
    relayed: bool = False  # connected, and only through a circuit relay

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": list(self.addrs),
            "connected": self.connected,
            "source": self.source,
            "relayed": self.relayed,
            "state": self.state,
            "syncs_ok": self.syncs_ok,
            "syncs_failed": self.syncs_failed,
            "last_sync": self.last_sync,
            "avg_sync_ms": self.avg_sync_ms,
        }


@dataclass(frozen=True, slots=True)
class StatusView:
    peer_id: str
    profile: str | None
    data_dir: str
    network: str
    listen_addrs: list[str]
    peers: int
    entries: int
    recipes: int
    digest: str
    forked_origins: int = 0  # origins proven to have signed two entries for one seq
    store_bytes: int | None = None  # the store's last measured size
    max_store_bytes: int | None = None  # --max-store-mb in bytes; None: no limit
    store_budget_hit: bool = False  # past it: other origins' entries are refused

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "profile": self.profile,
            "data_dir": self.data_dir,
            "network": self.network,
            "listen_addrs": list(self.listen_addrs),
            "peers": self.peers,
            "entries": self.entries,
            "recipes": self.recipes,
            "digest": self.digest,
            "forked_origins": self.forked_origins,
            "store_bytes": self.store_bytes,
            "max_store_bytes": self.max_store_bytes,
            "store_budget_hit": self.store_budget_hit,
        }


class NodeService(Protocol):
    """Implemented by p2psync.node.node.Node; faked in front-end tests."""

    def status(self) -> StatusView: ...

    def list_recipes(self) -> list[RecipeView]: ...

    def get_recipe(self, recipe_id: str) -> RecipeView | None:
        """One visible recipe, or None (unknown, not yet created, or deleted)."""
        ...

    async def create_recipe(self, name: str, ingredients: str, instructions: str) -> RecipeView:
        """Sign, persist (durably) and broadcast a create op. Raises UserError on bad fields."""
        ...

    async def publish_recipe(self, recipe_id: str) -> RecipeView:
        """404 UserError if unknown, 403 if not ours."""
        ...

    async def update_recipe(
        self,
        recipe_id: str,
        name: str | None = None,
        ingredients: str | None = None,
        instructions: str | None = None,
    ) -> RecipeView:
        """Change the given fields (None keeps one). 404 if unknown, 403 if not
        ours, 400 on bad fields."""
        ...

    async def unpublish_recipe(self, recipe_id: str) -> RecipeView:
        """404 UserError if unknown, 403 if not ours."""
        ...

    async def delete_recipe(self, recipe_id: str) -> None:
        """404 UserError if unknown, 403 if not ours."""
        ...

    async def wait_for_change(self, seen: int, timeout: float) -> int:
        """The number of commits so far, once it differs from `seen` (at once
        if it already does), or after `timeout` seconds."""
        ...

    def list_peers(self) -> list[PeerView]: ...

    def sync_progress(self) -> dict[str, dict[str, dict[str, int]]]:
        """{PEER: {ORIGIN: {"held": n, "known": m}}, "self": {ORIGIN: {...}}}."""
        ...

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        """Ask every connected peer (or the one whose id starts with peer_prefix)
        for its published recipes; answer per peer id. UserError if the prefix
        matches no or several peers."""
        ...

    async def stop(self) -> None:
        """Ask the node to shut down gracefully (REPL `quit`)."""
        ...
