"""What the benchmarks read back from a run: its log intervals' throughput and peak memory."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def log_intervals(run_dir: Path, hint: str) -> tuple[list[dict], list[float], float]:
    """The metrics.jsonl rows that carry `perf/img_per_s`, their rates, and the median rate
    without the first interval (warm-up: the first grid, allocator growth, compilation).
    SystemExit with `hint` (how to get more intervals) when there are fewer than two."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "perf/img_per_s" in r]
    rates = [r["perf/img_per_s"] for r in rows]
    if len(rates) < 2:
        raise SystemExit(f"only {len(rates)} log interval(s): {hint}")
    return rows, rates, statistics.median(rates[1:])


def peak_mem_mb(rows: list[dict]) -> float:
    """The largest `perf/peak_mem_mb/rank0` of the rows."""
    return round(max(r.get("perf/peak_mem_mb/rank0", 0.0) for r in rows), 1)
