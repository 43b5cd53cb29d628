"""The refactor rule: every golden case, rerun through the CLI on the installed code, must
reproduce its recording in tests/golden/data bit for bit: the same loss/D/began scalars at every
step (exact float equality), the same counters and the same sha256 of every final weight of G,
D and G_ema (read through `bigtrain export`).

The recordings were made by tests/golden/record.py (see cases.py for what runs). A case that
differs on purpose (a deliberate change of the numbers) is re-recorded, never loosened here.
"""
import json
from pathlib import Path

import pytest
import torch

from tests.golden.cases import CASES, make_data
from tests.golden.harness import compare, golden_path, run_case

GOLDEN_DIR = Path(__file__).with_name("data")


def _param(case):
    marks = [pytest.mark.slow] if case.slow else []
    if case.nproc > 1:
        marks.append(pytest.mark.dist)
    if case.backend == "deepspeed":
        # the first DeepSpeed start on a machine compiles a C++ op (2-4 min, then cached)
        marks.append(pytest.mark.timeout(1200))
    return pytest.param(case, marks=marks, id=case.name)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("golden") / "data")


@pytest.mark.parametrize("case", [_param(c) for c in CASES.values()])
def test_case_reproduces_its_recording(case, data, tmp_path):
    if case.backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    path = golden_path(GOLDEN_DIR, case)
    assert path.is_file(), f"no recording {path}; run `python -m tests.golden.record -k {case.name}` on the reference code"
    diffs = compare(json.loads(path.read_text()), run_case(case, data, tmp_path / "runs"))
    assert not diffs, f"{case.name} no longer reproduces {path.name}:\n" + "\n".join(diffs)


def test_every_recording_has_a_case():
    stale = sorted(p.stem for p in GOLDEN_DIR.glob("*.json") if p.stem not in CASES)
    assert not stale, f"recordings without a case in cases.py: {stale}"


def _record(machine: dict, loss: float, weight: torch.Tensor) -> dict:
    from tests.golden.harness import tensor_checksum

    return {"machine": machine, "data": "d", "stages": [], "metrics": [{"step": 1, "kimg": 0.016, "loss/D": loss}],
            "counters": {"step": 1, "nimg": 16}, "objective": {}, "tensors": {"G/w": tensor_checksum(weight)}}


def test_compare_is_exact_on_the_recording_machine_and_tolerant_only_elsewhere():
    from tests.golden.harness import RTOL, compare, machine

    here, there = machine(), {**machine(), "vendor_id": "SomeOtherCPU"}
    w = torch.linspace(-1, 1, 1000)
    ulp = w + torch.where(w == 0, 0.0, w.abs() * 2**-23)  # the last bit of most elements
    golden = _record(here, 0.5, w)
    assert compare(golden, _record(here, 0.5, w)) == []
    assert len(compare(golden, _record(here, 0.5 + 1e-9, ulp))) == 2  # same machine: any bit counts
    other = {**golden, "machine": there}
    assert compare(other, _record(here, 0.5 + 1e-9, ulp)) == []  # another machine: last bits pass
    moved = compare(other, _record(here, 0.5 * (1 + 10 * RTOL), w * (1 + 10 * RTOL)))
    assert len(moved) == 2 and "beyond rtol" in moved[1]  # a real change does not
