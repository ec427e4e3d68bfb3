"""The backfill progress line: its text, and how often it is written (cli/progress.py)."""

from __future__ import annotations

from p2psync.cli.progress import (
    IDLE_END,
    PIPE_INTERVAL,
    BackfillMeter,
    backfill_counts,
    format_backfill,
)


def test_format() -> None:
    line = format_backfill(12_345, 50_000, 3210.4)
    assert line == "backfill: 12,345 / 50,000 entries (24%) · 3,210/s · ~12 s left"
    assert format_backfill(0, 1000, None) == "backfill: 0 / 1,000 entries (0%)"
    assert format_backfill(10, 10_090, 1.0).endswith("~2.8 h left")
    assert format_backfill(0, 600, 2.0).endswith("~5 min left")
    assert (
        format_backfill(50, 50, 10.0, done=True) == "backfill: 50 / 50 entries (100%) · 10/s · done"
    )
    assert format_backfill(40, 50, 10.0, done=True).endswith("· stopped")


def _run(meter: BackfillMeter, steps: list[tuple[float, int, int]]) -> None:
    for now, held, known in steps:
        meter.update(held, known, now)


def test_terminal_line_is_rewritten_a_few_times_a_second_then_ended() -> None:
    written: list[str] = []
    prompts: list[str] = []
    meter = BackfillMeter(written.append, tty=True, redraw_prompt=lambda: prompts.append("p"))
    meter.update(0, 10_000, 0.0)
    assert not written  # nothing arrived yet: no backfill
    # 100 entries every 0.05 s for 5 s: 99 updates, at most ~4 lines a second.
    _run(meter, [(i * 0.05, i * 100, 10_000) for i in range(1, 100)])
    assert 15 <= len(written) <= 22
    assert all(w.startswith("\rbackfill: ") and "\n" not in w for w in written)
    assert "2,000/s" in written[-1] and "left" in written[-1]
    meter.update(10_000, 10_000, 5.1)
    assert written[-1].startswith("\rbackfill: 10,000 / 10,000 entries (100%)")
    assert written[-1].endswith("done\x1b[K\n") and prompts == ["p"]
    meter.update(10_000, 10_000, 6.0)
    assert written[-1].endswith("\n") and len(prompts) == 1  # over: quiet


def test_pipe_gets_a_plain_line_every_few_seconds() -> None:
    written: list[str] = []
    meter = BackfillMeter(written.append, tty=False)
    meter.update(0, 100_000, 0.0)
    _run(meter, [(i * 0.25, i * 100, 100_000) for i in range(1, 81)])  # 20 s
    plain = [w for w in written]
    assert all(w.endswith("\n") and "\r" not in w and "\x1b" not in w for w in plain)
    assert 20 / PIPE_INTERVAL <= len(plain) <= 20 / PIPE_INTERVAL + 1


def test_a_stalled_backfill_ends_its_line_and_small_catchups_show_nothing() -> None:
    written: list[str] = []
    meter = BackfillMeter(written.append, tty=False)
    _run(meter, [(0.0, 0, 150), (1.0, 100, 150), (2.0, 150, 150)])
    assert not written  # below MIN_GAP
    _run(meter, [(3.0, 150, 5000), (4.0, 500, 5000)])
    assert len(written) == 1
    meter.update(500, 5000, 4.0 + IDLE_END)
    assert written[-1].endswith("· stopped\n")


class FakeEngine:
    def known_counts(self) -> dict[bytes, int]:
        return {b"a": 30, b"b": 5, b"c": 7}

    def entry_count(self) -> int:
        return 15


def test_known_is_summed_over_origins() -> None:
    # How known_counts folds the peers' claims: tests/unit/test_core_engine.py.
    assert backfill_counts(FakeEngine()) == (15, 30 + 5 + 7)  # type: ignore[arg-type]
