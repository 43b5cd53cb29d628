"""Record the golden outputs of the installed code: tests/golden/data/<case>.json per case.

    python -m tests.golden.record                  # every case
    python -m tests.golden.record -k acc1 -k shards   # cases whose name contains any PATTERN
    python -m tests.golden.record --check          # rerun and compare instead of writing

Writing over a recording first measures how far the new run's per-step scalars are from the
old ones and refuses (exit 1, the file kept) beyond harness.RTOL, unless --force: re-recording
on another machine moves only the last bits; a real change of the numbers must be forced, and
explained in its commit.

Run it from the repository root; the CLI runs with that folder as cwd, so it trains with the
bigtrain found there. Record only on code whose behaviour is the reference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO
from tests.golden.cases import CASES, make_data
from tests.golden.harness import RTOL, compare, dumps, golden_path, metric_deviation, run_case

GOLDEN_DIR = Path(__file__).with_name("data")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-k", dest="patterns", action="append", default=[], help="only cases whose name contains PATTERN (repeatable)")
    p.add_argument("--check", action="store_true", help="compare with the recorded files instead of writing them")
    p.add_argument("--force", action="store_true", help=f"write even where the per-step scalars move by more than rtol {RTOL}")
    p.add_argument("--out", type=Path, default=GOLDEN_DIR, help=f"folder of the JSON files (default {GOLDEN_DIR})")
    args = p.parse_args(argv)
    cases = [c for c in CASES.values() if not args.patterns or any(s in c.name for s in args.patterns)]
    where = subprocess.run([sys.executable, "-c", "import bigtrain; print(bigtrain.__file__)"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    print(f"{len(cases)} cases, bigtrain from {where}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        data = make_data(Path(tmp) / "data")
        for case in cases:
            start = time.monotonic()
            result = run_case(case, data, Path(tmp) / "runs")
            path = golden_path(args.out, case)
            if args.check:
                diffs = compare(json.loads(path.read_text()), result)
                failed += bool(diffs)
                status = "DIFFERS: " + "; ".join(diffs) if diffs else "identical"
            else:
                moved = metric_deviation(json.loads(path.read_text()), result) if path.is_file() else None
                if moved is not None and moved > RTOL and not args.force:
                    failed += 1
                    status = f"REFUSED: the per-step scalars moved by {moved:.3g} (relative) from {path.name}; --force to write"
                else:
                    path.write_text(dumps(result))
                    status = f"wrote {path.name}" + ("" if moved is None else f" (per-step scalars moved by at most {moved:.3g}, relative)")
            print(f"{case.name:45s} {time.monotonic() - start:6.1f} s  {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
