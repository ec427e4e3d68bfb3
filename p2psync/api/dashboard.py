"""The live web dashboard: `/`, its assets under `/static/`, and the event
stream it listens to (`/api/v0/events`, server-sent events).

The page itself (HTML, CSS, plain JS) ships inside the package
(`p2psync/web/`): no build step, no CDN. It reads and writes recipes through
the SPEC §4 routes; everything else arrives as `state` events: one JSON
snapshot (status, peers, per-origin progress, key counters) sent at once, then
again after every commit that changed something (at most every 0.05 s) and at
least once a second while anything else (peer states) changes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import trio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from p2psync.api.metrics import Metrics
from p2psync.node.service import NodeService

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]

# Where the page's files are, inside the installed package.
WEB_DIR = Path(str(files("p2psync") / "web"))
STATIC_DIR = WEB_DIR / "static"

MIN_EVENT_INTERVAL = 0.05  # coalesce a backfill's many commits
POLL_SECONDS = 1.0  # peer states change without a commit
PING_SECONDS = 15
MAX_ORIGINS = 60  # progress bars sent; the rest is counted

# What the counters panel shows: (key, metric sample name, label filter).
COUNTERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("entries_applied", "p2psync_entries_applied_total", {}),
    ("entries_rejected", "p2psync_entries_rejected_total", {}),
    ("live_ops_received", "p2psync_live_ops_received_total", {}),
    ("backfill_entries_received", "p2psync_backfill_entries_received_total", {}),
    ("sync_rounds_ok", "p2psync_sync_rounds_total", {"result": "ok"}),
    ("sync_rounds_failed", "p2psync_sync_rounds_total", {"result": "failed"}),
    ("messages_dropped", "p2psync_messages_dropped_total", {}),
    ("forks_detected", "p2psync_forks_detected_total", {}),
)

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def counters(metrics: Metrics) -> dict[str, float]:
    totals = {key: 0.0 for key, _, _ in COUNTERS}
    wanted: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for key, name, labels in COUNTERS:
        wanted.setdefault(name, []).append((key, labels))
    for family in metrics.registry.collect():
        for sample in family.samples:
            for key, labels in wanted.get(sample.name, ()):
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    totals[key] += sample.value
    return totals


def origin_progress(progress: dict[str, dict[str, dict[str, int]]]) -> dict[str, Any]:
    """Per origin: what we hold and the most any connected peer says it holds;
    per peer: its totals over the origins either side knows."""
    mine = progress.get("self", {})
    known: dict[str, int] = {origin: counts.get("held", 0) for origin, counts in mine.items()}
    peers: dict[str, dict[str, int]] = {}
    for peer, origins in progress.items():
        if peer == "self":
            continue
        held_total = known_total = 0
        for origin, counts in origins.items():
            held = counts.get("held", 0)
            known[origin] = max(known.get(origin, 0), held)
            held_total += held
            known_total += counts.get("known", held)
        peers[peer] = {"held": held_total, "known": known_total}
    counted = [
        (origin, mine.get(origin, {}).get("held", 0), count) for origin, count in known.items()
    ]
    # Unfinished first (most missing on top), then the biggest logs.
    counted.sort(key=lambda r: (r[1] - r[2], -r[2], r[0]))
    rows = [
        {
            "origin": origin,
            "held": held,
            "known": count,
            "forked_at": mine.get(origin, {}).get("forked_at"),
        }
        for origin, held, count in counted[:MAX_ORIGINS]
    ]
    return {
        "origins": rows,
        "origins_total": len(counted),
        "held_total": sum(held for _, held, _ in counted),
        "known_total": sum(count for _, _, count in counted),
        "peers": peers,
    }


def snapshot(node: NodeService, metrics: Metrics) -> dict[str, Any]:
    return {
        "status": node.status().to_json(),
        "peers": [peer.to_json() for peer in node.list_peers()],
        "progress": origin_progress(node.sync_progress()),
        "counters": counters(metrics),
    }


def dashboard_routes(
    node: NodeService, metrics: Metrics, guarded: Callable[[Endpoint], Endpoint]
) -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        page = await trio.Path(WEB_DIR / "index.html").read_bytes()
        return Response(page, media_type="text/html", headers=SECURITY_HEADERS)

    async def state(request: Request) -> Response:
        return Response(orjson.dumps(snapshot(node, metrics)), media_type="application/json")

    async def events(request: Request) -> Response:
        return EventSourceResponse(
            _state_events(node, metrics),
            ping=PING_SECONDS,
            send_timeout=30,
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    return [
        Route("/", guarded(index), methods=["GET"]),
        Route("/api/v0/dashboard", guarded(state), methods=["GET"]),
        Route("/api/v0/events", guarded(events), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]


async def _state_events(node: NodeService, metrics: Metrics) -> AsyncIterator[ServerSentEvent]:
    last = b""
    seen = await node.wait_for_change(-1, 0)
    while True:
        try:
            data = orjson.dumps(snapshot(node, metrics))
        except Exception:
            log.exception("could not build the dashboard state")
            return
        if data != last:
            last = data
            yield ServerSentEvent(data=data.decode(), event="state")
        # A commit made while we were sending returns at once: none is missed.
        seen = await node.wait_for_change(seen, POLL_SECONDS)
        await trio.sleep(MIN_EVENT_INTERVAL)
