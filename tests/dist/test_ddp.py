"""Two processes on CPU over gloo: identical parameters, accumulation equivalence, bf16/fp16."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_config, write_config, write_images_npz

pytestmark = pytest.mark.dist
WORKER = Path(__file__).with_name("worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]


# PYTHONFAULTHANDLER: a rank that aborts (SIGABRT, SIGSEGV) prints every thread's Python stack
DIST_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def run_worker(cfg: Path, out: Path, *overrides: str) -> dict:
    proc = subprocess.run([*torchrun(), str(WORKER), str(cfg), str(out), *overrides], capture_output=True, text=True, env={**os.environ, **DIST_ENV}, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture
def mlp_config(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    cfg = tiny_config(tmp_path, data, train={"total_kimg": 0.096, "batch_size": 32}, model={"num_classes": 4}, checkpoint={"every_kimg": 1.0})
    return write_config(tmp_path / "c.yaml", cfg)


def test_accumulation_equals_one_big_batch_and_ranks_agree(tmp_path, mlp_config):
    accum = run_worker(mlp_config, tmp_path / "accum.pt", "run.name=accum", "train.micro_batch=8")
    whole = run_worker(mlp_config, tmp_path / "whole.pt", "run.name=whole", "train.micro_batch=16")
    assert (accum["world_size"], accum["micro_batch"], accum["rounds"]) == (2, 8, 2)
    assert (whole["world_size"], whole["micro_batch"], whole["rounds"]) == (2, 16, 1)
    assert accum["step"] == whole["step"] == 3
    assert accum["max_rank_diff"] == 0.0 and whole["max_rank_diff"] == 0.0
    torch.testing.assert_close(accum["params"], whole["params"], rtol=1e-5, atol=1e-6)
    # training moved the weights (3 Adam steps of lr 2e-4), so the comparison is not trivially true
    assert torch.equal(accum["initial"], whole["initial"])
    assert (whole["params"] - whole["initial"]).abs().max() > 4e-4


def test_bf16_dcgan_trains_identically_on_both_ranks(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=16, classes=4)
    cfg = tiny_config(tmp_path, data, data={"resolution": 16}, train={"total_kimg": 0.064, "batch_size": 16, "precision": "bf16"},
                      model={"num_classes": 4, "g": {"arch": "dcgan", "width": 8}, "d": {"arch": "dcgan", "width": 8}})
    result = run_worker(write_config(tmp_path / "c.yaml", cfg), tmp_path / "bf16.pt")
    assert result["max_rank_diff"] == 0.0 and torch.isfinite(result["params"]).all()
    rows = [json.loads(l) for l in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(abs(r["loss/D"]) < 100 for r in rows)


def test_fp16_through_the_cli_under_torchrun(tmp_path, mlp_config):
    out = run_cli("train", str(mlp_config), "train.precision=fp16", "run.name=fp16", env=DIST_ENV, launcher=torchrun())
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "fp16"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all("fp16/G_skipped" in r and "fp16/D_skipped" in r for r in rows)
    # each rank's own peak memory (its process's resident high-water mark on a CPU): tens of MB at least
    assert all(r["perf/peak_mem_mb/rank0"] > 50 and r["perf/peak_mem_mb/rank1"] > 50 for r in rows)
    assert all(torch.isfinite(torch.tensor([r["loss/D"], r["loss/G"]])).all() for r in rows)
    ckpt = run / "checkpoints" / "step-00000003"
    assert {p.name for p in ckpt.iterdir()} == {"trainer.pt", "rank0.pt", "rank1.pt"}
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    assert set(state["players"]["D"]) == {"net", "optimizer", "scaler"}
    r0, r1 = (torch.load(ckpt / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["latent_gen"], r1["latent_gen"])  # each rank its own stream
    assert out.stdout.count("run directory") == 1  # only the main process prints


def test_ranks_agree_on_the_checkpoint_to_resume(tmp_path):
    """The newest checkpoint's rank1.pt is truncated: rank 0 could read its part, rank 1 not.
    Both must fall back to the checkpoint before and continue as the uninterrupted run did."""
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, train={"total_kimg": 0.064, "batch_size": 16}, checkpoint={"every_kimg": 0.032}))
    whole = run_cli("train", str(cfg), "run.name=whole", env=DIST_ENV, launcher=torchrun())
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = run_cli("train", str(cfg), "run.name=parts", "train.total_kimg=0.048", "checkpoint.every_kimg=0.016", env=DIST_ENV, launcher=torchrun())
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = tmp_path / "runs" / "parts" / "checkpoints"
    rank1 = ckpts / "step-00000003" / "rank1.pt"
    rank1.write_bytes(rank1.read_bytes()[:100])
    second = run_cli("train", str(cfg), "run.name=parts", env=DIST_ENV, launcher=torchrun())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "skipping checkpoint" in second.stderr and "rank1.pt" in second.stderr
    rows = [json.loads(l) for l in (tmp_path / "runs" / "parts" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    # step 3 ran again, from step-00000002, on both ranks; its first row was dropped on resume
    assert steps == [1, 2, 3, 4]
    expected = {r["step"]: (r["loss/D"], r["loss/G"]) for r in (json.loads(l) for l in (tmp_path / "runs" / "whole" / "metrics.jsonl").read_text().splitlines())}
    assert [(r["loss/D"], r["loss/G"]) for r in rows] == [expected[s] for s in steps]
