"""The benchmark suite still runs: its fast in-process scenarios, in quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_core_and_in_sync_round_write_their_keys(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    argv = ["--quick", "--only", "core,in_sync_round", "--out", str(out)]
    argv += ["--workdir", str(tmp_path / "work")]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    assert {"nproc", "cpu_model"} <= set(report["machine"])
    assert "timestamp" in report and "git" in report
    core = report["scenarios"]["core"]
    assert core["apply_per_s"] > 0
    in_sync = report["scenarios"]["in_sync_round"]
    for key in ("bytes", "round_trips", "bytes_one_missing", "round_trips_one_missing"):
        assert in_sync[key] > 0, key
    assert in_sync["bytes_one_missing"] > in_sync["bytes"]
    assert "core" in done.stdout and "in_sync_round" in done.stdout  # the table


def test_scale_reads_cpu_and_memory_from_proc() -> None:
    """The scale scenario's /proc readers (its full runs spawn N nodes: too long for tests)."""
    import os

    from benchmarks.common import rss_mb
    from benchmarks.scale import _summary, cpu_seconds, idle_cpu_pct

    pid = os.getpid()
    assert cpu_seconds(pid) > 0
    (share,) = idle_cpu_pct([pid], 0.05)
    assert share >= 0
    assert rss_mb(pid) > 0
    assert _summary([1.0, 3.0]) == {"mean": 2.0, "max": 3.0, "min": 1.0, "sum": 4.0}
