"""A phase's `before_step` hook sees and replaces the gradients between backward and the
optimizer step, under Accelerate and under DeepSpeed (ZeRO-0 and ZeRO-2, one process)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, tiny_config, write_config, write_images_npz

SCRIPT = r"""
import json, sys, torch
from bigtrain.families import load_config
from bigtrain.engine.loop import Trainer
from bigtrain.tracking import Tracker

def d_params(trainer):
    return [p.detach().clone() for p in trainer.players["D"].net.parameters()]

def one_iteration(cfg_path, overrides, scale):
    trainer = Trainer(load_config(cfg_path, overrides))
    seen = []
    def hook(name, net, grads):  # scale every gradient of D (0: no update at all)
        for p in net.parameters():
            g = grads.get(p)
            seen.append(g is not None)
            grads.set(p, g * scale)
    if scale is not None:
        trainer.recipe.phases[0].before_step = hook
    before = d_params(trainer)
    tracker = Tracker(trainer.run_dir, is_main=True, reduce_mean=lambda t: t, total_img=16, progress_bar=False)
    trainer.iteration(tracker)
    tracker.close()
    return before, d_params(trainer), seen

cfg, overrides = sys.argv[1], sys.argv[2:]
b0, zeroed, seen = one_iteration(cfg, overrides + ["run.name=zero"], 0.0)
_, doubled, _ = one_iteration(cfg, overrides + ["run.name=double"], 2.0)
_, plain2, _ = one_iteration(cfg, overrides + ["run.name=plain", "optim.d.lr=0.2"], None)
print(json.dumps({
    "hook_saw_grads": bool(seen) and all(seen),
    "zeroed_unchanged": all(torch.equal(a, b) for a, b in zip(b0, zeroed)),
    "doubled_is_twice_the_lr": max(float((a - b).abs().max()) for a, b in zip(doubled, plain2)),
    "moved": max(float((a - b).abs().max()) for a, b in zip(b0, plain2)),
}))
"""


@pytest.mark.parametrize("backend", [[], ["backend.kind=deepspeed", "backend.zero_stage=0"], ["backend.kind=deepspeed", "backend.zero_stage=2"]],
                         ids=["accelerate", "deepspeed-zero0", "deepspeed-zero2"])
def test_before_step_replaces_gradients(tmp_path, backend):
    if backend:
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8, classes=4)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, optim={"d": {"type": "sgd", "lr": 0.1}}))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg), *backend], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["hook_saw_grads"]
    assert result["zeroed_unchanged"]  # zero gradients: SGD leaves D as it was
    assert result["moved"] > 1e-4  # ... while a real step moves it
    # plain SGD is linear in the gradient: doubling it equals doubling the learning rate
    assert result["doubled_is_twice_the_lr"] < 1e-6
