"""ProGAN growth 4 -> 8 -> 16 on 2 processes (torchrun, gloo, CPU): under DDP (every level
built up front, find_unused_parameters) and under DeepSpeed ZeRO-2 (optimizer reset off, which
DeepSpeed cannot do) training continues across both growths and the ranks stay identical."""
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


@pytest.mark.parametrize("resume_step", [6], ids=["mid-fade"])
def test_resume_mid_fade_on_two_processes_reproduces_the_uninterrupted_run(tmp_path, resume_step):
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
    alphas = [r["progan/alpha"] for r in harness.rows(runs / "resumed")]
    assert alphas[:2] == pytest.approx([0.5, 0.75])  # it went on mid-fade
    wa, wb = harness.final_weights(runs / "whole"), harness.final_weights(runs / "resumed")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
