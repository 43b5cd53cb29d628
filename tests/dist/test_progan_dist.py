"""ProGAN growth 4 -> 8 -> 16 on 2 processes (torchrun, gloo, CPU): under DDP (every level
built up front, find_unused_parameters) and under DeepSpeed ZeRO-2 (optimizer reset off, which
DeepSpeed cannot do) training continues across both growths and the ranks stay identical; a
resume mid-fade and one mid-stabilise reproduce the uninterrupted run."""
import json

import pytest
import torch
import yaml

from tests.dist.test_ddp import run_worker
from tests.unit.test_progan_recipe import _cfg

pytestmark = pytest.mark.dist

# DeepSpeed in the slow run: 10-85 s here (the default run holds the DeepSpeed resume tests of test_deepspeed.py)
CASES = [pytest.param("accelerate", []), pytest.param("deepspeed", ["backend.kind=deepspeed", "backend.zero_stage=2", "progan.reset_optimizer=false"], marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend, overrides", CASES)
def test_growth_on_two_processes_keeps_the_ranks_identical(tmp_path, backend, overrides):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    cfg = _cfg(tmp_path)
    cfg["train"]["micro_batch"] = 4  # 16 = 4 x 2 rounds x 2 ranks
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = run_worker(tmp_path / "c.yaml", tmp_path / "out.pt", *overrides)
    assert result["world_size"] == 2 and result["step"] == 24 and result["rounds"] == 2
    assert result["max_rank_diff"] == 0.0
    assert (result["params"] - result["initial"]).abs().max() > 1e-3  # it trained
    rows = [json.loads(line) for line in (tmp_path / "runs" / "pg" / "metrics.jsonl").read_text().splitlines()]
    assert [r["progan/resolution"] for r in rows] == [4] * 5 + [8] * 8 + [16] * 11


@pytest.mark.parametrize("backend, overrides", CASES)
def test_a_micro_batch_that_changes_with_the_resolution_keeps_the_ranks_identical(tmp_path, backend, overrides):
    """Minibatch 16 at 4x4 and 8x8, 8 at 16x16, each process taking its whole share in one
    round (train.micro_batch 0): the micro-batch goes from 8 to 4 at the second growth, through
    each backend's own API (DeepSpeed: set_train_micro_batch_size)."""
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    cfg = _cfg(tmp_path, minibatch={16: 8})
    cfg["train"]["micro_batch"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = run_worker(tmp_path / "c.yaml", tmp_path / "out.pt", *overrides)
    assert result["world_size"] == 2 and result["micro_batch"] == 4 and result["rounds"] == 1
    assert result["max_rank_diff"] == 0.0
    assert (result["params"] - result["initial"]).abs().max() > 1e-3
    rows = [json.loads(line) for line in (tmp_path / "runs" / "pg" / "metrics.jsonl").read_text().splitlines()]
    res = [r["progan/resolution"] for r in rows]
    assert res[:13] == [4] * 5 + [8] * 8 and res[13:] == [16] * 11 and rows[-1]["kimg"] == pytest.approx(0.384)


# the schedule of _cfg (growth.py, 16 images a step, 4 steps per phase): step 6 trains the fade
# to 8x8 at alpha 0.25, steps 9-13 stabilise at 8x8, step 14 starts the fade to 16x16
@pytest.mark.parametrize("resume_step, alphas, resolutions", [
    # mid-fade (slow: the default run's budget; tests/unit/test_resume_plan.py resumes at every boundary of
    # ProGAN's fades on one process, and the growth tests above run two)
    pytest.param(6, [0.5, 0.75, 1.0], [8, 8, 8], id="mid-fade", marks=pytest.mark.slow),  # the fade goes on, then 8x8 stabilises
    pytest.param(10, [1.0, 1.0, 1.0, 0.25], [8, 8, 8, 16], id="mid-stabilise", marks=pytest.mark.slow),  # at 8x8, then the fade to 16x16 (slow run: ~33 s)
], ids=["mid-fade", "mid-stabilise"])
def test_resume_on_two_processes_reproduces_the_uninterrupted_run(tmp_path, resume_step, alphas, resolutions):
    from tests.conftest import run_cli
    from tests.dist.test_ddp import DIST_ENV, torchrun
    from tests.faults import harness

    cfg = _cfg(tmp_path)
    cfg["train"]["micro_batch"] = 4
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    whole = run_cli("train", str(tmp_path / "c.yaml"), "run.name=whole", env=DIST_ENV, launcher=torchrun())
    assert whole.returncode == 0, whole.stderr[-3000:]
    ckpt = tmp_path / "runs" / "whole" / "checkpoints" / f"step-{resume_step:08d}"
    resumed = run_cli("train", str(tmp_path / "c.yaml"), "run.name=resumed", f"train.resume={ckpt}", env=DIST_ENV, launcher=torchrun())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = tmp_path / "runs"
    after = [r for r in harness.losses(runs / "whole") if r[0] > resume_step]
    assert after and harness.losses(runs / "resumed") == after
    trained = [r for r in harness.rows(runs / "resumed") if "progan/alpha" in r]
    assert trained[0]["step"] == resume_step + 1
    assert [r["progan/alpha"] for r in trained[:len(alphas)]] == pytest.approx(alphas)  # it went on where it stopped
    assert [r["progan/resolution"] for r in trained[:len(resolutions)]] == resolutions
    wa, wb = harness.final_weights(runs / "whole"), harness.final_weights(runs / "resumed")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
