"""Measure how far the golden cases move on "another CPU", imitated on this one by switching the
kernels that run (the ATen and oneDNN ISA levels), and print the spread as JSON.

    python -m tests.golden.spread                          # every default (non-slow) case, AVX2 kernels
    python -m tests.golden.spread --all --isa default      # every case, the kernels without vector ISA
    python -m tests.golden.spread -k wgan_gp --keep DIR    # cases whose name contains PATTERN; keep the records
    python -m tests.golden.spread --from DIR               # measure kept records again (no training)

Per case: whether compare() passes the run as a record of another machine (and its differences
if not), the largest difference of any per-step scalar at each step relative to that scalar's
scale over the run (max |value|), the float tensors whose checksums moved beyond 1e-4 of their
absolute sum (what the check before issue 23 allowed), and for each kind of number
(harness.deviations) the one closest to its tolerance (`ratio`: difference / tolerance, < 1
passes). The "summary" gathers the same over all cases. The figures this gave are in
harness.py's docstring. Cases run one at a time: they share the CPU with their own subprocesses.

The test itself runs as on another machine the same way: with ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 set, `pytest tests/golden` trains with those kernels and machine()
reports AVX2, so every case is checked against its AVX-512 recording as another CPU's run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.golden.cases import CASES, make_data
from tests.golden.harness import compare, deviations, dumps, golden_path, machine, run_case

GOLDEN_DIR = Path(__file__).with_name("data")
# the environment variables that pick the kernels of an ISA level (run_cli passes them on)
ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
CAPABILITY = {"avx2": "AVX2", "default": "DEFAULT"}  # what torch reports under each (machine()'s cpu_capability)
OLD_RTOL = 1e-4  # the cross-machine tolerance of every float before issue 23's point 6


def measure(golden: dict, result: dict, isa: str) -> dict:
    """The spread of one run against its recording (see the module's docstring), the run taken as
    a record of a machine with the kernels of `isa`."""
    other = {**result, "machine": {**golden["machine"], "cpu_capability": CAPABILITY[isa]}}
    devs = deviations(golden, other)
    by_step: dict[int, float] = {}
    scale: dict[str, float] = {}
    for row in golden["metrics"]:
        for k, v in row.items():
            if isinstance(v, float) and math.isfinite(v):
                scale[k] = max(scale.get(k, 0.0), abs(v))
    for g, r in zip(golden["metrics"], result["metrics"]):
        for k, a in g.items():
            b = r.get(k)
            if k not in ("step", "kimg") and isinstance(a, float) and isinstance(b, float) and scale.get(k, 0.0) > 0:
                by_step[g["step"]] = max(by_step.get(g["step"], 0.0), abs(a - b) / scale[k])
    worst: dict[str, dict] = {}
    for d in devs:
        ratio = d.diff / d.allowed if d.allowed > 0 else (0.0 if d.diff == 0 else float("inf"))
        if ratio >= worst.get(d.kind, {}).get("ratio", -1.0):
            worst[d.kind] = {"name": d.name, "diff": d.diff, "allowed": d.allowed, "ratio": ratio}
    old = {d.name: d.diff / max(golden["tensors"][d.name]["abs_sum"], 1e-30) for d in devs
           if d.name in golden["tensors"] and d.diff > OLD_RTOL * golden["tensors"][d.name]["abs_sum"]}
    return {"compare": compare(golden, other), "scalar_by_step": [by_step.get(s, 0.0) for s in sorted(by_step)],
            "worst": worst, "tensors_beyond_1e-4": old}


def summary(report: dict) -> dict:
    """Over all cases: how many pass, the worst ratio of each kind, the largest scalar spread by step."""
    worst: dict[str, dict] = {}
    by_step: dict[int, float] = {}
    for case, m in report.items():
        for kind, w in m["worst"].items():
            if w["ratio"] >= worst.get(kind, {}).get("ratio", -1.0):
                worst[kind] = {"case": case, **w}
        for i, v in enumerate(m["scalar_by_step"]):
            by_step[i + 1] = max(by_step.get(i + 1, 0.0), v)
    return {"cases": len(report), "pass": sum(not m["compare"] for m in report.values()), "worst": worst,
            "scalar_by_step": by_step}


def _run(cases: list, isa: str, keep: Path | None) -> dict:
    # run_cli passes this process's environment on to every training subprocess
    os.environ.update(ISA_ENV[isa])
    report = {}
    with tempfile.TemporaryDirectory(prefix="golden-spread-") as tmp:
        data = make_data(Path(tmp) / "data")
        for case in cases:
            if case.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
                continue
            start = time.monotonic()
            result = run_case(case, data, Path(tmp) / "runs")
            if keep:
                (keep / f"{case.name}.json").write_text(dumps(result))
            report[case.name] = {"seconds": round(time.monotonic() - start, 1),
                                 **measure(json.loads(golden_path(GOLDEN_DIR, case).read_text()), result, isa)}
            done = report[case.name]
            print(f"{case.name}: {done['seconds']} s, {done['compare'] or 'passes'}", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-k", dest="patterns", action="append", default=[],
                   help="only cases whose name contains PATTERN (repeatable)")
    p.add_argument("--all", action="store_true", help="the slow cases too (default: those a plain pytest runs)")
    p.add_argument("--isa", choices=sorted(ISA_ENV), default="avx2",
                   help="the kernel level that imitates another CPU (with --from: the one the kept records ran)")
    p.add_argument("--keep", type=Path, help="write each run's record into this folder (<case>.json)")
    p.add_argument("--from", dest="source", type=Path,
                   help="measure the records kept in this folder instead of training")
    args = p.parse_args(argv)
    cases = [c for c in CASES.values() if (args.all or args.source or not c.slow)
             and (not args.patterns or any(s in c.name for s in args.patterns))]
    if args.source:
        kept = {c.name: args.source / f"{c.name}.json" for c in cases}
        report = {}
        for name, path in kept.items():
            if path.is_file():
                golden = json.loads(golden_path(GOLDEN_DIR, CASES[name]).read_text())
                report[name] = measure(golden, json.loads(path.read_text()), args.isa)
        env = {"isa": args.isa, "kept records": str(args.source)}
    else:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        report = _run(cases, args.isa, args.keep)
        env = {"isa": args.isa, **ISA_ENV[args.isa], "machine": machine()}
    print(json.dumps({"imitated_by": env, "summary": summary(report), "cases": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
