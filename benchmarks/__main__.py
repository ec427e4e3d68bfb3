"""`python -m benchmarks [--quick] [--only a,b] [--out PATH] [--keep]`."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import FULL, QUICK, REPO, Context, say

SCENARIOS = (
    "cold_join",
    "live_latency",
    "in_sync_round",
    "relay",
    "circuit_relay",
    "footprint",
    "core",
    "scale",
)
_ABSENT = object()
RESULTS = Path(__file__).resolve().parent / "results"

# What the table shows per scenario: (key, label, unit).
TABLE: dict[str, list[tuple[str, str, str]]] = {
    "cold_join": [
        ("entries", "entries", ""),
        ("entries_per_s", "join rate", "entries/s"),
        ("seconds", "join time (connect -> all held)", "s"),
        ("payload_bytes_per_s", "p2psync payload", "B/s"),
        ("raw_gossip_bytes_per_s", "raw gossipsub, same bytes", "B/s"),
        ("raw_stream_bytes_per_s", "raw libp2p stream, same bytes", "B/s"),
        ("ratio", "ratio to raw gossipsub", ""),
        ("fan_in_entries_per_s", "holder fan-in from 4 origins", "entries/s"),
    ],
    "live_latency": [
        ("ops", "ops created in window", ""),
        ("p50_ms", "p50 create -> applied", "ms"),
        ("p99_ms", "p99", "ms"),
        ("max_ms", "max (bucket bound)", "ms"),
        ("missing", "missing after settle", "entries"),
        ("raw_p50_ms", "raw gossipsub p50", "ms"),
        ("raw_p99_ms", "raw gossipsub p99", "ms"),
        ("raw_max_ms", "raw gossipsub max", "ms"),
        ("p50_ratio", "ratio p50 / raw p50", ""),
        ("p99_ratio", "ratio p99 / raw p99", ""),
        ("cpu_pct_sum", "CPU of our 5 nodes, summed", "% core"),
        ("raw_cpu_pct_sum", "CPU of the 5 raw peers, summed", "% core"),
        ("client_cpu_pct", "CPU of the POSTing client", "% core"),
        ("light.rate", "light run: ops/s", ""),
        ("light.p50_ms", "  p50 / raw p50", "ms"),
        ("light.raw_p50_ms", "", "ms"),
        ("light.p99_ms", "  p99 / raw p99", "ms"),
        ("light.raw_p99_ms", "", "ms"),
        ("light.p50_ratio", "  ratio p50", ""),
        ("light.p99_ratio", "  ratio p99", ""),
        ("light.missing", "  missing after settle", "entries"),
    ],
    "in_sync_round": [
        ("entries", "entries each side", ""),
        ("bytes", "bytes, in sync", "B"),
        ("round_trips", "round trips, in sync", ""),
        ("bytes_one_missing", "bytes, one missing", "B"),
        ("round_trips_one_missing", "round trips, one missing", ""),
        ("many_origins", "origins of one entry each", ""),
        ("many_origins_bytes", "  bytes, in sync", "B"),
        ("many_origins_round_trips", "  round trips, in sync", ""),
        ("many_origins_bytes_one_missing", "  bytes, one missing", "B"),
        ("many_origins_round_trips_one_missing", "  round trips, one missing", ""),
    ],
    "relay": [
        ("nodes", "chain length", "nodes"),
        ("entries", "entries", ""),
        ("seconds", "until the far end holds all", "s"),
        ("hop_s", "arrival per hop", "s"),
    ],
    "circuit_relay": [
        ("entries", "entries", ""),
        ("cold_join_relay_entries_per_s", "cold join through the relay", "entries/s"),
        ("cold_join_direct_entries_per_s", "cold join direct", "entries/s"),
        ("live_relay_p50_ms", "live p50 through the relay", "ms"),
        ("live_direct_p50_ms", "live p50 direct", "ms"),
        ("live_relay_p99_ms", "live p99 through the relay", "ms"),
        ("live_direct_p99_ms", "live p99 direct", "ms"),
    ],
    "footprint": [
        ("entries", "entries", ""),
        ("rss_mb", "resident memory after start", "MB"),
        ("db_mb", "database (db + wal)", "MB"),
        ("startup_s", "startup (spawn -> API answers)", "s"),
        ("generate_per_s", "generation rate", "entries/s"),
    ],
    "core": [
        ("entries", "entries", ""),
        ("apply_per_s", "verify + apply into SQLite", "entries/s"),
        ("engine_per_s", "  engine part only", "entries/s"),
        ("commit_per_s", "  SQLite commit part only", "entries/s"),
        ("live_apply_us", "one live op alone: engine + commit", "us"),
        ("live_validate_us", "  its validator before (one signature)", "us"),
        ("summary_encode_us", "items encode (100k, 1% holes)", "us"),
        ("summary_decode_us", "items decode (100k, 1% holes)", "us"),
    ],
    "scale": [
        ("nodes", "nodes in full mesh (N)", ""),
        ("idle_cpu_pct", "idle CPU per node, mean", "% core"),
        ("idle_cpu_pct_max", "idle CPU per node, max", "% core"),
        ("raw_idle_cpu_pct", "raw gossipsub idle CPU per peer", "% core"),
        ("burst_s", "burst 25/node at once -> all hold N*25", "s"),
        ("burst_posts_answered_s", "  until every POST was answered", "s"),
        ("raw_flood_s", "raw gossipsub flood, same msgs", "s"),
        ("burst_ratio", "ratio burst / raw flood", ""),
        ("burst_node_cpu_s", "  node CPU, summed", "s"),
        ("raw_flood_cpu_s", "  raw flood CPU, summed", "s"),
        ("burst_in_turn_s", "burst, each node's POSTs in turn", "s"),
        ("burst_in_turn_posts_answered_s", "  until every POST was answered", "s"),
        ("burst_in_turn_node_cpu_s", "  node CPU, summed", "s"),
        ("burst_in_turn_ratio", "  ratio in turn / raw flood at once", ""),
        ("rss_mb", "RSS per node, mean", "MB"),
        ("raw_rss_mb", "raw gossipsub RSS per peer", "MB"),
        ("loadavg_1m", "machine load (1 min) at idle window", ""),
    ],
}


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gb = round(pages / (1 << 30), 1)
    except (ValueError, OSError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, list):
        return " ".join(_fmt(v) for v in value)
    return str(value)


def print_table(report: dict[str, Any]) -> None:
    lines = [f"p2psync benchmarks ({report['mode']}, {report['machine']['nproc']} cores)"]
    for name, figures in report["scenarios"].items():
        took = report["durations_s"].get(name)
        lines.append(f"\n{name}  ({took:.1f} s)" if took is not None else f"\n{name}")
        if "error" in figures:
            lines.append(f"  ERROR: {figures['error']}")
        for key, label, unit in TABLE.get(name, []):
            value: Any = figures
            for part in key.split("."):  # "light.p50_ms": a figure of a sub-run
                value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
            if value is not _ABSENT:
                lines.append(f"  {label:<38} {_fmt(value):>16} {unit}")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI, under 2 minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/...)")
    parser.add_argument("--workdir", type=Path, help="where node data goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    args = parser.parse_args(argv)

    chosen = list(SCENARIOS)
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(unknown)}; pick from {SCENARIOS}")
    out = args.out or RESULTS / ("quick.json" if args.quick else "latest.json")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="p2psync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(QUICK if args.quick else FULL, args.quick, workdir, say)

    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "git": _git(),
        "sizes": vars(ctx.sizes),
        "scenarios": {},
        "durations_s": {},
    }
    started = time.monotonic()
    failed = False
    try:
        for name in chosen:
            module = importlib.import_module(f"benchmarks.{name}")
            say(f"{name}: start")
            t0 = time.monotonic()
            try:
                figures = module.run(ctx)
            except Exception as exc:  # one broken scenario must not hide the others
                failed = True
                traceback.print_exc()
                figures = {key: None for key in module.KEYS}
                figures["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            report["scenarios"][name] = figures
            report["durations_s"][name] = round(time.monotonic() - t0, 1)
            say(f"{name}: done in {report['durations_s'][name]} s")
    finally:
        report["total_s"] = round(time.monotonic() - started, 1)
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\ntotal {report['total_s']} s; wrote {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
