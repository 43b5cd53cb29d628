"""Distributed evaluation: 2 processes on CPU (gloo) give the same FID / IS / KID / PRDC as 1 process.

This file is also the worker that torchrun starts:
    python -m torch.distributed.run --nproc_per_node 2 tests/dist/test_eval_dist.py OUT_PREFIX
A tiny generator and a small random feature network stand in for G and Inception (the network
has no part in the synchronisation; tests/unit/test_inception.py covers it).
N = 37 samples: the two ranks get 18 and 19 samples, in 3 and 4 batches of 6.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

NUM_SAMPLES = 37
PRDC = ("precision", "recall", "density", "coverage")
BATCH = 6
Z_DIM, NUM_CLASSES = 8, 3


class TinyG(nn.Module):
    """z [N, 8] + y -> images [N, 3, 8, 8] in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(NUM_CLASSES, Z_DIM)
        self.net = nn.Sequential(nn.Linear(Z_DIM, 64), nn.ReLU(), nn.Linear(64, 3 * 8 * 8), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(z + self.embed(y)).view(-1, 3, 8, 8)


class SmallFeatures(nn.Module):
    """Random projections standing in for Inception: (pool [N, 16], logits [N, 10]). Its
    features are spread out enough that FID is well conditioned, so float32 rounding (which may
    differ with batch composition) moves FID by far less than the tolerance."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, 16)
        self.head = nn.Linear(3 * 8 * 8, 10)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from bigtrain.sampling import to_uint8

        x = to_uint8(images).float() / 127.5 - 1 if images.dtype != torch.uint8 else images.float() / 127.5 - 1
        return self.proj(x.flatten(1)), self.head(x.flatten(1)) * 5

    def protocol(self) -> dict:
        return {"network": "small-random", "resize": "none", "weights_sha256": None, "standard_weights": False}


def evaluate(rank: int, world_size: int) -> dict:
    from bigtrain.eval.evaluate import evaluate_generator
    from bigtrain.eval.ref_stats import RefStats

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights in every process
        G, features = TinyG(), SmallFeatures()
    from bigtrain.sampling import generate

    # half of the reference is G's own (other seed), half elsewhere: PRDC is neither 0 nor 1
    own = features(generate(G, z_dim=Z_DIM, num_classes=NUM_CLASSES, indices=list(range(20)), seed=99)[0])[0]
    real = np.random.default_rng(0).normal(0.3, 0.2, size=(20, 16)).astype(np.float32)
    real = np.concatenate([own.numpy(), real])
    mu, sigma = real.mean(0, dtype=np.float64), np.cov(real.astype(np.float64), rowvar=False)
    reference = RefStats("ref.npz", mu, sigma, real, {"num_images": 40})

    def images(indices):
        return generate(G, z_dim=Z_DIM, num_classes=NUM_CLASSES, indices=indices, seed=7, truncation=1.5, batch_size=BATCH)[0]

    return evaluate_generator(
        images, num_samples=NUM_SAMPLES, metrics=["fid", "is", "kid", *PRDC],
        ref_stats=reference, inception=features, seed=7, truncation=1.5, device="cpu", rank=rank,
        world_size=world_size, batch_size=BATCH,
    )  # fmt: skip


def worker(out_prefix: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"expected 2 processes, got {world}"
    result = evaluate(rank, world)
    result["world_size"] = world
    Path(f"{out_prefix}.rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_two_processes_give_the_same_metrics_as_one(tmp_path) -> None:
    repo = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), __file__, str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in (0, 1)]
    single = evaluate(0, 1)
    assert ranks[0]["world_size"] == 2
    for key in ("fid", "is", "is_std", "kid", "kid_std", *PRDC):
        assert ranks[0][key] == ranks[1][key], key  # every rank holds the synchronised result
        assert ranks[0][key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert single["fid"] > 0.1 and single["is"] > 1.01 and single["kid"] > 1e-4  # not trivially equal
    assert single["precision"] > 0 and 0 < single["recall"] < 1 and 0 < single["coverage"] < 1, single  # not trivial
    # the same protocol, but for how the evaluation ran (its processes and seconds)
    assert {k: v for k, v in ranks[0]["protocol"].items() if k != "evaluation"} == {
        k: v for k, v in single["protocol"].items() if k != "evaluation"}
    assert (ranks[0]["protocol"]["evaluation"]["processes"], single["protocol"]["evaluation"]["processes"]) == (2, 1)
    assert single["protocol"]["generated"]["num_images"] == NUM_SAMPLES
    assert single["protocol"]["kid_subset_size"] == NUM_SAMPLES


if __name__ == "__main__":
    worker(sys.argv[1])
    from bigtrain.cli import leave_process

    leave_process(0)  # as the CLI does: no interpreter teardown racing gloo's threads
