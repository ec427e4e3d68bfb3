"""One way to log: every line, ours and the libraries', through one handler.

- `LineFormatter`: `TIME LEVEL LOGGER: message`, time ISO-like with
  milliseconds; an expected network error (`expected_network_error`) is
  shown as one line after the message, never as a traceback.
- `NoiseFilter`: py-libp2p's connection chatter (a dial that failed, a
  refused GRAFT, a reset stream) is demoted to DEBUG: dropped unless
  the level is DEBUG. Our own reports (a static peer unreachable, a ban)
  carry the news.
- `RepeatFilter`: the first record of a logger+template passes; repeats
  are held and counted, and one line `... (repeated N times)` follows every
  `every` seconds while they go on, or once they stop (`flush`).

py-libp2p detaches its `libp2p` logger from the root at import
(`propagate = False`, no handler), so its warnings went to Python's
last-resort handler as bare lines; `configure_logging` joins it back.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import trio

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REPEAT_SECONDS_ENV = "P2PSYNC_LOG_REPEAT_SECONDS"
DEFAULT_REPEAT_SECONDS = 60.0
# Distinct lines of one template shown per period before the rest are counted.
VARIANTS_PER_PERIOD = 5
# The libraries whose loggers are joined to ours (they may detach them).
LIBRARY_LOGGERS = ("libp2p", "zeroconf", "multiaddr")

# (logger name prefix, message pattern): connection noise, at DEBUG.
NOISE: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "libp2p",
        re.compile(
            r"failed to (open|dial|connect|negotiate|upgrade|establish)"
            r"|all attempts to connect|GRAFT: ignoring|PRUNE|connection (reset|closed|refused|lost)"
            r"|stream (reset|closed)|unreadable|\bEOF\b|timed out|timeout|no route",
            re.IGNORECASE,
        ),
    ),
)
# Not here: our own "unreadable pubsub stream" warning (net/libp2p_fixes.py). It
# means a peer's messages were lost, which tests/e2e/test_storm_join.py guards
# against; it is formatted and its repeats counted like any other line.

_NETWORK_ERROR_MODULES = ("libp2p.", "zeroconf.", "multiaddr.", "trio.", "h11.", "anyio.")


def expected_network_error(exc: BaseException) -> bool:
    """Errors a network makes happen: shown as one line, not a traceback."""
    if isinstance(exc, BaseExceptionGroup):
        return all(expected_network_error(e) for e in exc.exceptions)
    if isinstance(exc, (OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError)):
        return True
    return any(cls.__module__.startswith(_NETWORK_ERROR_MODULES) for cls in type(exc).__mro__[:-2])


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LineFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and expected_network_error(exc):
            record = logging.makeLogRecord(record.__dict__)
            record.msg = f"{record.getMessage()} ({describe(exc)})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return super().format(record)


class NoiseFilter(logging.Filter):
    """Demote known connection noise to DEBUG; drop it unless `level` is DEBUG."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not self.is_noise(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.level <= logging.DEBUG

    @staticmethod
    def is_noise(record: logging.LogRecord) -> bool:
        name = record.name
        for prefix, pattern in NOISE:
            in_scope = name == prefix or name.startswith(prefix + ".")
            if in_scope and pattern.search(_message(record)):
                return True
        return False


@dataclass(slots=True)
class _Repeats:
    shown_at: float  # when a line of this kind last went out
    last_seen: float
    held: int = 0  # repeats since, not shown
    last: logging.LogRecord | None = None


class RepeatFilter(logging.Filter):
    """Let the first of a line through; count its repeats, show the count.

    A repeat within `quiet` seconds of the previous one is held; once
    `every` seconds passed since the last line shown, the repeat goes out
    as `MESSAGE (repeated N times)`. Held repeats left when the repeats stop
    go out from `flush` (the app calls it every second), or with the next record.
    """

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        *,
        every: float = DEFAULT_REPEAT_SECONDS,
        quiet: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.emit = emit
        self.every = every
        self.quiet = every if quiet is None else quiet
        self.clock = clock
        self._seen: dict[tuple[str, int, str], _Repeats] = {}
        self._variants: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.RLock()  # the REPL logs from its worker thread

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "p2psync_repeats", False):
            return True  # our own summary line
        with self._lock:
            return self._filter(record)

    def _filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        self._flush(now)
        key = self._key_of(record, now)
        seen = self._seen.get(key)
        if seen is None or (not seen.held and now - seen.last_seen >= self.quiet):
            self._seen[key] = _Repeats(shown_at=now, last_seen=now)
            return True
        seen.held += 1
        seen.last_seen = now
        seen.last = record
        if now - seen.shown_at < self.every:
            return False
        _mark_repeated(record, seen.held)
        seen.held, seen.shown_at, seen.last = 0, now, None
        return True

    def _key_of(self, record: logging.LogRecord, now: float) -> tuple[str, int, str]:
        """Lines differing in their values (another peer) are news, up to
        `VARIANTS_PER_PERIOD` of one template per period; past that, a flood of
        ever-new values (fresh peer ids cost nothing) is counted per template."""
        exact = (record.name, record.levelno, _message(record))
        if exact in self._seen:
            return exact
        template = (record.name, record.levelno, "\0" + str(record.msg))
        shown = [t for t in self._variants.get(template, []) if now - t < self.every]
        if len(shown) >= VARIANTS_PER_PERIOD:
            self._variants[template] = shown
            self._seen.setdefault(template, _Repeats(shown_at=now, last_seen=now))
            return template
        self._variants[template] = [*shown, now]
        if len(self._variants) > 4 * VARIANTS_PER_PERIOD * 64:
            self._variants.clear()  # bounded: forgetting only lets a few more lines out
        return exact

    def flush(self, now: float | None = None) -> None:
        """Show the counts of repeats that stopped `quiet` seconds ago; forget old kinds."""
        with self._lock:
            self._flush(self.clock() if now is None else now)

    def _flush(self, now: float) -> None:
        for key, seen in list(self._seen.items()):
            if now - seen.last_seen < self.quiet:
                continue
            if seen.held and seen.last is not None:
                summary = logging.makeLogRecord(seen.last.__dict__)
                _mark_repeated(summary, seen.held)
                summary.p2psync_repeats = True
                seen.held, seen.shown_at, seen.last = 0, now, None
                self.emit(summary)
            elif now - seen.last_seen >= 10 * self.quiet:
                del self._seen[key]


def _mark_repeated(record: logging.LogRecord, count: int) -> None:
    record.msg = f"{_message(record)} (repeated {count} time{'s' if count != 1 else ''})"
    record.args = None


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        return str(record.msg)


_repeats: RepeatFilter | None = None


def configure_logging(level: str | int, stream: TextIO | None = None) -> logging.Handler:
    """One handler on the root logger for every logger; returns it."""
    global _repeats
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    assert isinstance(numeric, int), level
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(LineFormatter())
    handler.addFilter(NoiseFilter(numeric))
    _repeats = RepeatFilter(handler.handle, every=_repeat_seconds())
    handler.addFilter(_repeats)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    join_library_loggers()
    logging.captureWarnings(True)
    return handler


def join_library_loggers() -> None:
    """Send the libraries' records to our handler (py-libp2p detaches its logger at
    import: call again after it is imported)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def flush_repeated() -> None:
    """Show the counts of repeated lines that went quiet (called every second)."""
    if _repeats is not None:
        _repeats.flush()


def _repeat_seconds() -> float:
    try:
        return max(0.1, float(os.environ.get(REPEAT_SECONDS_ENV, DEFAULT_REPEAT_SECONDS)))
    except ValueError:
        return DEFAULT_REPEAT_SECONDS
