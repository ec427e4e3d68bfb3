"""The HTTP JSON API, the dashboard and the Prometheus endpoint (SPEC §4).

Starlette apps (Starlette runs on trio through anyio) served by hypercorn's
trio worker. What the framework does not decide for us is kept here, in one
place: every error is `{"error": "one line"}` (never a stack trace), request
bodies are capped while they are read, and `--api-token` guards every route
(`TokenGate`). The dashboard's routes and its live event stream are in
`dashboard.py`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from functools import partial, wraps
from typing import Any, Protocol, cast

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from p2psync.api.dashboard import dashboard_routes
from p2psync.api.gate import BrowserGuard, TokenGate
from p2psync.api.hypercorn_fixes import write_answers_in_one
from p2psync.api.metrics import Metrics
from p2psync.node.service import NodeService, UserError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DEFAULT_REMOTE_TIMEOUT = 5.0
MAX_REMOTE_TIMEOUT = 60.0
KEEP_ALIVE_SECONDS = 120.0  # idle keep-alive connections (see _hypercorn_config)
RECIPE_FIELDS = ("name", "ingredients", "instructions")

# The API app and the metrics-only app are both plain Starlette apps.
RouterApp = Starlette
Endpoint = Callable[[Request], Awaitable[Response]]


class PortStatus(Protocol):
    """What serve_http needs of trio's task_status. Spelled out here because
    trio-typing's stubs (installed for tests) shadow trio's own types and lack
    `trio.TaskStatus`; both versions satisfy this protocol."""

    def started(self, value: int) -> None: ...


class HttpError(Exception):
    """Ends a request with a 4xx answer; the message is the one-line error shown."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type="application/json")


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    # One line, always: the REPL and scripts print it as is.
    one_line = " ".join(message.split()) or "error"
    response = json_response({"error": one_line}, status)
    response.headers.update(headers or {})
    return response


def guarded(endpoint: Endpoint) -> Endpoint:
    """Turn what an endpoint raises into the SPEC's error shape."""

    @wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpError as exc:
            return error_response(exc.status, str(exc), exc.headers)
        except UserError as exc:
            return error_response(exc.status, str(exc))
        except ClientDisconnect:
            return error_response(400, "client disconnected")  # nobody reads it
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.url.path)
            return error_response(500, "internal error")

    return run


async def _http_exception(request: Request, exc: Exception) -> Response:
    # Starlette's own 404 (no route) and 405 (route, wrong method).
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        methods = sorted({m.strip() for m in allowed.split(",") if m.strip()} - {"HEAD"})
        return error_response(
            405, f"method {request.method} not allowed", {"allow": ", ".join(methods)}
        )
    if exc.status_code == 404:
        return error_response(404, f"no route {request.url.path}")
    return error_response(exc.status_code, str(exc.detail), exc.headers)


def _app(routes: list[BaseRoute], token: str | None) -> Starlette:
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    # Strict on purpose: "/api/v0/recipes/" is no route, not a redirect.
    app.router.redirect_slashes = False
    if token:
        app.add_middleware(TokenGate, token=token)
    # Outermost: other web pages are turned away before anything else runs.
    app.add_middleware(BrowserGuard, check_host=not token)
    return app


# --- request bodies -------------------------------------------------------


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        # Chunked uploads declare no length: count as we go so a huge body
        # is refused before it is held in memory.
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_object(request: Request) -> dict[str, Any]:
    try:
        value = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "malformed JSON body") from exc
    if not isinstance(value, dict):
        raise HttpError(400, "JSON body must be an object")
    return value


def _text_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise HttpError(400, f"field {name!r} must be a string")
    return value


def _query_float(request: Request, name: str, default: float, maximum: float) -> float:
    values = request.query_params.getlist(name)
    if not values:
        return default
    try:
        value = float(values[-1])
    except ValueError as exc:
        raise HttpError(400, f"query {name!r} must be a number") from exc
    if not math.isfinite(value) or value <= 0 or value > maximum:
        raise HttpError(400, f"query {name!r} must be in (0, {maximum:g}]")
    return value


# --- handlers -------------------------------------------------------------


class ApiHandlers:
    def __init__(self, node: NodeService) -> None:
        self.node = node

    async def status(self, request: Request) -> Response:
        return json_response(self.node.status().to_json())

    async def peers(self, request: Request) -> Response:
        return json_response([peer.to_json() for peer in self.node.list_peers()])

    async def sync(self, request: Request) -> Response:
        return json_response(self.node.sync_progress())

    async def list_recipes(self, request: Request) -> Response:
        return json_response([recipe.to_json() for recipe in self.node.list_recipes()])

    async def create_recipe(self, request: Request) -> Response:
        body = await json_object(request)
        recipe = await self.node.create_recipe(*(_text_field(body, name) for name in RECIPE_FIELDS))
        return json_response(recipe.to_json(), 201)

    async def get_recipe(self, request: Request) -> Response:
        recipe_id = request.path_params["id"]
        recipe = self.node.get_recipe(recipe_id)
        if recipe is None:
            raise HttpError(404, f"no recipe {recipe_id}")
        return json_response(recipe.to_json())

    async def update_recipe(self, request: Request) -> Response:
        body = await json_object(request)
        unknown = sorted(set(body) - set(RECIPE_FIELDS))
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0]!r}")
        if not body:
            raise HttpError(400, "nothing to change: give name, ingredients or instructions")
        changes = {name: _text_field(body, name) for name in RECIPE_FIELDS if name in body}
        recipe = await self.node.update_recipe(request.path_params["id"], **changes)
        return json_response(recipe.to_json())

    async def publish_recipe(self, request: Request) -> Response:
        recipe = await self.node.publish_recipe(request.path_params["id"])
        return json_response(recipe.to_json())

    async def unpublish_recipe(self, request: Request) -> Response:
        recipe = await self.node.unpublish_recipe(request.path_params["id"])
        return json_response(recipe.to_json())

    async def delete_recipe(self, request: Request) -> Response:
        await self.node.delete_recipe(request.path_params["id"])
        return Response(status_code=204)

    async def remote(self, request: Request) -> Response:
        prefixes = request.query_params.getlist("peer")
        timeout = _query_float(request, "timeout", DEFAULT_REMOTE_TIMEOUT, MAX_REMOTE_TIMEOUT)
        answers = await self.node.remote_published(prefixes[-1] if prefixes else None, timeout)
        return json_response(
            {peer: [recipe.to_json() for recipe in recipes] for peer, recipes in answers.items()}
        )


async def _metrics_handler(metrics: Metrics, request: Request) -> Response:
    body, content_type = metrics.render()
    return Response(body, headers={"content-type": content_type})


def _metrics_route(metrics: Metrics) -> Route:
    return Route("/metrics", guarded(partial(_metrics_handler, metrics)), methods=["GET"])


def make_api_app(node: NodeService, metrics: Metrics, *, token: str | None = None) -> Starlette:
    """The `--api-port` app: SPEC §4 routes, the dashboard at `/` and /metrics,
    all behind the token if one is given."""
    h = ApiHandlers(node)
    recipe = "/api/v0/recipes/{id}"

    def route(path: str, endpoint: Endpoint, *methods: str) -> Route:
        return Route(path, guarded(endpoint), methods=list(methods))

    routes: list[BaseRoute] = [
        route("/api/v0/status", h.status, "GET"),
        route("/api/v0/peers", h.peers, "GET"),
        route("/api/v0/sync", h.sync, "GET"),
        Route(
            "/api/v0/recipes",
            guarded(_by_method({"GET": h.list_recipes, "POST": h.create_recipe})),
            methods=["GET", "POST"],
        ),
        Route(
            recipe,
            guarded(
                _by_method(
                    {"GET": h.get_recipe, "PATCH": h.update_recipe, "DELETE": h.delete_recipe}
                )
            ),
            methods=["GET", "PATCH", "DELETE"],
        ),
        route(f"{recipe}/publish", h.publish_recipe, "POST"),
        route(f"{recipe}/unpublish", h.unpublish_recipe, "POST"),
        route("/api/v0/remote", h.remote, "GET"),
        _metrics_route(metrics),
        *dashboard_routes(node, metrics, guarded),
    ]
    return _app(routes, token)


def _by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One path, several methods: Starlette answers the others with 405 itself."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


def make_metrics_app(metrics: Metrics) -> Starlette:
    """The `--metrics-port` app: only GET /metrics, no token (scrapers rarely carry one)."""
    return _app([_metrics_route(metrics)], None)


# --- serving --------------------------------------------------------------


def bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _port_of(bind: str) -> int:
    # hypercorn reports binds as "http://127.0.0.1:8080" or "http://[::1]:8080".
    return int(bind.rsplit(":", 1)[1])


def _hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [bind_address(host, port)]
    config.accesslog = None
    # Route hypercorn's own messages through our logging so --log-level governs them.
    config.errorlog = logging.getLogger("p2psync.api.hypercorn")
    config.include_server_header = False
    # Open dashboards hold an event stream: do not wait for them on shutdown.
    config.graceful_timeout = 0.5
    # Whoever closes an idle keep-alive connection first must be the client:
    # a request sent as the server closes is answered with a TCP reset
    # ("Connection reset by peer"). hypercorn's 5 s equals httpx's default
    # expiry, so a client reusing a connection idle for about 5 s raced the
    # close (more often on a busy machine). Longer than the usual clients'
    # idle limits (httpx 5 s, Go 90 s, Firefox 115 s).
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    return config


async def serve_http(
    app: Starlette,
    host: str,
    port: int,
    *,
    task_status: PortStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until the enclosing scope is cancelled; report the bound port
    (the real one when `port` is 0) through `task_status` once listening."""
    config = _hypercorn_config(host, port)
    write_answers_in_one()  # an answer's head and body in one socket write
    async with trio.open_nursery() as nursery:
        # hypercorn types apps against its own TypedDict events.
        asgi_app = cast(Any, app)
        binds: list[str] = await nursery.start(partial(serve, asgi_app, config, mode="asgi"))
        task_status.started(_port_of(binds[0]))
