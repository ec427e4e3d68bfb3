"""A yamux DATA body that Noise already decrypted is read without a timer."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2psync.net import yamux_reads
from p2psync.net.yamux_reads import buffered_bytes, read_bodies_without_a_timer


class _Session(SecureSession):
    """A Noise SecureSession holding ``buffered`` decrypted bytes, then waiting."""

    def __init__(self, buffered: bytes, arriving: trio.MemoryReceiveChannel[bytes]) -> None:
        self._buffered = buffered
        self._arriving = arriving
        self.low_watermark, self.high_watermark = 0, len(buffered)

    async def read(self, n: int | None = None) -> bytes:
        if self._buffered:
            data, self._buffered = self._buffered[:n], self._buffered[n:]
            self.low_watermark += len(data)
            return data
        return await self._arriving.receive()  # a peer that never sends: waits


class _Yamux:
    def __init__(self, session: _Session) -> None:
        self.secured_conn = session


def _no_timer(*args: Any) -> Any:
    raise AssertionError("a timer was set up for a body already held")


async def test_a_held_body_is_read_without_a_cancel_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    read_bodies_without_a_timer()
    _, arriving = trio.open_memory_channel[bytes](1)
    session = _Session(b"x" * 300, arriving)
    monkeypatch.setattr(yamux_reads.trio, "fail_after", _no_timer)
    assert await Yamux._read_data_body(_Yamux(session), 300) == b"x" * 300  # type: ignore[arg-type]
    assert buffered_bytes(session) == 0


async def test_a_body_not_yet_held_still_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        with monkeypatch.context() as env:
            env.setenv("PY_YAMUX_DATA_READ_TIMEOUT", "0.2")
            read_bodies_without_a_timer()
        _, arriving = trio.open_memory_channel[bytes](1)
        session = _Session(b"x" * 10, arriving)  # 10 of 300 announced bytes
        with trio.fail_after(5), pytest.raises(trio.TooSlowError):
            await Yamux._read_data_body(_Yamux(session), 300)  # type: ignore[arg-type]
    finally:
        read_bodies_without_a_timer()  # the environment as it was


def test_only_a_noise_session_counts_as_holding_bytes() -> None:
    class _LooksLikeOne:  # a wrapper that could read ahead: never trusted
        low_watermark, high_watermark = 0, 1000

    assert buffered_bytes(object()) == 0
    assert buffered_bytes(_LooksLikeOne()) == 0
