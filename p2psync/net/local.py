"""Same-host discovery through the data root: no network traffic at all.

Each running node writes `<data root>/run/<network>/<peer id>.json` with its
loopback addresses and pid, and removes it on exit. Every node polls that
folder, so `p2psync run` in three terminals finds the others even with
`--no-mdns`. Files of dead processes (kill -9) are ignored and cleaned up.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import trio

from p2psync.net.addresses import is_loopback_multiaddr

if TYPE_CHECKING:
    # trio.TaskStatus, as trio-typing's stubs (which mypy reads for trio) name it.
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
MAX_ANNOUNCE_BYTES = 16 * 1024


def announce_dir(data_root: Path, network: str) -> Path:
    return data_root / "run" / network


def loopback_addrs(listen_addrs: list[str]) -> list[str]:
    """Prefer loopback addresses for same-host peers; fall back to all."""
    loopback = [a for a in listen_addrs if is_loopback_multiaddr(a)]
    return loopback or listen_addrs


def _pid_alive(pid: int) -> bool:
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_announcement(folder: Path, peer_id: str, addrs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{peer_id}.json"
    temp = folder / f".{peer_id}.{os.getpid()}.tmp"
    temp.write_bytes(orjson.dumps({"peer_id": peer_id, "addrs": addrs, "pid": os.getpid()}))
    temp.replace(path)
    return path


def read_announcements(folder: Path, me: str) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    try:
        paths = list(folder.glob("*.json"))
    except OSError:
        return found
    for path in paths:
        if path.stem == me:
            continue
        try:
            if path.stat().st_size > MAX_ANNOUNCE_BYTES:
                continue
            body = orjson.loads(path.read_bytes())
            peer_id, addrs, pid = body["peer_id"], body["addrs"], body["pid"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if not (isinstance(peer_id, str) and isinstance(pid, int) and isinstance(addrs, list)):
            continue
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        found.append((peer_id, [a for a in addrs if isinstance(a, str)]))
    return found


async def serve_local_discovery(
    data_root: Path,
    network: str,
    peer_id: str,
    listen_addrs: list[str],
    on_found: Callable[[str, list[str]], None],
    *,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    folder = announce_dir(data_root, network)
    path = write_announcement(folder, peer_id, loopback_addrs(listen_addrs))
    task_status.started()
    try:
        while True:
            for other, addrs in read_announcements(folder, peer_id):
                on_found(other, addrs)
            await trio.sleep(POLL_SECONDS)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
