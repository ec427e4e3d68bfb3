"""The backfill progress line on stdout while a node catches up.

`BackfillMeter` is fed (held, known) counts with the time, and decides what
to write: on a terminal, one line rewritten in place (`\\r`) at most
`TTY_INTERVAL` apart, ended with a newline when the backfill is over; on a
pipe, a plain line every `PIPE_INTERVAL`, and the last one. `watch_backfill`
polls the engine for it. Held is what we hold; known the most that we or any
connected peer is known to hold, summed over origins (`SyncEngine.known_counts`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import trio

from p2psync.core.engine import SyncEngine

TTY_INTERVAL = 0.25  # seconds between redraws of the line on a terminal
PIPE_INTERVAL = 5.0  # seconds between plain lines on a pipe
POLL_INTERVAL = 0.25  # seconds between looks while a backfill is shown
IDLE_POLL_INTERVAL = 1.0  # and otherwise: a line starts within a second
MIN_GAP = 200  # entries: a smaller catch-up is no backfill worth a line
IDLE_END = 3.0  # seconds without a new entry: the backfill is over (or stalled)
RATE_WINDOW = 5.0  # seconds the rate is measured over


def backfill_counts(engine: SyncEngine) -> tuple[int, int]:
    """(held, known): entries we hold, and the most anyone connected holds, summed."""
    return engine.entry_count(), sum(engine.known_counts().values())


def format_backfill(held: int, known: int, rate: float | None, *, done: bool = False) -> str:
    """`backfill: 12,345 / 50,000 entries (24%) · 3,210/s · ~12 s left`."""
    known = max(known, held)
    percent = 100 * held // known if known else 100
    parts = [f"backfill: {held:,} / {known:,} entries ({percent}%)"]
    if rate is not None and rate > 0:
        parts.append(f"{rate:,.0f}/s")
        if not done and known > held:
            parts.append(f"~{_duration((known - held) / rate)} left")
    if done:
        parts.append("done" if held >= known else "stopped")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class BackfillMeter:
    def __init__(
        self,
        write: Callable[[str], None],
        *,
        tty: bool,
        redraw_prompt: Callable[[], None] | None = None,
    ) -> None:
        self.write = write
        self.tty = tty
        self.redraw_prompt = redraw_prompt
        self.active = False
        self._samples: list[tuple[float, int]] = []  # (time, held) within RATE_WINDOW
        self._shown_at = float("-inf")
        self._last_growth = 0.0
        self._last: tuple[int, int] = (0, 0)

    def update(self, held: int, known: int, now: float) -> None:
        grew = held > self._last[0]
        self._last = (held, known)
        if grew:
            self._last_growth = now
        if not self.active:
            if not grew or known - held < MIN_GAP:
                self._samples = [(now, held)]
                return
            self.active, self._shown_at = True, float("-inf")
        self._samples.append((now, held))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.pop(0)
        if held >= known or now - self._last_growth >= IDLE_END:
            self.finish()
            return
        if now - self._shown_at >= (TTY_INTERVAL if self.tty else PIPE_INTERVAL):
            self._shown_at = now
            line = format_backfill(held, known, self.rate())
            self.write(f"\r{line}\x1b[K" if self.tty else line + "\n")

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, h0), (t1, h1) = self._samples[0], self._samples[-1]
        return (h1 - h0) / (t1 - t0) if t1 > t0 else None

    def finish(self) -> None:
        if not self.active:
            return
        self.active = False
        held, known = self._last
        line = format_backfill(held, known, self.rate(), done=True)
        self.write(f"\r{line}\x1b[K\n" if self.tty else line + "\n")
        self._samples = []
        if self.redraw_prompt is not None:
            self.redraw_prompt()


async def watch_backfill(
    engine: SyncEngine, *, stream: TextIO | None = None, prompt: str | None = None
) -> None:
    """Show backfills on `stream` (stdout) until cancelled."""
    out = sys.stdout if stream is None else stream
    tty = _isatty(out)

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    meter = BackfillMeter(write, tty=tty, redraw_prompt=_prompt_redraw(write, prompt, tty))
    try:
        while True:
            held, known = backfill_counts(engine)
            meter.update(held, known, trio.current_time())
            await trio.sleep(POLL_INTERVAL if meter.active else IDLE_POLL_INTERVAL)
    finally:
        meter.finish()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _prompt_redraw(
    write: Callable[[str], None], prompt: str | None, tty: bool
) -> Callable[[], None] | None:
    if prompt is None or not tty:
        return None

    def redraw() -> None:
        try:
            import readline

            typed = readline.get_line_buffer()
        except ImportError:
            typed = ""
        write(prompt + typed)

    return redraw
