"""Memory per rank and step time of the same GAN under Accelerate DDP and DeepSpeed ZeRO-1/2/3.

Each mode is one torchrun launch of 2 processes (gloo) that trains a wide MLP GAN (most memory
in weights and optimizer state, little in activations) for a few iterations. Per rank it
records the resident set size (RSS) after the imports, after building the players, after
training (with freed heap memory handed back to the OS first, so it counts what is still held:
weights, gradients, optimizer state, communication buffers) and its peak; the step time is the
median over the logged intervals after the first. Prints one JSON object.

    python bench/memory.py [--modes ddp,zero1,zero2,zero3] [--width 2048] [--depth 3]
                           [--iters 8] [--batch 16] [--precision fp32]

On a CPU-only machine (as where this was written) the numbers are host RSS, not GPU memory,
and the step times are CPU times; the JSON says which device ran.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "ddp": ("accelerate", 0),
    "zero0": ("deepspeed", 0),
    "zero1": ("deepspeed", 1),
    "zero2": ("deepspeed", 2),
    "zero3": ("deepspeed", 3),
}


def rss_mib() -> float:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def trimmed_rss_mib() -> float:
    """RSS after glibc returns freed heap pages, i.e. roughly what live allocations hold."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: plain RSS
        pass
    return rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def overrides(args, mode: str, data: Path, out_dir: Path) -> list[str]:
    kind, stage = MODES[mode]
    batch = args.batch
    every = batch / 1000  # log every iteration
    return [
        f"run.name={mode}",
        f"run.out_dir={out_dir}",
        f"data.path={data}",
        "data.resolution=32",
        "model.g.arch=mlp",
        "model.d.arch=mlp",
        f"model.g.width={args.width}",
        f"model.d.width={args.width}",
        f"model.g.depth={args.depth}",
        f"model.d.depth={args.depth}",
        "model.z_dim=128",
        f"train.batch_size={batch}",
        f"train.total_kimg={args.iters * batch / 1000}",
        f"train.precision={args.precision}",
        f"backend.kind={kind}",
        f"backend.zero_stage={stage}",
        "log.progress_bar=false",
        f"log.every_kimg={every}",
        f"log.samples_every_kimg={args.iters * every * 10}",
        f"checkpoint.every_kimg={args.iters * every * 10}",
    ]


def worker(args) -> None:
    """One rank of one mode (started by torchrun)."""
    import torch
    import torch.distributed as dist

    from bigtrain.engine.loop import Trainer
    from bigtrain.families import load_config

    after_import = rss_mib()
    cfg = load_config(None, overrides(args, args.worker, Path(args.data), Path(args.out_dir)))
    trainer = Trainer(cfg)
    after_setup = rss_mib()
    # ZeRO-3 leaves empty placeholders in the module; ds_numel is the full size
    params = {
        p.name: sum(getattr(q, "ds_numel", q.numel()) for q in p.net.parameters()) for p in trainer.players.values()
    }
    trainer.train()
    mine = {
        "rss_after_import_mib": after_import,
        "rss_after_setup_mib": after_setup,
        "rss_after_train_mib": trimmed_rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
    }
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if trainer.backend.is_main:
        rows = [json.loads(l) for l in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [r["perf/img_per_s"] for r in rows if "perf/img_per_s" in r][1:]  # first interval: warm-up
        result = {key: [round(r[key], 1) for r in everyone] for key in mine}
        result["step_time_s"] = round(cfg.train.batch_size / statistics.median(rates), 4) if rates else None
        result["params"] = params
        result["device"] = str(trainer.backend.device)
        result["torch_threads"] = torch.get_num_threads()
        Path(args.result).write_text(json.dumps(result))
    trainer.backend.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, mode: str, data: Path, tmp: Path) -> dict:
    result = tmp / f"{mode}.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        __file__,
        "--worker",
        mode,
        "--data",
        str(data),
        "--out-dir",
        str(tmp / "runs"),
        "--result",
        str(result),
        "--width",
        str(args.width),
        "--depth",
        str(args.depth),
        "--iters",
        str(args.iters),
        "--batch",
        str(args.batch),
        "--precision",
        args.precision,
    ]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": os.environ.get("ACCELERATE_USE_CPU", "1"),
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        # the cause, not torchrun's closing banner: the last line that names an error
        lines = [l for l in proc.stderr.splitlines() if "Error" in l or "error:" in l]
        return {"error": lines[-1].strip() if lines else f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="ddp,zero1,zero2,zero3", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--width", type=int, default=2048, help="MLP hidden units (G and D)")
    parser.add_argument("--depth", type=int, default=3, help="MLP hidden layers (G and D)")
    parser.add_argument("--iters", type=int, default=8, help="training iterations per mode")
    parser.add_argument("--batch", type=int, default=16, help="global batch (8 per rank)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data.npz"
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.integers(0, 256, size=(256, 32, 32, 1), dtype=np.uint8))
        results = {mode: launch(args, mode, data, tmp) for mode in modes}
    first = next((r for r in results.values() if "params" in r), {})
    on_cpu = str(first.get("device", "cpu")).startswith("cpu")
    gpu = (
        "no GPU in this environment: memory is host RSS per process (glibc heap), not GPU memory; step times are CPU "
        "times"
        if on_cpu
        else "GPU run"
    )
    if first.get("params"):
        # textbook bytes per rank of weights + gradients + Adam state (+ DDP's bucket copy of the
        # gradients, + ZeRO's fp32 partition): what ZeRO should save, buckets and buffers aside
        total, n, mib = sum(first["params"].values()), 2, 2**20
        estimate = {
            "ddp": 20 * total,
            "zero0": 16 * total,
            "zero1": (8 + 12 / n) * total,
            "zero2": (4 + 16 / n) * total,
            "zero3": 20 / n * total,
        }
        for mode, r in results.items():
            if mode in estimate and args.precision == "fp32":
                r["model_states_estimate_mib"] = round(estimate[mode] / mib, 1)
    print(
        json.dumps(
            {
                "benchmark": "memory",
                "device": first.get("device"),
                "note": gpu,
                "processes": 2,
                "model": f"MLP G and D, width {args.width}, depth {args.depth}, 32x32x1, {args.precision}, Adam; batch "
                "{args.batch} ({args.batch // 2} per rank), {args.iters} iterations",
                "params": first.get("params"),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
    from bigtrain.cli import leave_process

    leave_process(0)  # a torchrun worker ends as the CLI does: no teardown racing gloo's threads
