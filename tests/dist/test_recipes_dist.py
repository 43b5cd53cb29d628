"""GMAN, MAD-GAN and BigGAN (bf16, cross-replica BN in G) on two processes through the CLI under torchrun, Accelerate (DDP) and
DeepSpeed ZeRO-2: a run stopped at its checkpoint and resumed reproduces the uninterrupted run
bit for bit (every player's per-step losses, final weights of every player and EMA copy), and
both ranks hold the same weights."""
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_config, write_config, write_images_npz
from tests.dist.test_ddp import DIST_ENV, torchrun
from tests.smoke.test_recipes_cli import _records

pytestmark = [pytest.mark.dist, pytest.mark.timeout(1200)]

MLP = {"z_dim": 8, "num_classes": 0, "g": {"arch": "mlp", "width": 16}, "d": {"arch": "mlp", "width": 16}}
RECIPES = {
    "gman": {"recipe": "gman", "gman": {"discriminators": 3, "combiner": "soft_mean", "softmax_lambda": 2.0}},
    "madgan": {"recipe": "madgan", "madgan": {"generators": 3}},
    "biggan": {"recipe": "biggan", "loss": {"type": "hinge"}, "biggan": {"ortho_g": 1e-4}, "ema": {"decay": 0.999},
               "model": {"z_dim": 16, "num_classes": 4, "g": {"arch": "biggan", "width": 4, "shared_dim": 8, "cross_replica": True}, "d": {"arch": "biggan", "width": 8}}},
}
BACKENDS = {"accelerate": [], "deepspeed": ["backend.kind=deepspeed", "backend.zero_stage=2"]}
ENV = {**DIST_ENV, "DS_ACCELERATOR": "cpu"}
# the default run keeps one (a recipe of 4 players under DeepSpeed ZeRO-2; the default golden cases
# resume madgan and biggan on one process, tests/dist/test_biggan_dist.py runs cross-replica BN on two);
# the rest run with `pytest -m slow` (the default run's 15-minute budget)
SLOW = pytest.mark.slow
CASES = [("gman", "deepspeed"), pytest.param("madgan", "accelerate", marks=SLOW), pytest.param("biggan", "accelerate", marks=SLOW), pytest.param("biggan", "deepspeed", marks=pytest.mark.slow),
         pytest.param("gman", "accelerate", marks=pytest.mark.slow), pytest.param("madgan", "deepspeed", marks=pytest.mark.slow)]


def _train(cfg: Path, *overrides: str) -> None:
    out = run_cli("train", str(cfg), *overrides, env=ENV, launcher=torchrun(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def _weights(folder: Path) -> dict:
    """trainer.pt of checkpoint `folder` with every player's weights: DeepSpeed's engine files
    joined by `bigtrain export` first."""
    state = torch.load(folder / "trainer.pt", weights_only=True)
    if all("net" in player for player in state["players"].values()):
        return state
    out = run_cli("export", "--checkpoint", str(folder), env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return torch.load(folder.parent.parent / "export" / folder.name / "trainer.pt", weights_only=True)


@pytest.mark.parametrize("recipe,backend", CASES)
def test_recipe_resumes_exactly_on_two_processes(tmp_path, recipe, backend):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    res = 32 if recipe == "biggan" else 8
    data = write_images_npz(tmp_path / "d.npz", n=64, res=res, classes=4)
    # batch 16 = micro 4 x 2 rounds x 2 ranks; a checkpoint at step 4 of 8
    train = {"total_kimg": 0.128, "batch_size": 16, "micro_batch": 4, **({"precision": "bf16"} if recipe == "biggan" else {})}
    cfg = tiny_config(tmp_path, data, data={"resolution": res}, model=MLP, train=train, checkpoint={"every_kimg": 0.064})
    cfg.update(RECIPES[recipe])
    path = write_config(tmp_path / "c.yaml", cfg)
    _train(path, "run.name=whole", *BACKENDS[backend])
    _train(path, "run.name=parts", "train.total_kimg=0.064", *BACKENDS[backend])
    _train(path, "run.name=parts", *BACKENDS[backend])

    expected, got = _records(tmp_path / "runs" / "whole"), _records(tmp_path / "runs" / "parts")
    assert [r["step"] for r in expected] == list(range(1, 9))
    players = {"gman": {"G", "D1", "D2", "D3"}, "madgan": {"G", "D"}, "biggan": {"G", "D"}}[recipe]
    assert {f"loss/{p}" for p in players} <= expected[0].keys()
    assert got == expected  # bit-identical per-step losses across the resume at step 4
    w, p = (_weights(tmp_path / "runs" / run / "checkpoints" / "step-00000008") for run in ("whole", "parts"))
    assert set(w["players"]) == players
    for player in players:
        for k, v in w["players"][player]["net"].items():
            assert torch.equal(v, p["players"][player]["net"][k]), f"{player}/{k}"
    for k, v in w["G_ema"].items():
        assert torch.equal(v, p["G_ema"][k]), f"G_ema/{k}"
    first = _weights(tmp_path / "runs" / "whole" / "checkpoints" / "step-00000004")
    moved = max(float((w["players"]["G"]["net"][k].float() - v.float()).abs().max()) for k, v in first["players"]["G"]["net"].items())
    assert moved > 0  # the second half trained: equal weights are not trivially equal
