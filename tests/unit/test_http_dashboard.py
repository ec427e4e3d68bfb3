"""The API's additions: PATCH and unpublish, the dashboard page, its assets,
its event stream, and the --api-token rule for a browser (cookie)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import trio

from p2psync.api.dashboard import origin_progress
from p2psync.api.http import MAX_BODY_BYTES, make_api_app
from p2psync.api.metrics import Metrics
from p2psync.node.service import RecipeView, UserError
from tests.unit.test_http_api import ME, OTHER, TIMEOUT, FakeNode, error_of, running


class EditingNode(FakeNode):
    def __init__(self) -> None:
        super().__init__()
        self.changed = trio.Event()
        self.commits = 0

    async def update_recipe(
        self,
        recipe_id: str,
        name: str | None = None,
        ingredients: str | None = None,
        instructions: str | None = None,
    ) -> RecipeView:
        old = self._mine(recipe_id)
        if name is not None and not name.strip():
            raise UserError("recipe name must not be empty")
        new = RecipeView(
            old.id,
            old.name if name is None else name,
            old.ingredients if ingredients is None else ingredients,
            old.instructions if instructions is None else instructions,
            old.author,
            old.published,
            old.updated + 1,
        )
        self.add(new)
        return new

    async def unpublish_recipe(self, recipe_id: str) -> RecipeView:
        old = self._mine(recipe_id)
        new = RecipeView(
            old.id, old.name, old.ingredients, old.instructions, old.author, False, old.updated + 1
        )
        self.add(new)
        return new

    async def wait_for_change(self, seen: int, timeout: float) -> int:
        if seen == self.commits:
            with trio.move_on_after(timeout):
                await self.changed.wait()
        return self.commits


@pytest.fixture
def node() -> EditingNode:
    node = EditingNode()
    node.add(RecipeView("r-mine", "Tea", "leaves", "steep", ME, True, 7))
    return node


@pytest.fixture
async def client(node: EditingNode) -> AsyncIterator[httpx.AsyncClient]:
    with trio.fail_after(TIMEOUT):
        async with running(make_api_app(node, Metrics())) as client:
            yield client


async def test_patch_changes_the_given_fields(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/v0/recipes/r-mine", json={"name": "Green tea"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["name"], body["ingredients"], body["instructions"]) == (
        "Green tea",
        "leaves",
        "steep",
    )
    body = (
        await client.patch(
            "/api/v0/recipes/r-mine", json={"ingredients": "sencha", "instructions": "3 min"}
        )
    ).json()
    assert (body["name"], body["ingredients"], body["instructions"]) == (
        "Green tea",
        "sencha",
        "3 min",
    )
    assert (await client.get("/api/v0/recipes/r-mine")).json() == body


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{}", 400),
        (b'{"colour": "red"}', 400),
        (b'{"name": 3}', 400),
        (b'{"name": null}', 400),
        (b'{"name": "   "}', 400),
        (b"[]", 400),
        (b"{nope", 400),
    ],
)
async def test_patch_rejects_bad_bodies(
    client: httpx.AsyncClient, body: bytes, status: int
) -> None:
    response = await client.patch("/api/v0/recipes/r-mine", content=body)
    assert response.status_code == status
    assert error_of(response)


async def test_patch_and_unpublish_keep_the_owner_rules(client: httpx.AsyncClient) -> None:
    for response in (
        await client.patch("/api/v0/recipes/r-theirs", json={"name": "x"}),
        await client.post("/api/v0/recipes/r-theirs/unpublish"),
    ):
        assert response.status_code == 403
        assert error_of(response) == "not your recipe"
    for response in (
        await client.patch("/api/v0/recipes/nope", json={"name": "x"}),
        await client.post("/api/v0/recipes/nope/unpublish"),
    ):
        assert response.status_code == 404
        assert "nope" in error_of(response)


async def test_patch_body_is_capped(client: httpx.AsyncClient) -> None:
    big = orjson.dumps({"name": "x" * MAX_BODY_BYTES})
    response = await client.patch("/api/v0/recipes/r-mine", content=big)
    assert response.status_code == 413
    assert error_of(response)


async def test_unpublish(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v0/recipes/r-mine/unpublish")
    assert response.status_code == 200
    assert response.json()["published"] is False
    assert (await client.post("/api/v0/recipes/r-mine/publish")).json()["published"] is True


async def test_methods_of_a_recipe(client: httpx.AsyncClient) -> None:
    response = await client.put("/api/v0/recipes/r-mine", content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PATCH"
    response = await client.get("/api/v0/recipes/r-mine/unpublish")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_of(response)


async def test_dashboard_page_and_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for path, kind in (("/static/app.js", "javascript"), ("/static/app.css", "text/css")):
        asset = await client.get(path)
        assert asset.status_code == 200, path
        assert kind in asset.headers["content-type"]
        assert "https://" not in asset.text
    missing = await client.get("/static/../http.py")
    assert missing.status_code == 404


async def test_dashboard_state(client: httpx.AsyncClient) -> None:
    state = (await client.get("/api/v0/dashboard")).json()
    assert state["status"]["peer_id"] == ME
    assert state["peers"][0]["peer_id"] == OTHER
    assert set(state["counters"]) >= {"entries_applied", "sync_rounds_ok", "messages_dropped"}
    progress = state["progress"]
    assert progress["origins"] == [{"origin": ME, "held": 2, "known": 2, "forked_at": None}]
    assert progress["peers"] == {OTHER: {"held": 1, "known": 2}}


def test_origin_progress_counts_what_peers_hold_beyond_us() -> None:
    progress = origin_progress(
        {
            "self": {"A": {"held": 5, "known": 5}, "B": {"held": 1, "known": 1}},
            "p1": {"A": {"held": 5, "known": 5}, "B": {"held": 9, "known": 9}},
            "p2": {"C": {"held": 4, "known": 4}},
        }
    )
    assert [(o["origin"], o["held"], o["known"]) for o in progress["origins"]] == [
        ("B", 1, 9),
        ("C", 0, 4),
        ("A", 5, 5),
    ]
    assert (progress["held_total"], progress["known_total"], progress["origins_total"]) == (
        6,
        18,
        3,
    )


async def test_event_stream_sends_state_now_and_after_a_change(
    client: httpx.AsyncClient, node: EditingNode
) -> None:
    with trio.fail_after(TIMEOUT):
        async with client.stream("GET", "/api/v0/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events: list[dict[str, object]] = []
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    events.append(orjson.loads(line[6:]))
                    if len(events) == 1:
                        node.add(RecipeView("r-new", "New", "", "", ME, False, 11))
                        node.commits += 1
                        node.changed.set()
                    else:
                        break
    assert events[0]["status"]["recipes"] == 2  # type: ignore[index]
    assert events[1]["status"]["recipes"] == 3  # type: ignore[index]


async def test_token_gate_for_browsers(node: EditingNode) -> None:
    app = make_api_app(node, Metrics(), token="s3 cret;")
    with trio.fail_after(TIMEOUT):
        async with running(app) as anonymous:
            for path in ("/", "/static/app.js", "/api/v0/events", "/api/v0/dashboard", "/?token=x"):
                response = await anonymous.get(path)
                assert response.status_code == 401, path
                assert error_of(response)
            opened = await anonymous.get("/", params={"token": "s3 cret;"})
            assert opened.status_code == 303
            assert opened.headers["location"] == "/"
            cookie = opened.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            # httpx keeps the cookie: the browser's later requests carry it.
            assert (await anonymous.get("/")).status_code == 200
            assert (await anonymous.get("/api/v0/status")).status_code == 200
            patched = await anonymous.patch("/api/v0/recipes/r-mine", json={"name": "x"})
            assert patched.status_code == 200
            anonymous.cookies.clear()
            anonymous.cookies.set("p2psync_token", "wrong")
            assert (await anonymous.get("/api/v0/status")).status_code == 401


async def test_other_web_pages_are_turned_away(client: httpx.AsyncClient) -> None:
    """CSRF and DNS rebinding against the token-less loopback API: a page may post
    a 'simple' request with no preflight, or rebind its domain to 127.0.0.1."""
    evil_post = await client.post(
        "/api/v0/recipes",
        content=b'{"name": "x", "ingredients": "y", "instructions": "z"}',
        headers={"origin": "https://evil.example", "content-type": "text/plain"},
    )
    assert evil_post.status_code == 403, evil_post.text
    assert "cross-site" in evil_post.json()["error"]
    rebound = await client.get("/api/v0/recipes", headers={"host": "rebind.evil.example"})
    assert rebound.status_code == 403
    own = f"http://{client.base_url.host}:{client.base_url.port}"
    ok = await client.post(
        "/api/v0/recipes",
        json={"name": "x", "ingredients": "y", "instructions": "z"},
        headers={"origin": own},
    )
    assert ok.status_code == 201, ok.text
    script = await client.post(
        "/api/v0/recipes", json={"name": "a", "ingredients": "b", "instructions": "c"}
    )
    assert script.status_code == 201
