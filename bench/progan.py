"""ProGAN throughput and memory per resolution: the progan recipe held at each level
(`progan.initial_resolution` = R, no growing) for a few kimg, one process.

Reports, per resolution, training img/s (bigtrain's own `perf/img_per_s`, first interval dropped
as warm-up), peak memory (`perf/peak_mem_mb`: resident set on a CPU, the allocator's peak on a
GPU) and what one level of the paper's CelebA-HQ schedule (800 kimg of fade + 800 of
stabilisation) would take at that rate, then the implied total. Prints one JSON object.

    python bench/progan.py [--resolutions 4,8,16,32,64,128,256] [--kimg 0.5] [--fmap-base 1024] [--fmap-max 64] \
        [--batch 16] [--images 256]

The defaults are a CPU-sized net (fmap_base 1024, fmap_max 64); the paper's is fmap_base 8192,
fmap_max 512 (pass them on a GPU machine: --fmap-base 8192 --fmap-max 512 --resolutions ...,1024).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from bigtrain.engine.loop import Trainer
from bigtrain.families import load_config

PAPER_KIMG_PER_LEVEL = 800 + 800  # CelebA-HQ: fade + stabilise (the 4x4 level: 800 only)


def level(args, res: int, data: Path, out: Path) -> dict:
    over = [
        "recipe=progan",
        f"run.name=r{res}",
        f"run.out_dir={out}",
        f"data.path={data}",
        f"data.resolution={args.max_res}",
        "model.z_dim=128",
        "model.g.arch=progan",
        "model.d.arch=progan",
        f"model.g.fmap_base={args.fmap_base}",
        f"model.d.fmap_base={args.fmap_base}",
        f"model.g.fmap_max={args.fmap_max}",
        f"model.d.fmap_max={args.fmap_max}",
        "loss.type=wgan",
        "loss.gp_weight=10",
        f"progan.initial_resolution={res}",
        "progan.training_kimg=0",
        "progan.transition_kimg=0",
        f"progan.minibatch_base={args.batch}",
        "progan.reset_optimizer=false",
        f"train.batch_size={args.batch}",
        f"train.micro_batch={args.batch}",
        f"train.total_kimg={args.kimg}",
        "backend.find_unused_parameters=true",
        "log.progress_bar=false",
        f"log.every_kimg={args.kimg / 5}",
        f"log.samples_every_kimg={args.kimg * 10}",
        f"checkpoint.every_kimg={args.kimg * 10}",
        "ema.half_life_kimg=10",
    ]
    trainer = Trainer(load_config(None, over))
    trainer.train()
    trainer.backend.close()
    rows = [json.loads(line) for line in (out / f"r{res}" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["progan/resolution"] == res for r in rows), f"the run left {res}x{res}"
    rates = [r["perf/img_per_s"] for r in rows[1:] if "perf/img_per_s" in r]
    img_s = statistics.median(rates)
    kimg = PAPER_KIMG_PER_LEVEL if res > 4 else PAPER_KIMG_PER_LEVEL // 2
    return {
        "resolution": res,
        "img_per_s": round(img_s, 1),
        "peak_mem_mb": round(max(r.get("perf/peak_mem_mb/rank0", 0) for r in rows), 1),
        "paper_level_kimg": kimg,
        "paper_level_hours_at_this_rate": round(kimg * 1000 / img_s / 3600, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """This benchmark's options (bench/gpu/ parses its runs' options with it too); `max_res` added."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="4,8,16,32,64,128,256")
    parser.add_argument("--kimg", type=float, default=0.5, help="images (thousands) per level")
    parser.add_argument("--fmap-base", type=int, default=1024)
    parser.add_argument("--fmap-max", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256, help="random images in the data file")
    args = parser.parse_args(argv)
    args.resolution_list = [int(r) for r in args.resolutions.split(",")]
    args.max_res = max(args.resolution_list)
    return args


def write_data(args, path: Path) -> Path:
    """`--images` random uint8 images at the largest resolution (the recipe resizes them per level)."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, size=(args.images, args.max_res, args.max_res, 3), dtype=np.uint8))
    return path


def report(args, levels: list[dict]) -> dict:
    """The JSON object of the measured levels."""
    return {
        "bench": "progan",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "nets": f"progan fmap_base {args.fmap_base}, fmap_max {args.fmap_max}, z 128, data "
        f"{args.max_res}x{args.max_res}x3; WGAN-GP; batch {args.batch}; 1 process",
        "levels": levels,
        "paper_schedule_hours_at_these_rates": round(sum(lv["paper_level_hours_at_this_rate"] for lv in levels), 1),
        "note": "the paper trained CelebA-HQ 1024 (fmap_base 8192) in about 2 days on 8 V100s; these rates are "
        "of the net and device above",
    }


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(args, Path(tmp) / "d.npz")
        levels = [level(args, res, data, Path(tmp) / "runs") for res in args.resolution_list]
    print(json.dumps(report(args, levels), indent=1))


if __name__ == "__main__":
    main()
