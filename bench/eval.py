"""Benchmark of evaluation: Inception feature extraction throughput, a whole N-sample FID, PRDC.

    python bench/eval.py [--num 10000] [--batches 4] [--device cpu] [--weights FILE]
                         [--parts extract,fid,prdc] [--prdc 10000,50000] [--prdc-reference]

Prints one JSON object. Without --weights the network has random (untrained, He-initialised)
weights: the speed is the same as with the real file, the FID value is meaningless.
- `extract`: images/s of InceptionV3 on uint8 3x32x32 batches of 50 (resize to 299 included),
  after one warm-up batch.
- `fid`: wall time of evaluate_generator with N samples from a small generator against
  2048-d reference statistics (`wall_s`); of it, the torchmetrics FID computation, whose
  2048x2048 matrix square root does not depend on N, timed alone (`compute_s`), and the rest:
  generation + features (`features_s`). With N other than 10000, `estimated_10k_wall_s`
  scales the measured feature time to 10000 samples.
- `prdc`: precision, recall, density and coverage of N fake against N real 2048-d features
  (synthetic, Inception-like: non-negative), for each N of --prdc: seconds and peak memory of
  bigtrain.eval.prdc (float64 blocks on --device) and, with --prdc-reference, of the `prdc`
  package (Naeem et al.; numpy + scikit-learn, CPU, N x N float32 matrices) on the same features
  in the same run, each in its own process. Both with k = 5 for all four (prdc takes one k), and
  the largest difference of their four values. Peak memory: the process's peak resident set
  above what it held once the features were made (CPU), or torch's peak allocation (CUDA).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigtrain.eval.evaluate import Evaluator
from bigtrain.eval.inception import InceptionV3, load_inception
from bigtrain.eval.metrics import new_fid, set_fid_stats
from bigtrain.eval.prdc import compute_prdc
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


PRDC_K = 5  # one k for all four, as the prdc package takes


def prdc_features(n: int, dim: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """N real and N fake float32 features, non-negative like Inception's pool features, overlapping."""
    rng = np.random.default_rng(n)
    real = np.abs(rng.normal(size=(n, dim))).astype(np.float32)
    fake = np.abs(rng.normal(loc=0.1, size=(n, dim))).astype(np.float32)
    return real, fake


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _prdc_child(impl: str, n: int, device: str, queue) -> None:
    """One measurement in a fresh process, so that peaks of one do not hide the other's."""
    real, fake = prdc_features(n)
    cuda = device.startswith("cuda")
    if impl == "bigtrain":
        real_t, fake_t = torch.from_numpy(real).to(device), torch.from_numpy(fake).to(device)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM) to now
    base = _status_mb("VmRSS")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device) / 2**20
    start = time.perf_counter()
    if impl == "bigtrain":
        values = compute_prdc(real_t, fake_t, pr_k=PRDC_K, dc_k=PRDC_K)
        if cuda:
            torch.cuda.synchronize(device)
    else:
        import contextlib
        import io

        from prdc import compute_prdc as reference

        with contextlib.redirect_stdout(io.StringIO()):  # it prints the sample counts
            values = {k: float(v) for k, v in reference(real, fake, PRDC_K).items()}
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 - base_cuda if cuda else _status_mb("VmHWM") - base
    queue.put({"seconds": round(seconds, 2), "peak_mem_mb": round(peak, 1),
               "memory": "cuda allocated" if cuda else "resident set", "values": values})  # fmt: skip


def time_prdc(sizes: list[int], device: str, reference: bool) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n in sizes:
        row: dict = {"n_real": n, "n_fake": n, "dim": 2048, "k": PRDC_K}
        for impl in ("bigtrain", "prdc") if reference else ("bigtrain",):
            queue = ctx.Queue()
            proc = ctx.Process(target=_prdc_child, args=(impl, n, device if impl == "bigtrain" else "cpu", queue))
            proc.start()
            row[impl] = queue.get()
            proc.join()
        if reference:
            ours, theirs = row["bigtrain"]["values"], row["prdc"]["values"]
            row["max_abs_difference"] = max(abs(ours[k] - theirs[k]) for k in ours)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10_000, help="samples of the timed FID")
    parser.add_argument("--batches", type=int, default=4, help="timed batches of 50 for the throughput")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", default=None, help="Inception weights file (default: random weights)")
    parser.add_argument("--parts", default="extract,fid,prdc", help="which measurements: extract, fid, prdc")
    parser.add_argument("--prdc", default="10000,50000", help="PRDC sizes N (N real vs N fake features)")
    parser.add_argument("--prdc-reference", action="store_true", help="also time the prdc package (pip install prdc)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    device = torch.device(args.device)
    if args.weights:
        net = load_inception(args.weights, device=device)
    elif parts & {"extract", "fid"}:
        torch.manual_seed(0)
        net = InceptionV3().to(device)
    report = {
        "benchmark": "bigtrain eval",
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if parts & {"extract", "fid"}:
        report["weights"] = args.weights or "random (untrained InceptionV3, He init)"
    if "extract" in parts:
        report["extract"] = time_extraction(net, device, args.batches)
    if "fid" in parts:
        report["fid"] = time_fid(net, device, args.num)
    if "prdc" in parts:
        report["prdc"] = time_prdc([int(n) for n in args.prdc.split(",")], str(device), args.prdc_reference)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
