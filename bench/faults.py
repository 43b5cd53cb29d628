"""Fault-injection trials: SIGKILL at random iterations (and once inside a checkpoint write),
resume, compare with an uninterrupted run bit for bit; 1 and 2 processes, Accelerate and
DeepSpeed ZeRO-2. Prints one JSON object: per case, trials, survived (the resumed run finished),
identical (same per-step losses and final weights as the uninterrupted run).

    python bench/faults.py [--trials N] [--cases accelerate-1,accelerate-2,deepspeed-1,deepspeed-2]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import tiny_config, write_config, write_images_npz  # noqa: E402
from tests.dist.test_ddp import torchrun  # noqa: E402
from tests.faults import harness  # noqa: E402

STEPS = 20
BACKENDS = {"accelerate": [], "deepspeed": ["backend.kind=deepspeed", "backend.zero_stage=2"]}


def trial(tmp: Path, backend: str, procs: int, seed: int, kills: int) -> dict:
    data = write_images_npz(tmp / "d.npz", n=64, res=8, classes=4)
    cfg = write_config(tmp / "c.yaml", tiny_config(tmp, data, model={"num_classes": 4}, train={"total_kimg": STEPS * 0.016, "batch_size": 16},
                                                   checkpoint={"every_kimg": 0.032, "keep_last": 2}, augment={"policy": "translation,cutout"}))
    launcher = torchrun() if procs == 2 else None
    whole = harness.finish(harness.command(cfg, ["run.name=whole", *BACKENDS[backend]], launcher))
    if whole.returncode:
        raise RuntimeError(whole.stderr[-2000:])
    args = ["run.name=killed", *BACKENDS[backend]]
    points = sorted(random.Random(seed).sample(range(1, STEPS - 1), kills))
    for step in points:
        harness.run_and_kill_at_step(harness.command(cfg, args, launcher), tmp / "runs" / "killed", step)
    harness.kill_inside_checkpoint_write(harness.command(cfg, args, launcher, prelude=(harness.SLOW_SAVE, str(random.Random(seed).randint(1, 3)))))
    done = harness.finish(harness.command(cfg, args, launcher))
    survived = done.returncode == 0
    return {"kills_at_steps": points, "survived": survived, "identical": survived and harness.identical(tmp / "runs" / "whole", tmp / "runs" / "killed")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs at random iterations per trial (plus one inside a checkpoint write)")
    p.add_argument("--cases", default="accelerate-1,accelerate-2,deepspeed-1,deepspeed-2")
    args = p.parse_args()
    out = {"benchmark": "faults", "steps": STEPS, "kills_per_trial": args.kills + 1, "cases": {}}
    for case in args.cases.split(","):
        backend, procs = case.rsplit("-", 1)
        results = []
        for t in range(args.trials):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(trial(Path(tmp), backend, int(procs), t, args.kills))
        out["cases"][case] = {"trials": len(results), "survived": sum(r["survived"] for r in results), "identical": sum(r["identical"] for r in results), "runs": results}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
