"""The `--api-token` rule, in front of every route of the API app.

Scripts send `Authorization: Bearer TOKEN`. A browser cannot add that header
to a page load or an EventSource, so the dashboard is opened once as
`/?token=TOKEN`: the gate answers with a cookie holding the token
(HttpOnly, SameSite=Strict, so other sites' pages cannot use it) and a
redirect to `/`, which keeps the token out of the address bar and history.
"""

from __future__ import annotations

import hmac
import ipaddress
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, quote, unquote

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "p2psync_token"


class TokenGate:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/" and self._query_token_ok(scope):
            cookie = (
                f"{COOKIE}={quote(self.token.decode(), safe='')}; Path=/; HttpOnly; SameSite=Strict"
            )
            await _answer(send, 303, b"", [(b"location", b"/"), (b"set-cookie", cookie.encode())])
            return
        body = orjson.dumps({"error": "missing or wrong API token"})
        await _answer(
            send,
            401,
            body,
            [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
        )

    def _matches(self, credential: bytes) -> bool:
        return hmac.compare_digest(credential.strip(), self.token)

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers", []))
        scheme, _, credential = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and self._matches(credential):
            return True
        raw_cookie = headers.get(b"cookie")
        if raw_cookie is None:
            return False
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(raw_cookie.decode("latin-1"))
        except Exception:  # a malformed Cookie header is simply no token
            return False
        morsel = cookies.get(COOKIE)
        return morsel is not None and self._matches(unquote(morsel.value).encode())

    def _query_token_ok(self, scope: Scope) -> bool:
        query = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
        given = query.get("token")
        if not given:
            return False
        return self._matches(given[-1].encode())


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BrowserGuard:
    """Keep other web pages away from the API, token or not.

    - DNS rebinding: a page on a domain that resolves to 127.0.0.1 shares the
      API's origin. Without a token, only a Host that is an IP literal or
      `localhost` is served (a rebinding domain is neither). With a token,
      its cookie is SameSite=Strict and bound to the name it was set for.
    - CSRF: a page may fire a "simple" POST at the loopback API with no
      preflight. A state-changing request whose `Origin` is not the API's
      own (or that a browser marks `Sec-Fetch-Site: cross-site`) is refused.
      Scripts (curl, httpx) send no Origin and are served as before.
    """

    def __init__(self, app: ASGIApp, *, check_host: bool) -> None:
        self.app = app
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                body = orjson.dumps({"error": refusal})
                await _answer(send, 403, body, [(b"content-type", b"application/json")])
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host", b"").decode("latin-1")
        if self.check_host and host and not _is_literal_host(host):
            return f"host {host!r} is not this node's address; open the API by IP or localhost"
        if scope.get("method", "GET") not in _UNSAFE:
            return None
        # Browsers name the page's origin on every cross-site POST, PATCH and
        # DELETE (no-cors and form posts included); scripts send none.
        origin = headers.get(b"origin")
        cross_site = headers.get(b"sec-fetch-site", b"") == b"cross-site"
        if cross_site or (
            origin is not None and origin.decode("latin-1") not in _own_origins(host)
        ):
            return "cross-site request refused: send it from the dashboard or a script"
        return None


def _own_origins(host: str) -> set[str]:
    return {f"http://{host}", f"https://{host}"}


def _is_literal_host(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
