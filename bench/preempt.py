"""Stopping on request: time from a signal to the process's exit, and checkpoint write time
against model size. Prints one JSON object.

    python bench/preempt.py [--repeats 5] [--procs 1|2] [--widths 64,256,1024,2048]

Signal to exit: `bigtrain train` on a tiny config (mlp G and D on 8x8 images, batch 16) is
started, SIGTERM is sent once it has logged step 5 (to the process; with --procs 2 to torchrun,
which forwards it), and the time until the process has exited is taken; median, min and max over
`--repeats` starts. Each stop must end with exit code 75 (1 under torchrun, which reports its own)
and a stopped.json; what it says of the checkpoint write is kept.
Checkpoint write: in this process, a Trainer of mlp G and D of each width (on the same data)
writes `save_checkpoint()` three times; median seconds, the checkpoint's size on disk and the
parameter count. The run directory is a temp folder (local disk).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.conftest (the synthetic data), bigtrain from this checkout

from bigtrain.engine.loop import Trainer  # noqa: E402
from bigtrain.families import config_from_dict  # noqa: E402
from tests.conftest import tiny_config, write_config, write_images_npz  # noqa: E402
from tests.faults import harness  # noqa: E402

ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}


def signal_to_exit(tmp: Path, repeats: int, procs: int) -> dict:
    data = write_images_npz(tmp / "d.npz", n=64, res=8, classes=4)
    cfg = write_config(
        tmp / "c.yaml",
        tiny_config(
            tmp,
            data,
            train={"total_kimg": 10000, "batch_size": 16},
            log={"every_kimg": 0.016, "samples_every_kimg": 1e6, "progress_bar": False},
            checkpoint={"every_kimg": 1e6},
        ),
    )
    launcher = None
    if procs > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(procs),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            "29533",
        ]
    times, writes, codes = [], [], []
    for i in range(repeats):
        run = tmp / "runs" / f"r{i}"
        proc = subprocess.Popen(
            harness.command(cfg, [f"run.name=r{i}"], launcher),
            cwd=REPO,
            env={**os.environ, **ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not (harness.rows(run) and harness.rows(run)[-1].get("step", 0) >= 5):
            if proc.poll() is not None:
                raise SystemExit(f"run {i} ended (exit {proc.returncode}) before step 5")
            time.sleep(0.01)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        times.append(time.monotonic() - start)
        codes.append(proc.returncode)
        record = json.loads((run / "stopped.json").read_text())
        writes.append(record["longest_checkpoint_s"])
    return {
        "repeats": repeats,
        "processes": procs,
        "exit_codes": sorted(set(codes)),
        "signal_to_exit_s": {
            "median": round(statistics.median(times), 3),
            "min": round(min(times), 3),
            "max": round(max(times), 3),
        },
        "checkpoint_write_s_median": round(statistics.median(writes), 4),
        "what": "SIGTERM after step 5 -> the iteration ends, the ranks agree, one checkpoint, stopped.json, process "
        "exit (interpreter teardown included)",
    }


def checkpoint_sizes(tmp: Path, widths: list[int]) -> list[dict]:
    data = write_images_npz(tmp / "d32.npz", n=64, res=32, channels=3, classes=4)
    out = []
    for width in widths:
        cfg = tiny_config(
            tmp,
            data,
            run={"name": f"w{width}", "out_dir": str(tmp / "ck"), "seed": 1},
            model={
                "z_dim": 64,
                "num_classes": 0,
                "g": {"arch": "mlp", "width": width},
                "d": {"arch": "mlp", "width": width},
            },
            data={"source": "npz", "path": str(data), "resolution": 32},
            checkpoint={"keep_last": 1},
        )
        trainer = Trainer(config_from_dict(cfg))
        params = sum(p.numel() for player in trainer.players.values() for p in player.net.parameters())
        seconds = []
        for step in range(3):
            trainer.counters.step = step + 1
            start = time.monotonic()
            folder = trainer.save_checkpoint()
            seconds.append(time.monotonic() - start)
        size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        trainer.release()
        trainer.backend.close()
        out.append(
            {
                "width": width,
                "params": params,
                "checkpoint_mb": round(size / 2**20, 2),
                "write_s_median": round(statistics.median(seconds), 4),
                "mb_per_s": round(size / 2**20 / statistics.median(seconds), 1),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--procs", type=int, default=1, choices=(1, 2))
    parser.add_argument("--widths", default="64,256,1024,2048", help="mlp widths of G and D for the checkpoint sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stop = signal_to_exit(tmp, args.repeats, args.procs)
        sizes = checkpoint_sizes(tmp, [int(w) for w in args.widths.split(",")])
    print(
        json.dumps(
            {
                "bench": "preempt",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "stop": stop,
                "checkpoint_write": sizes,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
