"""SIGKILL at random iterations and inside a checkpoint write, then resume: the run ends with
exactly the losses and weights of an uninterrupted one (1 process in the default run; 2
processes and DeepSpeed marked slow)."""
import random

import pytest

from tests.conftest import tiny_config, write_config, write_images_npz
from tests.dist.test_ddp import torchrun
from tests.faults import harness

STEPS = 20  # of 16 images; a checkpoint every 2 steps
BACKENDS = {"accelerate": [], "deepspeed": ["backend.kind=deepspeed", "backend.zero_stage=2"]}


def _config(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    cfg = tiny_config(tmp_path, data, model={"num_classes": 4}, train={"total_kimg": STEPS * 0.016, "batch_size": 16},
                      checkpoint={"every_kimg": 0.032, "keep_last": 2}, augment={"policy": "translation,cutout"})
    return write_config(tmp_path / "c.yaml", cfg)


CASES = [("accelerate", 1), pytest.param("accelerate", 2, marks=[pytest.mark.slow, pytest.mark.dist]),
         pytest.param("deepspeed", 1, marks=pytest.mark.slow), pytest.param("deepspeed", 2, marks=[pytest.mark.slow, pytest.mark.dist])]


@pytest.mark.parametrize("backend,procs", CASES)
def test_kill9_at_random_iterations_and_inside_a_checkpoint_write(tmp_path, backend, procs):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    cfg = _config(tmp_path)
    launcher = torchrun() if procs == 2 else None
    whole = harness.finish(harness.command(cfg, ["run.name=whole", *BACKENDS[backend]], launcher))
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "runs" / "killed"
    args = ["run.name=killed", *BACKENDS[backend]]
    kills = sorted(random.Random(procs).sample(range(2, STEPS - 2), 3))
    for step in kills:
        assert harness.run_and_kill_at_step(harness.command(cfg, args, launcher), run, step), f"finished before step {step}"
    # the next run is killed while it writes its 2nd checkpoint (its first file is down)
    harness.kill_inside_checkpoint_write(harness.command(cfg, args, launcher, prelude=(harness.SLOW_SAVE, "2")))
    assert any(p.name.startswith(".tmp-step-") for p in (run / "checkpoints").iterdir())  # the torn write
    done = harness.finish(harness.command(cfg, args, launcher))
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r[0] for r in harness.losses(run)] == list(range(1, STEPS + 1))  # every step once
    assert harness.identical(tmp_path / "runs" / "whole", run)
