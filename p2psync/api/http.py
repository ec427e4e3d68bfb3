"""The HTTP JSON API and the Prometheus endpoint (SPEC §4), as plain ASGI apps.

Hand-written rather than a framework: a dozen routes do not justify the
dependency, and owning the body reader is what lets us cap request size while
reading instead of after buffering.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from p2psync.api.metrics import Metrics
from p2psync.node.service import NodeService, UserError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DEFAULT_REMOTE_TIMEOUT = 5.0
MAX_REMOTE_TIMEOUT = 60.0

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Params = dict[str, str]


class PortStatus(Protocol):
    """What serve_http needs of trio's task_status. Spelled out here because
    trio-typing's stubs (installed for tests) shadow trio's own types and lack
    `trio.TaskStatus`; both versions satisfy this protocol."""

    def started(self, value: int) -> None: ...


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class HttpError(Exception):
    """Ends a request with a 4xx answer; the message is the one-line error shown."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class ClientGone(Exception):
    """The client disconnected before sending its whole body; nobody to answer."""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[bytes, bytes]
    receive: Receive

    async def body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"request body over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            # Chunked uploads declare no length: count as we go so a huge body
            # is refused before it is held in memory.
            if size > limit:
                raise HttpError(413, f"request body over {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def json_object(self) -> dict[str, Any]:
        try:
            value = orjson.loads(await self.body())
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "malformed JSON body") from exc
        if not isinstance(value, dict):
            raise HttpError(400, "JSON body must be an object")
        return value


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(value), [(b"content-type", b"application/json")])


def error_response(
    status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    # One line, always: the REPL and scripts print it as is.
    one_line = " ".join(message.split()) or "error"
    response = json_response({"error": one_line}, status)
    response.headers.extend(headers or [])
    return response


Handler = Callable[[Request, Params], Awaitable[Response]]


@dataclass(slots=True)
class Route:
    pattern: tuple[str, ...]  # "{name}" segments capture one path segment
    handlers: dict[str, Handler]

    def match(self, segments: list[str]) -> Params | None:
        if len(segments) != len(self.pattern):
            return None
        params: Params = {}
        for want, got in zip(self.pattern, segments, strict=True):
            if want.startswith("{"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


def split_path(path: str) -> list[str]:
    # Strict on purpose: "/api/v0/recipes/" leaves an empty segment and so no route.
    return path.removeprefix("/").split("/")


def resolve(routes: list[Route], method: str, path: str) -> tuple[Handler, Params]:
    segments = split_path(path)
    for route in routes:
        params = route.match(segments)
        if params is None:
            continue
        handler = route.handlers.get(method)
        if handler is None:
            allow = ", ".join(sorted(route.handlers)).encode()
            raise HttpError(405, f"method {method} not allowed", [(b"allow", allow)])
        return handler, params
    raise HttpError(404, f"no route {path}")


class RouterApp:
    """ASGI plumbing shared by the API and the metrics-only app."""

    def __init__(self, routes: list[Route], token: str | None = None) -> None:
        self._routes = routes
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _request(scope, receive)
        try:
            response = await self._dispatch(request)
        except ClientGone:
            return
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response.headers}
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _dispatch(self, request: Request) -> Response:
        try:
            self._authorize(request)
            handler, params = resolve(self._routes, request.method, request.path)
            return await handler(request, params)
        except HttpError as exc:
            return error_response(exc.status, str(exc), exc.headers)
        except UserError as exc:
            return error_response(exc.status, str(exc))
        except ClientGone:
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return error_response(500, "internal error")

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, credential = request.headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self._token):
            raise HttpError(401, "missing or wrong API token", [(b"www-authenticate", b"Bearer")])


def _request(scope: Scope, receive: Receive) -> Request:
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    query_string = scope.get("query_string", b"").decode("utf-8", "replace")
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=parse_qs(query_string),
        headers=headers,
        receive=receive,
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to set up, but answering lifespan keeps hypercorn from logging
    # that the app "does not support" it on every start.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- handlers -------------------------------------------------------------


def _text_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise HttpError(400, f"field {name!r} must be a string")
    return value


def _query_float(request: Request, name: str, default: float, maximum: float) -> float:
    values = request.query.get(name)
    if not values:
        return default
    try:
        value = float(values[-1])
    except ValueError as exc:
        raise HttpError(400, f"query {name!r} must be a number") from exc
    if not math.isfinite(value) or value <= 0 or value > maximum:
        raise HttpError(400, f"query {name!r} must be in (0, {maximum:g}]")
    return value


class ApiHandlers:
    def __init__(self, node: NodeService) -> None:
        self.node = node

    async def status(self, request: Request, params: Params) -> Response:
        return json_response(self.node.status().to_json())

    async def peers(self, request: Request, params: Params) -> Response:
        return json_response([peer.to_json() for peer in self.node.list_peers()])

    async def sync(self, request: Request, params: Params) -> Response:
        return json_response(self.node.sync_progress())

    async def list_recipes(self, request: Request, params: Params) -> Response:
        return json_response([recipe.to_json() for recipe in self.node.list_recipes()])

    async def create_recipe(self, request: Request, params: Params) -> Response:
        body = await request.json_object()
        recipe = await self.node.create_recipe(
            _text_field(body, "name"),
            _text_field(body, "ingredients"),
            _text_field(body, "instructions"),
        )
        return json_response(recipe.to_json(), 201)

    async def get_recipe(self, request: Request, params: Params) -> Response:
        recipe_id = params["id"]
        for recipe in self.node.list_recipes():
            if recipe.id == recipe_id:
                return json_response(recipe.to_json())
        raise HttpError(404, f"no recipe {recipe_id}")

    async def publish_recipe(self, request: Request, params: Params) -> Response:
        recipe = await self.node.publish_recipe(params["id"])
        return json_response(recipe.to_json())

    async def delete_recipe(self, request: Request, params: Params) -> Response:
        await self.node.delete_recipe(params["id"])
        return Response(204)

    async def remote(self, request: Request, params: Params) -> Response:
        prefixes = request.query.get("peer")
        timeout = _query_float(request, "timeout", DEFAULT_REMOTE_TIMEOUT, MAX_REMOTE_TIMEOUT)
        answers = await self.node.remote_published(prefixes[-1] if prefixes else None, timeout)
        return json_response(
            {peer: [recipe.to_json() for recipe in recipes] for peer, recipes in answers.items()}
        )


async def _metrics_handler(metrics: Metrics, request: Request, params: Params) -> Response:
    body, content_type = metrics.render()
    return Response(200, body, [(b"content-type", content_type.encode())])


def _metrics_route(metrics: Metrics) -> Route:
    return Route(("metrics",), {"GET": partial(_metrics_handler, metrics)})


def make_api_app(node: NodeService, metrics: Metrics, *, token: str | None = None) -> RouterApp:
    """The `--api-port` app: SPEC §4 routes plus /metrics, behind the token if one is given."""
    h = ApiHandlers(node)
    routes = [
        Route(("api", "v0", "status"), {"GET": h.status}),
        Route(("api", "v0", "peers"), {"GET": h.peers}),
        Route(("api", "v0", "sync"), {"GET": h.sync}),
        Route(("api", "v0", "recipes"), {"GET": h.list_recipes, "POST": h.create_recipe}),
        Route(("api", "v0", "recipes", "{id}"), {"GET": h.get_recipe, "DELETE": h.delete_recipe}),
        Route(("api", "v0", "recipes", "{id}", "publish"), {"POST": h.publish_recipe}),
        Route(("api", "v0", "remote"), {"GET": h.remote}),
        _metrics_route(metrics),
    ]
    return RouterApp(routes, token)


def make_metrics_app(metrics: Metrics) -> RouterApp:
    """The `--metrics-port` app: only GET /metrics, no token (scrapers rarely carry one)."""
    return RouterApp([_metrics_route(metrics)])


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
    return config


async def serve_http(
    app: RouterApp,
    host: str,
    port: int,
    *,
    task_status: PortStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until the enclosing scope is cancelled; report the bound port
    (the real one when `port` is 0) through `task_status` once listening."""
    config = _hypercorn_config(host, port)
    async with trio.open_nursery() as nursery:
        # hypercorn types apps against its TypedDict events; ours reads plain mappings.
        asgi_app = cast(Any, app)
        binds: list[str] = await nursery.start(partial(serve, asgi_app, config, mode="asgi"))
        task_status.started(_port_of(binds[0]))
