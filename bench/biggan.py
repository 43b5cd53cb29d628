"""BigGAN throughput and memory: img/s and peak memory of one iteration (`train.d_steps` D steps
and one G step, each over `--rounds` accumulation rounds) of the biggan recipe, measured through
the real engine.

The run is configs/biggan_imagenet128.yaml (BigGAN-PyTorch's launch_BigGAN_bs256x8.sh recipe:
hinge loss, Adam, SN, hierarchical z, shared embedding, G_ema) with the sizes given here, trained
by bigtrain's Trainer on synthetic data (an npz of random uint8 images, 3 channels, written into a
temp folder) for a few log intervals. It reports bigtrain's own `perf/img_per_s` (median over the
intervals after the first, which is warm-up: the initial sample grid, allocator growth, compilation)
and the largest `perf/peak_mem_mb/rank0` (a CPU: the process's peak resident set, imports
included; a GPU: the allocator's peak since the start), G's and D's parameter counts and the
global batch (micro-batch x rounds x processes). Prints one JSON object.

    python bench/biggan.py [--resolution 32] [--width 16] [--micro-batch 16] [--rounds 1] [--d-steps 1]
                           [--precision fp32|bf16|fp16] [--backend accelerate|deepspeed] [--zero-stage 1]
                           [--kimg 0.64] [--intervals 8] [--classes 1000] [--z-dim Z] [--ortho-g 0]
                           [--attention auto|none|R,...] [--channels-last] [--compile]

The defaults are sized for a CPU (32 px, ch 16, micro-batch 16, 40 iterations: under a minute on
2 cores). A run that fails (a setting the engine refuses, an error inside it) still prints one
JSON object, with `error` and where it was raised, and exits 1.
BigGAN-PyTorch's ImageNet 128 run, to compare with its 8 x V100 figure (the `reference` field), is
    torchrun --nproc_per_node 8 bench/biggan.py --resolution 128 --width 96 --micro-batch 32 --rounds 8 \
        --precision fp32 --kimg 41
(its batch 256 was split by DataParallel over the 8 GPUs, 8 accumulations: 32 x 8 rounds x 8 = 2048;
configs/biggan_imagenet128.yaml takes 256 x 1 round x 8 processes instead: --micro-batch 256 --rounds 1).
Under torchrun every process writes its own copy of the synthetic data into one shared temp folder.

`--channels-last` and `--compile` are the engine's own options: `train.channels_last=true` (G's
and D's 4-d weights, G_ema's and the image batches in torch.channels_last, before the backend
wraps the nets) and `train.compile=[g,d]` (torch.compile, inductor, each net in place after the
G_ema copy). The JSON says what they did: the share of 4-d weights in channels_last after
building and after training, the layout of a conv's output during training (eager runs), which
players run compiled, and that every player's weights moved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.conftest (the synthetic data), bigtrain from this checkout

from bench.common import log_intervals, peak_mem_mb  # noqa: E402
from bigtrain.engine.loop import Trainer  # noqa: E402
from bigtrain.families import load_config  # noqa: E402
from bigtrain.families.biggan.nets import LADDERS  # noqa: E402
from bigtrain.tracking import _peak_memory_mb  # noqa: E402
from tests.conftest import write_images_npz  # noqa: E402

CONFIG = REPO / "configs" / "biggan_imagenet128.yaml"
# BigGAN-PyTorch's released ImageNet 128 run (launch_BigGAN_bs256x8.sh: ch 96, batch 256 x 8
# accumulations = 2048, fp32, 8 x V100 16 GB). Its logs/BigGAN_ch96_bs256x8.jsonl stamps each
# 2000-iteration evaluation: itr 2000 -> 138000 took 1,518,348 s, i.e. 183 img/s wall clock
# (with an IS/FID evaluation of 50k samples every 2000 iterations and any restarts); the median
# over those 2000-iteration intervals is 225 img/s; its README: "15 days to train to 150k
# iterations" (237 img/s).
REFERENCE = {
    "img_per_s": 183,
    "what": "BigGAN-PyTorch ImageNet 128 (ch 96, G 70.4 M / D 88.0 M parameters), 8 x V100 16 GB, fp32, global batch "
    "2048 = 256 x 8 accumulations, 1 D step per G step",
    "source": "github.com/ajbrock/BigGAN-PyTorch logs/BigGAN_ch96_bs256x8.jsonl: itr 2000 -> 138000 in 1,518,348 s of "
    "wall clock (its _stamp fields), evaluations every 2000 iterations included",
    "median_interval_img_per_s": 225,
    "readme": "README: 15 days to train to 150k iterations on 8 x V100 (about 237 img/s)",
    "compare_with": "--resolution 128 --width 96 --precision fp32, global batch 2048: --micro-batch 32 --rounds 8 on 8 "
    "processes (BGP's DataParallel split of 256 over 8 GPUs)",
}


def z_dim_for(res: int) -> int:
    """20 per slot of the hierarchical latent (one per G block + the input layer): 120 at 128 px,
    as BigGAN-PyTorch's dim_z 120 (6 chunks of 20)."""
    return 20 * len(LADDERS[res].g)


def overrides(args, world: int, data: Path, out: Path, iters_each: int, intervals: int) -> list[str]:
    batch = args.micro_batch * args.rounds * world
    every_kimg = iters_each * batch / 1000
    return [
        "run.name=biggan",
        f"run.out_dir={out}",
        "data.source=npz",
        f"data.path={data}",
        f"data.resolution={args.resolution}",
        "data.num_workers=0",
        f"model.num_classes={args.classes}",
        f"model.z_dim={args.z_dim}",
        f"model.g.width={args.width}",
        f"model.d.width={args.width}",
        f"model.g.attention={args.attention_list}",
        f"model.d.attention={args.attention_list}",  # null: the nets' default, 64 from 128 px up, res/2 below
        f"biggan.ortho_g={args.ortho_g}",
        f"train.batch_size={batch}",
        f"train.micro_batch={args.micro_batch}",
        f"train.d_steps={args.d_steps}",
        f"train.precision={args.precision}",
        f"train.total_kimg={every_kimg * intervals}",
        "train.resume=none",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.compile={'[g,d]' if args.compile else '[]'}",
        "train.compile_backend=inductor",
        f"backend.kind={args.backend}",
        f"backend.zero_stage={args.zero_stage}",
        "log.progress_bar=false",
        f"log.every_kimg={every_kimg}",
        f"log.samples_every_kimg={every_kimg * intervals * 10}",
        "log.grid_rows=2",
        "log.grid_cols=4",
        f"checkpoint.every_kimg={every_kimg * intervals * 10}",
        "checkpoint.keep_last=1",
        "eval.every_kimg=0",
    ]


# ---- checks of what the engine's channels_last and compile did ---------------------------------


class LayoutProbe:
    """Records whether a module's output was channels_last, during training (eager only)."""

    def __init__(self, module: torch.nn.Module):
        self.seen: set[bool] = set()
        self.handle = module.register_forward_hook(
            lambda m, i, o: self.seen.add(o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous())
        )

    def result(self):
        self.handle.remove()
        return sorted(self.seen)


def fingerprint(trainer: Trainer) -> dict[str, list[float]]:
    """One number per parameter of each player (its sum), to see that training moved them."""
    out = {}
    for name, player in trainer.players.items():
        with trainer.backend.full_parameters(player) as net:
            out[name] = [float(p.detach().float().sum()) for p in net.parameters()]
    return out


def channels_last_share(trainer: Trainer) -> dict[str, str]:
    out = {}
    for name, player in trainer.players.items():
        four_d = [p for p in player.net.parameters() if p.dim() == 4]
        out[name] = f"{sum(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)}/{len(four_d)}"
    return out


# ---- the run -----------------------------------------------------------------------------------


def summary(args, world: int) -> dict:
    attention = {"auto": "the nets' default (64 from 128 px up, res/2 below)", "none": "none"}.get(
        args.attention, args.attention
    )
    return {
        "base": "configs/biggan_imagenet128.yaml",
        "resolution": args.resolution,
        "width": args.width,
        "z_dim": args.z_dim,
        "classes": args.classes,
        "attention": attention,
        "ortho_g": args.ortho_g,
        "micro_batch": args.micro_batch,
        "rounds": args.rounds,
        "global_batch": args.micro_batch * args.rounds * world,
        "d_steps": args.d_steps,
        "precision": args.precision,
        "backend": args.backend,
        **({"zero_stage": args.zero_stage} if args.backend == "deepspeed" else {}),
        "channels_last": args.channels_last,
        "compile": args.compile,
    }


def failure(args, world: int, exc: BaseException) -> dict:
    """The JSON of a run the engine refused or that failed: the error and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in tb if f.filename.startswith(str(REPO / "bigtrain"))]
    where = lambda f: (
        f"{os.path.relpath(f.filename, REPO) if f.filename.startswith(str(REPO)) else f.filename}:{f.lineno} ({f.name})"
    )  # noqa: E731
    text = str(exc).strip()
    return {
        "bench": "biggan",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "processes": world,
        "config": summary(args, world),
        "error": f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}",
        "raised_at": where(tb[-1]) if tb else None,
        "from_bigtrain": where(ours[-1]) if ours else None,
        "measured": "nothing: the run did not get through",
    }


def run(args, world: int, tmp: Path) -> dict:
    rank = int(os.environ.get("RANK", 0))
    batch = args.micro_batch * args.rounds * world
    iters = max(math.ceil(args.kimg * 1000 / batch), args.intervals)
    iters_each = math.ceil(iters / args.intervals)
    data = write_images_npz(
        tmp / f"data-rank{rank}.npz",
        n=max(64, 2 * args.micro_batch),
        res=args.resolution,
        channels=3,
        classes=max(args.classes, 1),
        seed=0,
        layout="nhwc",
    )
    cfg = load_config(CONFIG, overrides(args, world, data, tmp / "runs", iters_each, args.intervals))
    trainer = Trainer(cfg)
    backend = trainer.backend
    params = {
        name: sum(getattr(q, "ds_numel", q.numel()) for q in p.net.parameters()) for name, p in trainer.players.items()
    }
    peak_before = _peak_memory_mb(backend.device)

    compiled_players = sorted(
        name for name, p in trainer.players.items() if getattr(p.net, "_compiled_call_impl", None) is not None
    )
    compiled = {"requested": args.compile, "compiled_players": compiled_players}
    if args.compile:
        compiled["how"] = (
            "train.compile=[g,d], train.compile_backend=inductor: the engine compiles each net in place "
            "(nn.Module.compile) after the G_ema copy; "
            "the first interval (dropped) holds the compilations"
        )
    channels_last = {"requested": args.channels_last}
    if args.channels_last:
        channels_last["how"] = (
            "train.channels_last=true: the engine converts G's and D's 4-d weights (and G_ema's) before the backend "
            "wraps them, and every image batch"
        )
    probes = {}
    if args.channels_last:
        channels_last["weights_channels_last_after_build"] = channels_last_share(trainer)
        if not args.compile:
            probes = {
                "D.blocks[0].conv1": LayoutProbe(trainer.players["D"].net.blocks[0].conv1),
                "G.out_conv": LayoutProbe(trainer.players["G"].net.out_conv),
            }
    before = fingerprint(trainer)

    trainer.train()

    after = fingerprint(trainer)
    updated = {name: f"{sum(a != b for a, b in zip(before[name], after[name]))}/{len(after[name])}" for name in after}
    if args.channels_last:
        share = channels_last["weights_channels_last_after_training"] = channels_last_share(trainer)
        held = all(v.split("/")[0] == v.split("/")[1] for v in share.values())
        if probes:
            seen = channels_last["output_channels_last_during_training"] = {k: p.result() for k, p in probes.items()}
            held = held and all(v == [True] for v in seen.values())
        else:
            channels_last["output_channels_last_during_training"] = "not probed (the nets are compiled)"
        channels_last["held"] = held
        if not held:
            channels_last["warning"] = (
                "train.channels_last was set but the weights (or activations) were not channels_last throughout: this "
                "run measured a mixed or default layout"
            )
    result = None
    if backend.is_main:
        rows, rates, img_s = log_intervals(trainer.run_dir, "raise --intervals or --kimg")
        on_gpu = backend.device.type == "cuda"
        result = {
            "bench": "biggan",
            "device": str(backend.device),
            "threads": torch.get_num_threads(),
            "processes": world,
            "config": summary(args, world),
            "params": {**params, "total": sum(params.values())},
            "global_batch": batch,
            "img_per_s": round(img_s, 2),
            "iteration_s": round(batch / img_s, 4),
            "peak_mem_mb": peak_mem_mb(rows),
            "peak_mem_mb_before_train": round(peak_before, 1),
            "memory": "CUDA allocator peak (torch.cuda.max_memory_allocated) of rank 0 since the start"
            if on_gpu
            else "peak resident set (ru_maxrss) of rank 0's whole process: Python, torch and its libraries, the data, "
            "the nets and the training; peak_mem_mb_before_train is the same after building the Trainer",
            "intervals": {
                "iterations_each": iters_each,
                "images_each": iters_each * batch,
                "img_per_s": [round(r, 2) for r in rates],
                "used": f"median of intervals 2..{len(rates)} (the first is warm-up)",
            },
            "measured": (
                f"bigtrain's Trainer.train() on {args.resolution}x{args.resolution}x3 random images: "
                f"{iters_each * args.intervals} iterations of "
                f"{args.d_steps} D step(s) + 1 G step, each over {args.rounds} round(s) of micro-batch "
                f"{args.micro_batch} on {world} process(es), "
                f"+ G_ema; {args.precision}, "
                f"{args.backend}{f' ZeRO-{args.zero_stage}' if args.backend == 'deepspeed' else ''}, "
                f"train.channels_last {str(args.channels_last).lower()}"
                f"{'' if channels_last.get('held', True) else ' (did not hold, see channels_last)'}, "
                f"compiled: {', '.join(compiled_players) or 'none'}; "
                "img/s = global images / training seconds per log interval (perf/img_per_s: sample grids and "
                "checkpoints excluded)"
            ),
            "channels_last": channels_last,
            "compile": compiled,
            "weights_updated": updated,
            "reference": REFERENCE,
        }
    backend.close()
    return result


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's options (bench/gpu/ parses its runs' options with it too)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32, choices=sorted(LADDERS))
    parser.add_argument("--width", type=int, default=16, help="channel multiple ch (BigGAN: 96)")
    parser.add_argument("--micro-batch", type=int, default=16, help="per process per accumulation round")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="accumulation rounds per step (global batch = micro-batch x rounds x processes)",
    )
    parser.add_argument(
        "--d-steps", type=int, default=1, help="D steps per G step (BigGAN-PyTorch's launch: 1, the paper: 2)"
    )
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--backend", default="accelerate", choices=("accelerate", "deepspeed"))
    parser.add_argument("--zero-stage", type=int, default=1, choices=(0, 1, 2, 3), help="deepspeed only")
    parser.add_argument(
        "--kimg",
        type=float,
        default=0.64,
        help="images (thousands) to train, rounded up to whole intervals of whole iterations",
    )
    parser.add_argument("--intervals", type=int, default=8, help="log intervals (the first is dropped as warm-up)")
    parser.add_argument(
        "--classes", type=int, default=1000, help="class-conditional on this many classes (ImageNet: 1000)"
    )
    parser.add_argument(
        "--z-dim",
        type=int,
        default=None,
        help="default: 20 per hierarchical-z chunk, one per G block + 1 (32 px: 80, 128 px: 120 as BigGAN-PyTorch)",
    )
    parser.add_argument(
        "--ortho-g",
        type=float,
        default=0.0,
        help="orthogonal regularisation of G (BigGAN-PyTorch's launch: 0, the paper: 1e-4)",
    )
    parser.add_argument(
        "--attention",
        default="auto",
        help="self-attention resolutions, comma-separated, for G and D: auto (the nets' default), none, or e.g. 16",
    )
    parser.add_argument("--channels-last", action="store_true", help="G and D in torch.channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of one run, checked and completed (z_dim, the attention list) as `run` reads them."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.intervals < 2:
        parser.error("--intervals must be at least 2 (the first is warm-up)")
    args.z_dim = args.z_dim or z_dim_for(args.resolution)
    args.attention_list = {"auto": "null", "none": "[]"}.get(args.attention) or f"[{args.attention}]"
    return args


def main() -> None:
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:  # torchrun: one folder for all ranks (the run directory is shared), each rank its own data file
        tag = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "0")
        tmp = Path(tempfile.gettempdir()) / f"bigtrain-bench-biggan-{tag}"
        tmp.mkdir(exist_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bigtrain-bench-biggan-"))
    rank, failed = int(os.environ.get("RANK", 0)), False
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON only (DeepSpeed prints as it starts)
            result = run(args, world, tmp)  # None on the other ranks
    except Exception as exc:  # one JSON object either way; the traceback goes to stderr
        traceback.print_exc()
        failed, result = True, failure(args, world, exc) if rank == 0 else None
    finally:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    if result is not None:
        print(json.dumps(result, indent=1))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
