"""Yamux window updates at half a window, as go-yamux sends them, not per read.

py-libp2p's yamux (since its go-yamux auto-tuning) sends a WINDOW_UPDATE
frame after every read that releases bytes: directly when
``PY_YAMUX_RELEASE_ON_READ`` is on (its default), and otherwise through its
own "partial slack" branch, which grants whatever was consumed whenever
anything was. Each update is a yamux frame back to the sender: a Noise
encryption and a socket write here, a read, a decryption and a wake-up of
the read loop there. With pubsub RPCs of a few hundred bytes that was one
frame back per RPC received, 8-9 % of a receiving node's CPU in the live
scenario (py-spy, issue 13), and before the knob was turned off, three.

Here a stream grants credit only once at least half its target window has
been consumed (go-yamux's ``sendWindowUpdate`` hysteresis, which py-libp2p
also implements: we only drop the branches that bypass it). Flow control
holds: what the sender may still send is at least the target window less
what is unread and less what was consumed since the last grant (under half
a window), so a reader that keeps reading never leaves the sender without
credit; py-libp2p's writer sends partial frames to fit its credit. Every
implementation of yamux accepts updates of any size at any time. The price:
a sender that ran out of credit (its reader is a whole window behind) waits
until half a window is read, not the next read, and py-libp2p's writer gives
up after 5 s without credit: a reader that far behind is overloaded anyway.

An operator who sets ``PY_YAMUX_RELEASE_ON_READ``,
``PY_YAMUX_DISABLE_HYSTERESIS`` or ``PY_YAMUX_BATCH_THRESHOLD_DIV`` gets
py-libp2p's own behaviour back.
"""

from __future__ import annotations

import os

from libp2p.stream_muxer.yamux.yamux import YamuxStream

OPERATOR_KNOBS = (
    "PY_YAMUX_RELEASE_ON_READ",
    "PY_YAMUX_DISABLE_HYSTERESIS",
    "PY_YAMUX_BATCH_THRESHOLD_DIV",
)

_py_libp2p_grant = YamuxStream._auto_tune_and_send_window_update


async def _grant_at_half(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """py-libp2p's ``_auto_tune_and_send_window_update`` with only its
    go-yamux branch: grow the window back to target (and auto-tune it) once
    the consumed, ungranted bytes reach the threshold (half the target)."""
    increment = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        consumed = self.target_recv_window - (self.recv_window + buffered)
        # Half the target, as ``_grow_threshold`` says when no knob is set
        # (it read two environment variables per call: 1.3 % of a node's CPU).
        if consumed > 0 and consumed >= self.target_recv_window // 2:
            increment = self._grow_to_delta(buffered)
            increment += self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if increment > 0:  # never with the window lock held: see send_window_update
        await self.send_window_update(increment, skip_lock=True)


def grant_window_at_half() -> None:
    """Make every yamux stream of this process grant at half a window,
    unless the operator set one of py-libp2p's knobs. Idempotent."""
    if any(knob in os.environ for knob in OPERATOR_KNOBS):
        YamuxStream._auto_tune_and_send_window_update = _py_libp2p_grant  # type: ignore[method-assign]
        return
    YamuxStream._auto_tune_and_send_window_update = _grant_at_half  # type: ignore[method-assign]
