from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio

from p2psync.api.http import (
    MAX_BODY_BYTES,
    RouterApp,
    _hypercorn_config,
    bind_address,
    make_api_app,
    make_metrics_app,
    serve_http,
)
from p2psync.api.metrics import Metrics
from p2psync.node.service import PeerView, RecipeView, StatusView, UserError

ME = "12D3KooWMe"
OTHER = "12D3KooWOther"
TIMEOUT = 3


class FakeNode:
    """Just enough of NodeService to drive every route; records what it was asked."""

    def __init__(self) -> None:
        self.recipes: dict[str, RecipeView] = {}
        self.remote_calls: list[tuple[str | None, float]] = []
        self.explode = False
        self.add(RecipeView("r-theirs", "Soup", "water", "boil", OTHER, False, 5))

    def add(self, recipe: RecipeView) -> None:
        self.recipes[recipe.id] = recipe

    def _mine(self, recipe_id: str) -> RecipeView:
        recipe = self.recipes.get(recipe_id)
        if recipe is None:
            raise UserError(f"no recipe {recipe_id}", status=404)
        if recipe.author != ME:
            raise UserError("not your recipe", status=403)
        return recipe

    def status(self) -> StatusView:
        if self.explode:
            raise RuntimeError("secret internals\nTraceback")
        return StatusView(
            ME,
            "alice",
            "/tmp/alice",
            "default",
            ["/ip4/127.0.0.1/tcp/1"],
            1,
            len(self.recipes),
            len(self.recipes),
            "ab" * 16,
        )

    def list_recipes(self) -> list[RecipeView]:
        return sorted(self.recipes.values(), key=lambda r: r.id)

    def get_recipe(self, recipe_id: str) -> RecipeView | None:
        return self.recipes.get(recipe_id)

    async def create_recipe(self, name: str, ingredients: str, instructions: str) -> RecipeView:
        if not name:
            raise UserError("name must not be empty")
        recipe = RecipeView(f"r{len(self.recipes)}", name, ingredients, instructions, ME, False, 9)
        self.add(recipe)
        return recipe

    async def publish_recipe(self, recipe_id: str) -> RecipeView:
        recipe = self._mine(recipe_id)
        published = RecipeView(
            recipe.id,
            recipe.name,
            recipe.ingredients,
            recipe.instructions,
            recipe.author,
            True,
            recipe.updated + 1,
        )
        self.add(published)
        return published

    async def delete_recipe(self, recipe_id: str) -> None:
        self._mine(recipe_id)
        del self.recipes[recipe_id]

    def list_peers(self) -> list[PeerView]:
        return [
            PeerView(
                OTHER,
                ["/ip4/127.0.0.1/tcp/2"],
                True,
                "static",
                "connected",
                3,
                1,
                "2026-01-01T00:00:00Z",
                12.5,
            )
        ]

    def sync_progress(self) -> dict[str, dict[str, dict[str, int]]]:
        return {"self": {ME: {"held": 2, "known": 2}}, OTHER: {ME: {"held": 1, "known": 2}}}

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        self.remote_calls.append((peer_prefix, timeout))
        if peer_prefix == "nobody":
            raise UserError("no connected peer starts with nobody")
        return {OTHER: [self.recipes["r-theirs"]]}

    async def stop(self) -> None:
        pass


@asynccontextmanager
async def running(app: RouterApp, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=TIMEOUT
        ) as client:
            yield client
        nursery.cancel_scope.cancel()


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
async def client(node: FakeNode) -> AsyncIterator[httpx.AsyncClient]:
    with trio.fail_after(TIMEOUT):
        async with running(make_api_app(node, Metrics())) as client:
            yield client


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    message: str = body["error"]
    assert "\n" not in message
    return message


async def test_status(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v0/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["peer_id"] == ME
    assert set(body) >= {
        "peer_id",
        "profile",
        "data_dir",
        "network",
        "listen_addrs",
        "peers",
        "entries",
        "recipes",
        "digest",
    }


async def test_peers_and_sync(client: httpx.AsyncClient) -> None:
    peers = (await client.get("/api/v0/peers")).json()
    assert peers[0]["peer_id"] == OTHER
    assert peers[0]["avg_sync_ms"] == 12.5
    sync = (await client.get("/api/v0/sync")).json()
    assert sync["self"][ME] == {"held": 2, "known": 2}
    assert sync[OTHER][ME]["held"] == 1


async def test_recipe_lifecycle(client: httpx.AsyncClient, node: FakeNode) -> None:
    created = await client.post(
        "/api/v0/recipes", json={"name": "Tea", "ingredients": "leaves", "instructions": "steep"}
    )
    assert created.status_code == 201
    recipe = created.json()
    assert recipe == {
        "id": recipe["id"],
        "name": "Tea",
        "ingredients": "leaves",
        "instructions": "steep",
        "author": ME,
        "published": False,
        "updated": 9,
    }
    url = f"/api/v0/recipes/{recipe['id']}"

    assert recipe["id"] in [r["id"] for r in (await client.get("/api/v0/recipes")).json()]
    assert (await client.get(url)).json() == recipe

    published = await client.post(f"{url}/publish")
    assert published.status_code == 200
    assert published.json()["published"] is True

    deleted = await client.delete(url)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert recipe["id"] not in node.recipes
    assert (await client.get(url)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'{"name": "x", "ingredients": "y"}',
        b'{"name": 1, "ingredients": "y", "instructions": "z"}',
        b'{"name": "x", "ingredients": null, "instructions": "z"}',
        b"\xff\xfe",
    ],
)
async def test_create_rejects_bad_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/api/v0/recipes", content=body)
    assert response.status_code == 400
    assert error_of(response)


async def test_user_error_keeps_its_status(client: httpx.AsyncClient) -> None:
    empty = await client.post(
        "/api/v0/recipes", json={"name": "", "ingredients": "", "instructions": ""}
    )
    assert empty.status_code == 400
    assert error_of(empty) == "name must not be empty"
    not_mine = await client.post("/api/v0/recipes/r-theirs/publish")
    assert not_mine.status_code == 403
    assert error_of(not_mine) == "not your recipe"


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/api/v0/recipes/nope"),
        await client.delete("/api/v0/recipes/nope"),
        await client.post("/api/v0/recipes/nope/publish"),
    ):
        assert response.status_code == 404
        assert "nope" in error_of(response)


@pytest.mark.parametrize(
    "path", ["/nothing", "/api/v0/nothing", "/api/v1/status", "/api/v0/recipes/", "/static/nope.js"]
)
async def test_unknown_routes_are_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert error_of(response)


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/api/v0/recipes", content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert error_of(response)
    response = await client.get("/api/v0/recipes/r-theirs/publish")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_oversized_body_is_413(client: httpx.AsyncClient, node: FakeNode) -> None:
    big = orjson.dumps({"name": "x" * MAX_BODY_BYTES, "ingredients": "", "instructions": ""})
    response = await client.post("/api/v0/recipes", content=big)
    assert response.status_code == 413
    assert error_of(response)
    assert len(node.recipes) == 1


async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * (MAX_BODY_BYTES // 2)

    # No Content-Length: the limit must hold while reading.
    response = await client.post("/api/v0/recipes", content=chunks())
    assert response.status_code == 413


async def test_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    body = orjson.dumps({"name": "n", "ingredients": "i", "instructions": ""})
    padded = body + b" " * (MAX_BODY_BYTES - len(body))
    response = await client.post("/api/v0/recipes", content=padded)
    assert response.status_code == 201


async def test_unexpected_exception_is_500_without_internals(
    client: httpx.AsyncClient, node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    node.explode = True
    response = await client.get("/api/v0/status")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert "secret internals" in caplog.text


async def test_remote_published(client: httpx.AsyncClient, node: FakeNode) -> None:
    response = await client.get("/api/v0/remote", params={"peer": "12D3", "timeout": "2.5"})
    assert response.status_code == 200
    assert response.json()[OTHER][0]["id"] == "r-theirs"
    await client.get("/api/v0/remote")
    assert node.remote_calls == [("12D3", 2.5), (None, 5.0)]


@pytest.mark.parametrize(
    "query",
    [
        {"timeout": "soon"},
        {"timeout": "-1"},
        {"timeout": "nan"},
        {"timeout": "1e9"},
        {"peer": "nobody"},
    ],
)
async def test_remote_published_bad_queries(client: httpx.AsyncClient, query: Any) -> None:
    response = await client.get("/api/v0/remote", params=query)
    assert response.status_code == 400
    assert error_of(response)


async def test_metrics_on_api_and_metrics_only_app(node: FakeNode) -> None:
    metrics = Metrics()
    metrics.entries_applied(3)
    with trio.fail_after(TIMEOUT):
        async with running(make_api_app(node, metrics)) as api:
            on_api = await api.get("/metrics")
        async with running(make_metrics_app(metrics)) as scrape:
            only = await scrape.get("/metrics")
            assert (await scrape.get("/api/v0/status")).status_code == 404
    for response in (on_api, only):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "p2psync_entries_applied_total 3.0" in response.text
        assert "p2psync_messages_dropped_total" in response.text


async def test_token_is_required_when_configured(node: FakeNode) -> None:
    app = make_api_app(node, Metrics(), token="s3cret")
    with trio.fail_after(TIMEOUT):
        async with running(app, token="s3cret") as good:
            assert (await good.get("/api/v0/status")).status_code == 200
            base = str(good.base_url)
            for headers in (
                {},
                {"authorization": "Bearer wrong"},
                {"authorization": "s3cret"},
                {"authorization": "Basic s3cret"},
            ):
                async with httpx.AsyncClient(base_url=base, headers=headers) as bad:
                    for path in ("/api/v0/status", "/metrics", "/api/v0/nothing"):
                        response = await bad.get(path)
                        assert response.status_code == 401, (headers, path)
                        assert response.headers["www-authenticate"] == "Bearer"
                        assert error_of(response)


async def test_serve_http_binds_ipv6_loopback(node: FakeNode) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            try:
                port = await nursery.start(serve_http, make_metrics_app(Metrics()), "::1", 0)
            except OSError:
                pytest.skip("IPv6 loopback unavailable")
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://[::1]:{port}/metrics")
            assert response.status_code == 200
            nursery.cancel_scope.cancel()


async def test_serve_http_reports_the_real_port_and_stops_on_cancel() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, make_metrics_app(Metrics()), "127.0.0.1", 0)
            assert port > 0
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


def test_bind_address_brackets_ipv6() -> None:
    assert bind_address("::1", 80) == "[::1]:80"
    assert bind_address("[::1]", 80) == "[::1]:80"
    assert bind_address("127.0.0.1", 0) == "127.0.0.1:0"


def test_clients_close_idle_keep_alive_connections_before_the_server() -> None:
    """A request sent on a kept-alive connection just as the server closes it
    is answered with a TCP reset; with hypercorn's default (5 s, httpx's own
    expiry) busy benchmark runs died of `Connection reset by peer`."""
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert _hypercorn_config("127.0.0.1", 0).keep_alive_timeout >= 10 * client_expiry
