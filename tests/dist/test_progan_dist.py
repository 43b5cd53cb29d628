"""ProGAN growth 4 -> 8 -> 16 on 2 processes (torchrun, gloo, CPU): under DDP (every level
built up front, find_unused_parameters) and under DeepSpeed ZeRO-2 (optimizer reset off, which
DeepSpeed cannot do) training continues across both growths and the ranks stay identical."""
import json

import pytest
import yaml

from tests.dist.test_ddp import run_worker
from tests.unit.test_progan_recipe import _cfg

pytestmark = pytest.mark.dist

CASES = [pytest.param("accelerate", []), pytest.param("deepspeed", ["backend.kind=deepspeed", "backend.zero_stage=2", "progan.reset_optimizer=false"])]


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
