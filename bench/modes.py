"""Mode coverage on the 25-Gaussian grid (VEEGAN / PacGAN): GAN, PacGAN2/4, GMAN and MAD-GAN.

    python bench/modes.py [--cpu] [--kimg K] [--seeds N] [--variants gan,pacgan4,...] [OVERRIDE ...]

Each variant trains one process from its config in configs/ (the grid nets and optimizer of
PacGAN's experiment; see configs/gan_grid25.yaml) for --kimg thousand D inputs, then 2,500
samples are graded as PacGAN's code does (bigtrain.eval.modes): modes holding a high-quality
sample (within 3 std of its centre), the share of high-quality samples, and the KL divergence
of their mode histogram to uniform. MAD-GAN also reports how different its heads are (mean
pairwise total variation of the heads' nearest-mode histograms, 500 samples each: ~0.12 for
identical heads, 1 for disjoint ones). Prints one JSON object. PacGAN's table (400 epochs, 10
runs): GAN 17.3 modes / 94.8 %, PacGAN4 24.8 / 93.6 %.

--cpu runs the CPU-sized configs instead, by default for their own lengths (see their comments:
at the reference sizes a run of minutes learns nothing): configs/pacgan_grid25_cpu.yaml
(20,000 steps) for GAN, PacGAN2 and PacGAN4, which differ only in the pack; the same nets,
optimizer and schedule under the gman recipe (3 discriminators, soft mean; the recipe takes no
R1 penalty, so GMAN trains without it); configs/madgan_grid25_cpu.yaml (3,000 steps). About
20 minutes for all five on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "gan": ("configs/gan_grid25.yaml", []),
    "pacgan2": ("configs/gan_grid25.yaml", ["model.d.pack=2", "train.batch_size=200"]),
    "pacgan4": ("configs/gan_grid25.yaml", ["model.d.pack=4", "train.batch_size=400"]),
    "gman": ("configs/gman_grid25.yaml", []),
    "madgan": ("configs/madgan_grid25.yaml", []),
}
_CPU_PACGAN = "configs/pacgan_grid25_cpu.yaml"
# GMAN on the CPU config's nets, optimizer and schedule: its recipe takes neither a pack nor R1,
# and its discriminators are the players D1..D3, each with its own lr curve
_GMAN_CPU = [
    "recipe=gman",
    "gman.discriminators=3",
    "gman.combiner=soft_mean",
    "gman.softmax_lambda=1.0",
    "model.d.pack=1",
    "train.batch_size=200",
    "loss.r1_gamma=0",
    *(f"schedule.lr.d{k}.shape=linear" for k in (1, 2, 3)),
]
CPU_VARIANTS = {
    # as PacGAN's experiment, D sees as many inputs a step whatever the pack: 200 in the CPU config
    "gan": (_CPU_PACGAN, ["model.d.pack=1", "train.batch_size=200"]),
    "pacgan2": (_CPU_PACGAN, ["model.d.pack=2", "train.batch_size=400"]),
    "pacgan4": (_CPU_PACGAN, []),
    "gman": (_CPU_PACGAN, _GMAN_CPU),
    "madgan": ("configs/madgan_grid25_cpu.yaml", []),
}
HEAD_SAMPLES = 500


def head_tv(recipe, nets, seed: int) -> float:
    """Mean pairwise total variation between the heads' nearest-mode histograms (MAD-GAN)."""
    import itertools

    import numpy as np

    from bigtrain.data.toy import GRID25_MODES

    hists = []
    for head in range(recipe.K):
        x, _ = recipe.generate(nets, range(HEAD_SAMPLES), seed=seed, head=head)
        nearest = ((x.double().numpy()[:, None, :] - GRID25_MODES[None]) ** 2).sum(-1).argmin(1)
        hists.append(np.bincount(nearest, minlength=len(GRID25_MODES)) / len(x))
    return float(np.mean([0.5 * np.abs(p - q).sum() for p, q in itertools.combinations(hists, 2)]))


def run_variant(
    name: str, kimg: float | None, seed: int, data: Path, out_dir: Path, extra: list[str], variants: dict = VARIANTS
) -> dict:
    from bigtrain.data.toy import GRID25_MODES, GRID25_STD
    from bigtrain.engine.loop import Trainer
    from bigtrain.eval.modes import mode_coverage
    from bigtrain.families import load_config

    config, overrides = variants[name]
    # kimg counts D inputs, 100 per step whatever the pack m (the batch is 100 m samples), so
    # PacGAN-m trains as many steps as GAN; None: the config's own number of steps
    base = load_config(REPO / config).train
    batch = load_config(REPO / config, [*overrides, *extra]).train.batch_size
    total_kimg = kimg * batch / 100 if kimg is not None else base.total_kimg * batch / base.batch_size
    cfg = load_config(
        REPO / config,
        [
            *overrides,
            f"train.total_kimg={total_kimg}",
            f"data.path={data}",
            f"run.out_dir={out_dir}",
            f"run.name={name}-{seed}",
            f"run.seed={seed}",
            "log.progress_bar=false",
            "checkpoint.every_kimg=1e9",
            *extra,
        ],
    )
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    nets = {n: trainer.players[n].net for n in trainer.recipe.sampled}
    x, _ = trainer.recipe.generate(nets, range(2500), seed=seed + 1000)
    tv = head_tv(trainer.recipe, nets, seed + 2000) if name == "madgan" else None
    trainer.backend.close()
    result = mode_coverage(x.numpy(), GRID25_MODES, GRID25_STD)
    out = {
        "modes": result["modes"],
        "high_quality": result["high_quality"],
        "kl": result["kl"],
        "train_s": round(seconds, 1),
        "steps": trainer.counters.step,
        "total_kimg": total_kimg,
    }
    return out if tv is None else {**out, "head_tv": tv}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cpu",
        action="store_true",
        help="the CPU-sized configs (configs/*_grid25_cpu.yaml), each for its own length by default",
    )
    p.add_argument(
        "--kimg",
        type=float,
        default=None,
        help="thousands of D inputs per variant (default 200; --cpu: the configs' own; PacGAN: 40000)",
    )
    p.add_argument("--seeds", type=int, default=1, help="runs per variant (PacGAN: 10)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("overrides", nargs="*", help="key=value applied to every variant (e.g. optim.g.lr=0.001)")
    args = p.parse_args()
    from bigtrain.data.toy import write_grid25_npz

    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    variants = CPU_VARIANTS if args.cpu else VARIANTS
    kimg = args.kimg if args.kimg is not None or args.cpu else 200.0
    unknown = [n for n in args.variants.split(",") if n not in variants]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(variants)}")
    out = {
        "preset": "cpu" if args.cpu else "reference",
        "kimg": kimg,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = write_grid25_npz(Path(tmp) / "grid25.npz", 100_000, seed=0)
        for name in args.variants.split(","):
            runs = [
                run_variant(name, kimg, s, data, Path(tmp) / "runs", args.overrides, variants)
                for s in range(args.seeds)
            ]
            out["variants"][name] = {
                "modes_mean": statistics.mean(r["modes"] for r in runs),
                "high_quality_mean": statistics.mean(r["high_quality"] for r in runs),
                "kl_mean": statistics.mean(r["kl"] for r in runs),
                **({"head_tv_mean": statistics.mean(r["head_tv"] for r in runs)} if name == "madgan" else {}),
                "runs": runs,
            }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
