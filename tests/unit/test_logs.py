"""One log format for all loggers; library noise demoted; repeats counted (cli/logs.py)."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest
import trio

from p2psync.cli.logs import (
    VARIANTS_PER_PERIOD,
    LineFormatter,
    NoiseFilter,
    RepeatFilter,
    configure_logging,
    expected_network_error,
    join_library_loggers,
)

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def record(
    name: str = "p2psync.node.dialing",
    level: int = logging.WARNING,
    msg: str = "static peer %s unreachable: %s",
    args: tuple[object, ...] = ("12D3KooWx", "refused"),
    exc: BaseException | None = None,
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_format_has_iso_time_with_ms_level_and_logger() -> None:
    line = LineFormatter().format(record())
    assert LINE.match(line), line
    assert line.endswith("WARNING p2psync.node.dialing: static peer 12D3KooWx unreachable: refused")


def test_expected_network_error_is_one_line() -> None:
    exc = raised(OSError(101, "Network is unreachable"))
    line = LineFormatter().format(
        record("zeroconf", msg="Error sending through socket %d", args=(7,), exc=exc)
    )
    assert "\n" not in line and "Traceback" not in line
    assert line.endswith(
        "Error sending through socket 7 (OSError: [Errno 101] Network is unreachable)"
    )


def test_other_errors_keep_their_traceback() -> None:
    exc = raised(KeyError("bug"))
    line = LineFormatter().format(record(msg="boom", args=(), exc=exc))
    assert "Traceback" in line and "KeyError" in line


def test_which_errors_are_expected() -> None:
    assert expected_network_error(ConnectionResetError())
    assert expected_network_error(trio.BrokenResourceError())
    assert expected_network_error(ExceptionGroup("x", [OSError(), trio.ClosedResourceError()]))
    assert not expected_network_error(ExceptionGroup("x", [OSError(), KeyError()]))
    assert not expected_network_error(ValueError("bug"))
    from libp2p.transport.exceptions import OpenConnectionError

    assert expected_network_error(OpenConnectionError("all attempts to connect failed"))


TCP_NOISE = ("libp2p.transport.tcp.tcp", logging.ERROR, "Failed to open TCP stream: %s")


@pytest.mark.parametrize(
    ("name", "level", "msg"),
    [
        TCP_NOISE,
        ("libp2p.pubsub.gossipsub", logging.WARNING, "GRAFT: ignoring request from %s"),
    ],
)
def test_noise_is_demoted_and_dropped_above_debug(name: str, level: int, msg: str) -> None:
    noise = record(name, level, msg, ("x",))
    assert not NoiseFilter(logging.WARNING).filter(noise)
    assert noise.levelno == logging.DEBUG and noise.levelname == "DEBUG"
    assert NoiseFilter(logging.DEBUG).filter(record(name, level, msg, ("x",)))


def test_news_from_libp2p_and_our_failures_pass() -> None:
    news = record("libp2p.host.basic_host", logging.WARNING, "listen on %s refused", ("x",))
    assert NoiseFilter(logging.WARNING).filter(news) and news.levelno == logging.WARNING
    ours = record()  # p2psync.node.dialing: the same words do not make it noise
    assert NoiseFilter(logging.WARNING).filter(ours) and ours.levelno == logging.WARNING
    lost = record("p2psync.net.libp2p_fixes", msg="unreadable pubsub stream from %s", args=("x",))
    assert NoiseFilter(logging.WARNING).filter(lost)  # messages lost: news


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_show_once_with_a_count_every_period() -> None:
    clock, emitted = Clock(), []
    repeats = RepeatFilter(emitted.append, every=30, clock=clock)
    assert repeats.filter(record(args=("a", "refused")))
    passed = []
    for _ in range(37):
        clock.now += 0.5
        r = record(args=("a", "refused"))
        if repeats.filter(r):
            passed.append(r.getMessage())
    assert passed == []  # within 30 s of the first line: all held
    clock.now = 30.0
    r = record(args=("a", "refused"))
    assert repeats.filter(r)
    assert r.getMessage() == "static peer a unreachable: refused (repeated 38 times)"
    assert not emitted


def test_held_repeats_are_flushed_once_quiet() -> None:
    clock, emitted = Clock(), []
    repeats = RepeatFilter(emitted.append, every=30, quiet=5, clock=clock)
    for _ in range(4):
        repeats.filter(record())
        clock.now += 1
    repeats.flush()
    assert not emitted  # the last one was 1 s ago
    clock.now += 10
    repeats.flush()
    (summary,) = emitted
    assert summary.getMessage().endswith("(repeated 3 times)")
    assert repeats.filter(summary)  # the summary itself is not held
    repeats.flush()
    assert len(emitted) == 1
    # After the quiet period, the next occurrence is news again.
    assert repeats.filter(record())


def test_different_templates_and_loggers_are_not_repeats() -> None:
    repeats = RepeatFilter(lambda r: None, every=30, clock=Clock())
    assert repeats.filter(record())
    assert repeats.filter(record(msg="another %s %s"))
    assert repeats.filter(record(name="p2psync.app"))
    assert repeats.filter(record(args=("other peer", "x")))  # same template, other peer: news
    assert not repeats.filter(record(args=("other peer", "x")))  # the very same line: a repeat


def test_a_flood_of_ever_new_values_is_counted_per_template() -> None:
    clock, emitted = Clock(), []
    repeats = RepeatFilter(emitted.append, every=30, quiet=5, clock=clock)
    shown = [repeats.filter(record(args=(f"peer{i}", "refused"))) for i in range(50)]
    assert shown == [True] * VARIANTS_PER_PERIOD + [False] * (50 - VARIANTS_PER_PERIOD)
    clock.now += 10
    repeats.flush()
    (summary,) = emitted
    assert summary.getMessage() == (
        f"static peer peer49 unreachable: refused (repeated {50 - VARIANTS_PER_PERIOD} times)"
    )
    clock.now += 30  # a new period: new values are news again
    assert repeats.filter(record(args=("peer50", "refused")))


def test_configure_sends_library_records_through_one_format() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    libp2p = logging.getLogger("libp2p")
    libp2p.propagate = False  # what py-libp2p does at import
    try:
        configure_logging("WARNING", stream)
        join_library_loggers()
        logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: %s", "x")
        logging.getLogger("libp2p.host").warning("something new")
        logging.getLogger("p2psync.node.dialing").warning("static peer %s unreachable", "p")
        logging.getLogger("p2psync.node.dialing").info("hidden")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith("WARNING libp2p.host: something new")
    assert "Failed to open TCP stream" not in stream.getvalue()
    assert sys.stderr is not stream
