"""Image-to-image throughput and memory: img/s and peak memory per iteration of the cyclegan and
pix2pix recipes at 256 px, measured through the real engine (bigtrain's Trainer).

Each run is its reference config (configs/cyclegan_horse2zebra.yaml: ResNet-9 G pair, two 70x70
PatchGANs, LSGAN + cycle + identity, pool 50; configs/pix2pix_facades.yaml: U-Net-256 G, the
conditional PatchGAN, BCE + L1) with `--width` as ngf = ndf, on random uint8 images written to a
temp folder (unpaired A and B at 286 px; side-by-side A|B pairs at 286 x 572), loaded at 286 and
randomly cropped to 256 as the reference does. One iteration is the G phase (both generators for
CycleGAN) then the D phase (both discriminators). It reports bigtrain's own `perf/img_per_s`
(median over the log intervals after the first, which is warm-up) and the largest
`perf/peak_mem_mb/rank0` (a CPU: the peak resident set of the whole process; a GPU: the CUDA
allocator's peak), the parameter counts and the batch. Prints one JSON object.

    python bench/img2img.py [--recipes cyclegan,pix2pix] [--width 8] [--batch 1] [--resolution 256]
                            [--iters 12] [--intervals 4] [--precision fp32|bf16|fp16] [--backend accelerate|deepspeed]
    torchrun --nproc_per_node 2 bench/img2img.py ...   # --batch is global: batch / processes per rank

The defaults are sized for a CPU (width 8 instead of the reference's 64: a ResNet-9 G of 180,419
parameters instead of 11,378,179). The reference trains both with batch 1 (`--batch_size 1`, one
GPU); `--batch` and processes here change the recipe (instance norm is per image, so CycleGAN's
per-image result is unchanged by batching, but Adam's step sees a mean over the batch).
Where a GPU is present, `--width 64` is the reference's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bigtrain from this checkout

from bench.common import log_intervals, peak_mem_mb  # noqa: E402
from bigtrain.engine.loop import Trainer  # noqa: E402
from bigtrain.families import load_config  # noqa: E402

CONFIGS = {
    "cyclegan": REPO / "configs" / "cyclegan_horse2zebra.yaml",
    "pix2pix": REPO / "configs" / "pix2pix_facades.yaml",
}
LOAD = 286  # the reference's load size (then a random 256 crop); scaled with --resolution


def write_data(folder: Path, load: int, rank: int) -> dict[str, Path]:
    """Random images: A and B (unpaired, N x load x load x 3) and pairs (N x load x 2 load x 3)."""
    rng = np.random.default_rng(rank)
    out = {}
    for name, width in (("A", load), ("B", load), ("pairs", 2 * load)):
        out[name] = folder / f"{name}-rank{rank}.npz"
        np.savez(out[name], x=rng.integers(0, 256, size=(16, load, width, 3), dtype=np.uint8))
    return out


def overrides(args, recipe: str, data: dict[str, Path], out: Path, world: int) -> list[str]:
    load = round(args.resolution * LOAD / 256)
    every_kimg = args.batch * args.iters / args.intervals / 1000
    over = [
        f"run.name={recipe}",
        f"run.out_dir={out}",
        "data.source=npz",
        f"data.resolution={args.resolution}",
        f"data.load_size={load}",
        "data.num_workers=0",
        f"model.g.width={args.width}",
        f"model.d.width={args.width}",
        f"train.batch_size={args.batch}",
        f"train.micro_batch={args.batch // world}",
        f"train.total_kimg={every_kimg * args.intervals}",
        f"train.precision={args.precision}",
        "train.resume=none",
        f"backend.kind={args.backend}",
        "log.progress_bar=false",
        f"log.every_kimg={every_kimg}",
        f"log.samples_every_kimg={every_kimg * args.intervals * 10}",
        f"checkpoint.every_kimg={every_kimg * args.intervals * 10}",
        "eval.every_kimg=0",
    ]
    if recipe == "cyclegan":
        over += [f"data.streams.A.path={data['A']}", f"data.streams.B.path={data['B']}"]
    else:
        over += [f"data.path={data['pairs']}"]
    if args.resolution != 256 and recipe == "pix2pix":
        over.append(
            f"model.g.downs={int(np.log2(args.resolution))}"
        )  # U-Net-256 has 8 downsamplings: one per halving to 1 x 1
    return over


def bench(args, recipe: str, tmp: Path, world: int) -> dict | None:
    data = write_data(tmp, round(args.resolution * LOAD / 256), int(os.environ.get("RANK", 0)))
    trainer = Trainer(load_config(CONFIGS[recipe], overrides(args, recipe, data, tmp / "runs", world)))
    params = {}
    for name, player in trainer.players.items():
        parts = dict(player.net.named_children()) if name == "G" and recipe == "cyclegan" else {name: player.net}
        params.update(
            {part: sum(getattr(q, "ds_numel", q.numel()) for q in net.parameters()) for part, net in parts.items()}
        )
    trainer.train()
    backend = trainer.backend
    result = None
    if backend.is_main:
        rows, rates, img_s = log_intervals(trainer.run_dir, f"{recipe}: raise --iters or --intervals")
        result = {
            "recipe": recipe,
            "config": str(CONFIGS[recipe].relative_to(REPO)),
            "params": params,
            "img_per_s": round(img_s, 3),
            "iteration_s": round(args.batch / img_s, 4),
            "peak_mem_mb": peak_mem_mb(rows),
            "intervals_img_per_s": [round(r, 3) for r in rates],
        }
    backend.close()
    return result


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's options (bench/gpu/ parses its runs' options with it too)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="cyclegan,pix2pix")
    parser.add_argument("--width", type=int, default=8, help="ngf = ndf (the reference: 64)")
    parser.add_argument("--batch", type=int, default=1, help="global batch (the reference: 1)")
    parser.add_argument(
        "--resolution", type=int, default=256, help="crop size (loaded at 286/256 of it, as the reference)"
    )
    parser.add_argument("--iters", type=int, default=12, help="iterations in all, split into --intervals log intervals")
    parser.add_argument("--intervals", type=int, default=4, help="log intervals (the first is dropped as warm-up)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--backend", default="accelerate", choices=("accelerate", "deepspeed"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", 1))
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(CONFIGS))
    if unknown:
        parser.error(f"--recipes: unknown {unknown}; choose from {sorted(CONFIGS)}")
    if args.intervals < 2 or args.iters % args.intervals:
        parser.error("--intervals must be >= 2 (the first is warm-up) and divide --iters")
    if args.batch % world:
        parser.error(f"--batch {args.batch} must be a multiple of the {world} processes")
    if len(recipes) > 1:  # one process per recipe: a CPU's peak RSS never goes down within a process
        if world > 1:
            parser.error("under torchrun give one recipe (--recipes cyclegan or --recipes pix2pix)")
        results = []
        argv = [
            f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items() if key != "recipes"
        ]  # this run's options
        for r in recipes:
            out = subprocess.run([sys.executable, __file__, *argv, "--recipes", r], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{r}: exited with {out.returncode}:\n{out.stderr[-3000:]}")
            results += json.loads(out.stdout)["runs"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = [bench(args, recipes[0], Path(tmp), world)]
    if int(os.environ.get("RANK", 0)) == 0:
        print(
            json.dumps(
                {
                    "bench": "img2img",
                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "threads": torch.get_num_threads(),
                    "processes": world,
                    "resolution": args.resolution,
                    "width": args.width,
                    "batch": args.batch,
                    "precision": args.precision,
                    "backend": args.backend,
                    "runs": results,
                    "measured": (
                        f"bigtrain's Trainer.train() on random {args.resolution}px crops (loaded at "
                        f"{round(args.resolution * LOAD / 256)} px), "
                        f"{args.iters} iterations (G phase + D phase) in {args.intervals} log intervals, the first "
                        "dropped; "
                        "img/s = images / training seconds per interval (perf/img_per_s); memory: peak RSS of rank 0's "
                        "process (one per recipe) on a CPU, CUDA allocator peak on a GPU"
                    ),
                    "reference": "junyanz/pytorch-CycleGAN-and-pix2pix trains both with --batch_size 1 on one GPU (ngf "
                    "= ndf = 64)",
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
