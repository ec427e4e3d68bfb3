"""The `--api-token` rule, in front of every route of the API app.

Scripts send `Authorization: Bearer TOKEN`. A browser cannot add that header
to a page load or an EventSource, so the dashboard is opened once as
`/?token=TOKEN`: the gate answers with a cookie holding the token
(HttpOnly, SameSite=Strict, so other sites' pages cannot use it) and a
redirect to `/`, which keeps the token out of the address bar and history.
"""

from __future__ import annotations

import hmac
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
