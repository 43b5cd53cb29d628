"""Fault-injection trials: SIGKILL at random iterations (and once inside a checkpoint write),
resume, compare with an uninterrupted run bit for bit; 1 and 2 processes, Accelerate and
DeepSpeed ZeRO-2. Prints one JSON object: per case, trials, survived (the resumed run finished),
identical (same per-step losses and final weights as the uninterrupted run).

Three more cases, with `identical` null where there is nothing to compare with:
- `shards`: the kill trials on damaged shards (a corrupt image, a shard cut inside a sample):
  survived = every step trained once, finite losses, the skip count never going back (a
  resumed shard stream is reseeded, not replayed: docs/design.md, "Data streams");
- `nan`, `nan-fused`: a NaN in D's gradients from a random step on; survived = the run stopped
  with exit 3 and one line, and `latest` names a checkpoint with finite weights (host-read
  guard, and fused optimizers whose flags are read at the log interval).

    python bench/faults.py [--trials N] [--cases accelerate-1,accelerate-2,deepspeed-1,deepspeed-2,shards,nan,nan-fused]
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
    cfg = write_config(
        tmp / "c.yaml",
        tiny_config(
            tmp,
            data,
            model={"num_classes": 4},
            train={"total_kimg": STEPS * 0.016, "batch_size": 16},
            checkpoint={"every_kimg": 0.032, "keep_last": 2},
            augment={"policy": "translation,cutout"},
        ),
    )
    launcher = torchrun() if procs == 2 else None
    whole = harness.finish(harness.command(cfg, ["run.name=whole", *BACKENDS[backend]], launcher))
    if whole.returncode:
        raise RuntimeError(whole.stderr[-2000:])
    args = ["run.name=killed", *BACKENDS[backend]]
    points = sorted(random.Random(seed).sample(range(1, STEPS - 1), kills))
    for step in points:
        harness.run_and_kill_at_step(harness.command(cfg, args, launcher), tmp / "runs" / "killed", step)
    harness.kill_inside_checkpoint_write(
        harness.command(cfg, args, launcher, prelude=(harness.SLOW_SAVE, str(random.Random(seed).randint(1, 3))))
    )
    done = harness.finish(harness.command(cfg, args, launcher))
    survived = done.returncode == 0
    return {
        "kills_at_steps": points,
        "survived": survived,
        "identical": survived and harness.identical(tmp / "runs" / "whole", tmp / "runs" / "killed"),
    }


def shard_trial(tmp: Path, seed: int, kills: int) -> dict:
    import torch

    from tests.faults import test_shards

    cfg = test_shards._config(tmp, max_skipped_fraction=0.5)
    whole = harness.finish(harness.command(cfg, ["run.name=whole"]))
    if whole.returncode:
        raise RuntimeError(whole.stderr[-2000:])
    run = tmp / "runs" / "killed"
    points = sorted(random.Random(seed).sample(range(2, test_shards.STEPS - 2), kills))
    for step in points:
        harness.run_and_kill_at_step(harness.command(cfg, ["run.name=killed"]), run, step)
    done = harness.finish(harness.command(cfg, ["run.name=killed"]))
    steps = harness.losses(run) if done.returncode == 0 else []
    skipped = [r["data/skipped"] for r in harness.rows(run)]
    ok = (
        [r[0] for r in steps] == list(range(1, test_shards.STEPS + 1))
        and all(torch.isfinite(torch.tensor([v for _, v in r[1:]])).all() for r in steps)
        and skipped == sorted(skipped)
        and skipped[-1] > 0
    )
    return {"kills_at_steps": points, "survived": bool(ok), "identical": None}


def nan_trial(tmp: Path, seed: int, fused: bool) -> dict:
    import torch

    from tests.faults import test_nonfinite as nf

    k = random.Random(seed).randint(3, 6)
    out = nf._poisoned_train(nf._config(tmp, max_nonfinite=3), k, "always", *(nf.FUSED if fused else []))
    ckpts = tmp / "runs" / "tiny" / "checkpoints"
    finite = False
    if (ckpts / "latest").is_file():
        state = torch.load(ckpts / (ckpts / "latest").read_text().strip() / "trainer.pt", weights_only=True)
        finite = all(torch.isfinite(v).all() for p in state["players"].values() for v in p["net"].values())
    lines = [line for line in out.stderr.splitlines() if line.startswith("bigtrain: error")]
    return {"nan_from_d_step": k, "survived": out.returncode == 3 and len(lines) == 1 and finite, "identical": None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument(
        "--kills",
        type=int,
        default=3,
        help="SIGKILLs at random iterations per trial (plus one inside a checkpoint write)",
    )
    p.add_argument("--cases", default="accelerate-1,accelerate-2,deepspeed-1,deepspeed-2,shards,nan,nan-fused")
    args = p.parse_args()
    out = {"benchmark": "faults", "steps": STEPS, "kills_per_trial": args.kills + 1, "cases": {}}
    for case in args.cases.split(","):
        results = []
        for t in range(args.trials):
            with tempfile.TemporaryDirectory() as tmp:
                if case == "shards":
                    results.append(shard_trial(Path(tmp), t, args.kills))
                elif case in ("nan", "nan-fused"):
                    results.append(nan_trial(Path(tmp), t, case == "nan-fused"))
                else:
                    backend, procs = case.rsplit("-", 1)
                    results.append(trial(Path(tmp), backend, int(procs), t, args.kills))
        identical = None if results and results[0]["identical"] is None else sum(r["identical"] for r in results)
        out["cases"][case] = {
            "trials": len(results),
            "survived": sum(r["survived"] for r in results),
            "identical": identical,
            "runs": results,
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
