"""BigGAN's cross-replica batch norm on 2 processes (gloo, CPU): each process normalises its half
of a batch with the statistics of the whole batch, so outputs, input gradients and running
statistics equal one BatchNorm2d over the full batch; without the engine's reducer it is plain
per-process BN."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bigtrain.engine.backends.base import _differentiable_sum
from bigtrain.families.biggan.nets import Statistics

pytestmark = pytest.mark.dist

N, C = 8, 3  # full batch, channels


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N, C, 4, 4, generator=gen) * 2 + 0.5, torch.randn(N, C, 4, 4, generator=gen)


def _worker(rank: int, store: str, out: str, reducer: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        x, w = batch()
        half = slice(rank * N // 2, (rank + 1) * N // 2)
        bn = Statistics(C, 1e-5, cross_replica=True)
        bn.all_reduce = _differentiable_sum if reducer else None
        xr = x[half].clone().requires_grad_(True)
        for _ in range(2):  # two steps: the running statistics' update is checked too
            y = bn(xr)
        (y * w[half]).sum().backward()
        torch.save({"y": y.detach(), "grad": xr.grad, "mean": bn.running_mean, "var": bn.running_var}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()
    # the result is on disk: end without the interpreter's teardown, in which gloo's worker
    # threads can abort the process (SIGABRT; docs/design.md, "Process exit"), as bigtrain's ranks do
    os._exit(0)


def _run(tmp_path, reducer: bool) -> list[dict]:
    out = str(tmp_path / "out")
    mp.spawn(_worker, args=(str(tmp_path / "store"), out, reducer), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


def test_cross_replica_statistics_equal_one_batch_norm_over_the_whole_batch(tmp_path):
    ranks = _run(tmp_path, reducer=True)
    x, w = batch()
    ref = torch.nn.BatchNorm2d(C, affine=False)
    xf = x.clone().requires_grad_(True)
    for _ in range(2):
        y = ref(xf)
    (y * w).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), xf.grad, rtol=1e-4, atol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["mean"], ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["var"], ref.running_var, rtol=1e-5, atol=1e-6)


def test_without_the_reducer_each_process_uses_its_own_statistics(tmp_path):
    ranks = _run(tmp_path, reducer=False)
    x, _ = batch()
    for rank, r in enumerate(ranks):
        ref = torch.nn.BatchNorm2d(C, affine=False)
        half = x[rank * N // 2:(rank + 1) * N // 2]
        ref(half)
        torch.testing.assert_close(r["y"], ref(half), rtol=1e-5, atol=1e-5)
