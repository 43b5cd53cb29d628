"""Benchmark of evaluation: Inception feature extraction throughput and a whole N-sample FID.

    python bench/eval.py [--num 10000] [--batches 4] [--device cpu] [--weights FILE]

Prints one JSON object. Without --weights the network has random (untrained, He-initialised)
weights: the speed is the same as with the real file, the FID value is meaningless.
- `extract`: images/s of InceptionV3 on uint8 3x32x32 batches of 50 (resize to 299 included),
  after one warm-up batch.
- `fid`: wall time of evaluate_generator with N samples from a small generator against
  2048-d reference statistics (`wall_s`); of it, the torchmetrics FID computation, whose
  2048x2048 matrix square root does not depend on N, timed alone (`compute_s`), and the rest:
  generation + features (`features_s`). With N other than 10000, `estimated_10k_wall_s`
  scales the measured feature time to 10000 samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import torch
from torch import nn

from bigtrain.eval.evaluate import Evaluator
from bigtrain.eval.inception import InceptionV3, load_inception
from bigtrain.eval.metrics import new_fid, set_fid_stats
from bigtrain.eval.ref_stats import RefStats
from bigtrain.sampling import generate


class SmallG(nn.Module):
    """z [N, 64] -> images [N, 3, 32, 32] in [-1, 1]; cheap next to Inception."""

    def __init__(self, z_dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, 256), nn.ReLU(), nn.Linear(256, 3 * 32 * 32), nn.Tanh())

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        return self.net(z).view(-1, 3, 32, 32)


def time_extraction(net: nn.Module, device: torch.device, batches: int, batch_size: int = 50) -> dict:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    net(images)  # warm-up: allocator, kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(batches):
        net(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"batch_size": batch_size, "input": "uint8 3x32x32", "batches_timed": batches, "seconds": round(seconds, 3),
            "img_per_s": round(batches * batch_size / seconds, 2)}  # fmt: skip


def time_fid(net: nn.Module, device: torch.device, num: int, batch_size: int = 50) -> dict:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 2048)) / 45
    reference = RefStats("synthetic", rng.normal(size=2048) * 0.1, a @ a.T, None, {"num_images": 50_000})
    torch.manual_seed(0)
    G = SmallG().to(device)
    evaluator = Evaluator(
        ["fid"], num_samples=num, reference=reference, inception=net, device=device, batch_size=batch_size
    )
    start = time.perf_counter()
    result = evaluator(
        lambda indices: generate(
            G, z_dim=64, num_classes=0, indices=indices, seed=0, device=device, batch_size=batch_size
        )[0]
    )
    wall = time.perf_counter() - start
    compute = time_fid_compute(reference, device)
    features_s = wall - compute
    out = {"num_samples": num, "wall_s": round(wall, 2), "features_s": round(features_s, 2),
           "compute_s": round(compute, 2), "fid": result["fid"]}  # fmt: skip
    if num != 10_000:  # the 10k figure from the measured rates, when fewer samples were timed
        out["estimated_10k_wall_s"] = round(features_s * 10_000 / num + compute, 1)
    return out


def time_fid_compute(reference: RefStats, device: torch.device) -> float:
    """Seconds of torchmetrics' FID computation alone (2048-d statistics on both sides)."""
    fid = new_fid(2048, device)
    set_fid_stats(fid, reference.mu, reference.sigma, 50_000, real=True)
    set_fid_stats(fid, reference.mu * 0.9, reference.sigma * 1.1, 10_000, real=False)
    start = time.perf_counter()
    with warnings.catch_warnings():  # both sides were set from statistics, none by `update`
        warnings.filterwarnings("ignore", message=".*called before the ``update`` method")
        fid.compute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10_000, help="samples of the timed FID")
    parser.add_argument("--batches", type=int, default=4, help="timed batches of 50 for the throughput")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", default=None, help="Inception weights file (default: random weights)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.weights:
        net = load_inception(args.weights, device=device)
    else:
        torch.manual_seed(0)
        net = InceptionV3().to(device)
    report = {
        "benchmark": "bigtrain eval",
        "weights": args.weights or "random (untrained InceptionV3, He init)",
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "extract": time_extraction(net, device, args.batches),
        "fid": time_fid(net, device, args.num),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
