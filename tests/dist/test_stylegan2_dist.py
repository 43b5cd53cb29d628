"""StyleGAN2-ADA on two processes (torchrun, gloo, CPU) in bf16, under Accelerate (DDP) and
DeepSpeed ZeRO-2 (issue 25): the ranks stay identical (weights, buffers such as w_avg, ADA's p and
the path-length mean), and a run stopped at a checkpoint and resumed reproduces the uninterrupted
run bit for bit (per-step losses, p, pl_mean, final weights)."""

import pytest
import torch
import yaml

from tests.conftest import run_cli, write_config
from tests.dist.test_ddp import DIST_ENV, run_worker, torchrun
from tests.dist.test_recipes_dist import _weights
from tests.smoke.test_recipes_cli import _records
from tests.unit.test_stylegan2_recipe import _cfg

pytestmark = [pytest.mark.dist, pytest.mark.timeout(1200)]

BACKENDS = {"accelerate": [], "deepspeed": ["backend.kind=deepspeed", "backend.zero_stage=2"]}
ENV = {**DIST_ENV, "DS_ACCELERATOR": "cpu"}
CASES = ["accelerate", pytest.param("deepspeed", marks=pytest.mark.slow)]


def _config(tmp_path, name: str, iters: int = 8) -> dict:
    cfg = _cfg(tmp_path, name, iters=iters, augment_p=0.2, style_mixing=0.9)
    # batch 16 = micro 4 x 2 rounds x 2 ranks; the path length on 2 of each round's 4
    cfg["train"].update(batch_size=16, micro_batch=4, precision="bf16", total_kimg=iters * 16 / 1000)
    cfg["log"]["every_kimg"], cfg["checkpoint"]["every_kimg"] = 0.016, 0.064
    return cfg


@pytest.mark.parametrize("backend", CASES)
def test_the_ranks_stay_identical(tmp_path, backend):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(tmp_path, "ranks")))
    result = run_worker(tmp_path / "c.yaml", tmp_path / "out.pt", *BACKENDS[backend])
    assert result["world_size"] == 2 and result["rounds"] == 2 and result["step"] == 8
    assert result["max_rank_diff"] == 0.0 and result["max_state_diff"] == 0.0
    assert (result["params"] - result["initial"]).abs().max() > 1e-3  # it trained


@pytest.mark.parametrize("backend", CASES)
def test_a_resume_reproduces_the_uninterrupted_run(tmp_path, backend):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    path = write_config(tmp_path / "c.yaml", _config(tmp_path, "sg"))

    def train(*overrides):
        out = run_cli("train", str(path), *overrides, *BACKENDS[backend], env=ENV, launcher=torchrun(), timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]

    train("run.name=whole")
    train("run.name=parts", "train.total_kimg=0.064")
    train("run.name=parts")
    expected, got = _records(tmp_path / "runs" / "whole"), _records(tmp_path / "runs" / "parts")
    assert [r["step"] for r in expected] == list(range(1, 9)) and got == expected
    assert any("loss/G_pl" in r for r in expected) and any("loss/D_r1" in r for r in expected)
    w, p = (_weights(tmp_path / "runs" / run / "checkpoints" / "step-00000008") for run in ("whole", "parts"))
    for player in ("G", "D"):
        assert all(torch.equal(v, p["players"][player]["net"][k]) for k, v in w["players"][player]["net"].items()), player
    assert torch.equal(w["recipe"]["p"], p["recipe"]["p"]) and torch.equal(w["recipe"]["pl_mean"], p["recipe"]["pl_mean"])
    assert float(w["recipe"]["p"]) != 0.2 and float(w["recipe"]["pl_mean"]) > 0  # both moved
