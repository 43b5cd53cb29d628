"""BigGAN learns the digits on 2 CPU processes in bf16, under Accelerate and DeepSpeed ZeRO-2
(issue 13): configs/biggan_digits.yaml through `bigtrain train` under torchrun, then its
checkpoint's G_ema is graded as every family is (tests/learning/harness.py): the distance to the
real digits falls under half its value at initialisation, all 10 classes are present with a
near-uniform histogram, and samples drawn for a class are recognised as that class by a
classifier trained on the real digits (a collapsed or class-blind G fails both). Slow: minutes
of CPU each. Also: 1,000 bf16 steps of a small BigGAN without a non-finite value."""
import json
from pathlib import Path

import pytest
import torch

from bigtrain.engine.generation import load_generation
from tests.conftest import run_cli
from tests.dist.test_ddp import DIST_ENV, torchrun
from tests.learning.harness import Features, coverage, digit_classifier, digits, frechet, learned, pixels8, real_images

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

BACKENDS = {"accelerate": [], "deepspeed": ["backend.kind=deepspeed", "backend.zero_stage=2"]}


def grade(run_dir: Path, data: Path, before: float | None = None) -> tuple[float, object, float]:
    """(distance to the real digits, coverage, share of per-class samples recognised as their class)
    of the run's latest G_ema."""
    loaded = load_generation(str(run_dir))
    x, _ = loaded.generate(range(600), seed=99)
    feats = Features()
    dist = frechet(feats(real_images(data, 32)[:600]), feats(x))
    hits = 0
    for digit in range(10):
        xd, _ = loaded.generate(range(30), seed=99, class_idx=digit)
        hits += int((digit_classifier().predict(pixels8(xd)) == digit).sum())
    return dist, coverage(x), hits / 300


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_biggan_learns_the_digits_on_two_processes_in_bf16(tmp_path, backend):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    data = digits(tmp_path)
    common = ["configs/biggan_digits.yaml", f"data.path={data}", f"run.out_dir={tmp_path / 'runs'}", "log.progress_bar=false", "train.precision=bf16", *BACKENDS[backend]]
    init = run_cli("train", *common, "run.name=init", "train.total_kimg=0.064", env={**DIST_ENV, "DS_ACCELERATOR": "cpu"}, launcher=torchrun())
    assert init.returncode == 0, init.stderr[-3000:]
    before, _, _ = grade(tmp_path / "runs" / "init", data)  # after one iteration: G_ema is G at initialisation
    out = run_cli("train", *common, "run.name=bg", env={**DIST_ENV, "DS_ACCELERATOR": "cpu"}, launcher=torchrun(), timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    after, cov, accuracy = grade(tmp_path / "runs" / "bg", data)
    ok, why = learned(before, after, cov)
    print(f"biggan {backend}: {why}; requested class recognised {accuracy:.0%}")
    assert ok, f"biggan {backend}: {why}"
    # a class-blind or collapsed G shows the requested digit in ~10% of samples (chance); this
    # config measured 100% under Accelerate (at 40 kimg instead of 60: 59%)
    assert accuracy > 0.4, f"only {accuracy:.0%} of samples show the requested digit (chance: 10%)"


def test_a_thousand_bf16_steps_stay_finite(tmp_path):
    data = digits(tmp_path)
    out = run_cli("train", "configs/biggan_digits.yaml", f"data.path={data}", f"run.out_dir={tmp_path}", "run.name=long", "log.progress_bar=false",
                  "train.precision=bf16", "train.batch_size=8", "train.total_kimg=8", "log.every_kimg=0.8", "checkpoint.every_kimg=4",
                  "model.g.width=4", "model.d.width=8", "model.g.shared_dim=8", timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1000
    assert all(r["health/nonfinite_G"] == 0 and r["health/nonfinite_D"] == 0 for r in rows)
    assert all(torch.isfinite(torch.tensor([r["loss/D"], r["loss/G"]])).all() for r in rows)
    loaded = load_generation(str(tmp_path / "long"))  # refuses non-finite weights
    assert torch.isfinite(loaded.generate(range(16), seed=0)[0]).all()
