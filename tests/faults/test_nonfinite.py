"""The non-finite guard: a NaN in a player's gradient skips that player's step (weights and
optimizer state untouched), is counted, and after train.max_nonfinite skips in a row the run
stops with one line and exit code 3; a checkpoint is never written with non-finite weights, so
`latest` keeps naming a finite one; sample/eval refuse a checkpoint that is not finite."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigtrain.families import config_from_dict, load_config
from bigtrain.engine.loop import Trainer
from bigtrain.errors import ConfigError, TrainingDiverged
from tests.conftest import REPO, run_cli, tiny_config, write_config, write_images_npz
from tests.dist.test_ddp import DIST_ENV, torchrun
from tests.faults import harness

# `python -c` prelude: from D's K-th optimizer step on (1-based), its gradients hold a NaN
INJECT = """
import sys
from bigtrain.engine.backends import accelerate as b
K, ONLY = int(sys.argv[1]), sys.argv[2] == "once"
calls = {"D": 0}
step = b.AccelerateBackend.step
def poisoned(self, player, *args, **kwargs):
    if player.name == "D":
        calls["D"] += 1
        if calls["D"] == K or (calls["D"] > K and not ONLY):
            next(p for p in player.net.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
    return step(self, player, *args, **kwargs)
b.AccelerateBackend.step = poisoned
from bigtrain.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _config(tmp_path: Path, **train) -> Path:
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    # 8 steps of 16 images; a checkpoint every 2 steps
    cfg = tiny_config(tmp_path, data, train={"total_kimg": 0.128, "batch_size": 16, **train}, checkpoint={"every_kimg": 0.032, "keep_last": 2})
    return write_config(tmp_path / "c.yaml", cfg)


def _poisoned_train(cfg: Path, k: int, mode: str, *overrides: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable]), "-c", INJECT, str(k), mode, "train", str(cfg), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, **DIST_ENV})


def _rows(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


# fused optimizers skip on the device and the loop reads the flags at the log interval (here
# every step, as the checkpoints below need): the same run, the same stop
FUSED = ["optim.g.fused=true", "optim.d.fused=true"]


@pytest.mark.parametrize("fused", [False, True], ids=["host-read", "fused"])
def test_persistent_nan_stops_the_run_with_exit_3_and_keeps_the_finite_checkpoint(tmp_path, fused):
    out = _poisoned_train(_config(tmp_path, max_nonfinite=3), 4, "always", *(FUSED if fused else []))
    assert out.returncode == 3, out.stderr[-2000:]
    lines = [l for l in out.stderr.splitlines() if l.startswith("bigtrain: error")]
    assert len(lines) == 1
    # D's 4th step is iteration 3 (0-based); 3 skips in a row end the run at iteration 5
    what = "a gradient" if fused else "the gradient of"
    assert "D skipped 3 steps in a row" in lines[0] and f"step 3, phase D_main: {what}" in lines[0], lines[0]
    run = tmp_path / "runs" / "tiny"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000002", "step-00000004"]  # step 4's weights were finite: D's steps were skipped
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    state = torch.load(run / "checkpoints" / "step-00000004" / "trainer.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["players"]["D"]["net"].values())
    assert state["health"]["D"] == 1 and state["health"]["G"] == 0  # the skip at iteration 3
    assert [r["health/nonfinite_D"] for r in _rows(run)] == [0, 0, 0, 1, 2]


def test_one_nan_is_skipped_and_the_run_goes_on(tmp_path):
    out = _poisoned_train(_config(tmp_path), 3, "once")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _rows(tmp_path / "runs" / "tiny")
    assert rows[-1]["step"] == 8 and rows[-1]["health/nonfinite_D"] == 1 and rows[-1]["health/nonfinite_G"] == 0
    assert all(torch.isfinite(torch.tensor([r["loss/D"], r["loss/G"]])).all() for r in rows)


@pytest.mark.parametrize("fused", [False, True], ids=["host-read", "fused"])
def test_a_skipped_step_leaves_the_players_weights_and_optimizer_untouched(tmp_path, fused):
    optim = {"g": {"fused": fused}, "d": {"fused": fused}}
    cfg = config_from_dict(tiny_config(tmp_path, write_images_npz(tmp_path / "d.npz", n=32, res=8), log={"progress_bar": False}, optim=optim))
    trainer = Trainer(cfg)
    from bigtrain.tracking import Tracker

    tracker = Tracker(trainer.run_dir, is_main=False, reduce_mean=lambda t: t, total_img=64)
    trainer.iteration(tracker)  # Adam has state now
    D = trainer.players["D"]
    before = {k: v.clone() for k, v in D.net.state_dict().items()}
    opt_before = {i: {k: v.clone() for k, v in s.items()} for i, s in D.optimizer.state.items()}
    g_before = [p.detach().clone() for p in trainer.players["G"].net.parameters()]
    d_phase = next(p for p in trainer.recipe.phases if p.updates == ("D",) or list(p.updates) == ["D"])
    d_phase.before_step = lambda name, net, grads: next(net.parameters()).grad.fill_(float("inf"))
    trainer.iteration(tracker)
    for k, v in D.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for i, s in D.optimizer.state.items():
        for k, v in s.items():
            assert torch.equal(v, opt_before[i][k]), k
    if fused:  # counted on the device until the loop's next read
        assert trainer.health.totals["D"] == 0 and D.deferred_guard and int(D.nonfinite) == 2
        trainer.health.check()
    else:
        assert D.nonfinite.startswith("the gradient of ")
    assert trainer.health.totals["D"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.players["G"].net.parameters()))  # G still trained
    trainer.backend.close()


@pytest.mark.parametrize("fused", [False, True], ids=["host-read", "fused"])
def test_with_fused_optimizers_an_iteration_reads_nothing_back_to_the_host(tmp_path, monkeypatch, fused):
    """The guard's cost on a GPU is its host read; with fused kernels there is none per step
    (the flags are read at the log interval). On the CPU a read is free, so count them, and the
    tensors built from host values (`torch.tensor`: on a GPU a blocking copy, which waits as a
    read does)."""
    optim = {"g": {"fused": fused}, "d": {"fused": fused}}
    cfg = config_from_dict(tiny_config(tmp_path, write_images_npz(tmp_path / "d.npz", n=32, res=8), log={"progress_bar": False}, optim=optim))
    trainer = Trainer(cfg)
    from bigtrain.tracking import Tracker

    tracker = Tracker(trainer.run_dir, is_main=False, reduce_mean=lambda t: t, total_img=640)
    trainer.iteration(tracker)
    reads = harness.count_host_reads(monkeypatch, lambda: [trainer.iteration(tracker) for _ in range(3)])
    if fused:
        assert reads == []
    else:  # the host-read guard reads at least once per player step
        assert reads.count("item") >= 3 * 2 and reads.count("torch.tensor") >= 3 * 2, reads
    trainer.backend.close()


def test_a_fused_run_stops_at_its_next_read_and_saves_nothing_after_the_streak(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    # flags read every 4 steps (log and checkpoint interval); D's gradients NaN from its 2nd step
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, train={"total_kimg": 0.128, "batch_size": 16, "max_nonfinite": 2},
                                                        log={"every_kimg": 0.064}, checkpoint={"every_kimg": 0.064}))
    out = _poisoned_train(cfg, 2, "always", *FUSED)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "D skipped 2 steps in a row" in out.stderr and "the first at step 1, phase D_main: a gradient" in out.stderr, out.stderr[-2000:]
    run = tmp_path / "runs" / "tiny"
    assert not list((run / "checkpoints").glob("step-*"))  # the read came before step 4's checkpoint
    assert not (run / "metrics.jsonl").exists() or _rows(run) == []


@pytest.mark.parametrize("overrides, words", [
    (["optim.d.type=rmsprop", "optim.d.fused=true"], "torch has no fused rmsprop"),
    (["optim.g.fused=true", "backend.kind=deepspeed"], "is for the accelerate backend"),
])
def test_fused_is_refused_where_there_is_no_fused_kernel(tmp_path, overrides, words):
    key = overrides[-1].split("=")[0] if "rmsprop" in overrides[0] else overrides[0].split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"{key}: {words}")):
        load_config(_config(tmp_path), overrides)


def test_deferred_flags_stop_the_run_at_the_next_read_naming_where_the_streak_began():
    from bigtrain.engine.guard import Health

    health = Health(limit=3, totals={"D": 5})
    flags = [0, 1, 1, 0, 1, 1, 1, 1, 0]  # a streak of 2, then one of 4 from step 4
    for step, flag in enumerate(flags):
        health.observe("D", "D_main", step, torch.tensor(float(flag)), torch.tensor(1 if step >= 6 else 2), deferred=True)
        health.observe("G", "G_main", step, torch.tensor(0.0), torch.tensor(2), deferred=True)
    assert health.totals == {"D": 5}  # nothing read yet
    with pytest.raises(TrainingDiverged, match=r"D skipped 3 steps in a row .* the first at step 4, phase D_main: a gradient\."):
        health.check()
    assert health.totals == {"D": 5 + 6, "G": 0}
    quiet = Health(limit=3)
    for step, flag in enumerate([1, 1, 0, 1, 1, 0]):
        quiet.observe("D", "D_main", step, torch.tensor(float(flag)), torch.tensor(1), deferred=True)
    quiet.check()  # no streak reached 3
    assert quiet.totals == {"D": 4}
    quiet.check()  # counted once
    assert quiet.totals == {"D": 4}


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    cfg = config_from_dict(tiny_config(tmp_path, write_images_npz(tmp_path / "d.npz", n=32, res=8), train={"total_kimg": 0.032}, log={"progress_bar": False}))
    trainer = Trainer(cfg)
    trainer.train()  # step-00000002 written
    root = trainer.ckpt_root
    assert (root / "latest").read_text().strip() == "step-00000002"
    with torch.no_grad():
        next(trainer.emas["G"].module.parameters()).view(-1)[0] = float("nan")
    trainer.counters.step += 1
    with pytest.raises(TrainingDiverged, match=r"G_ema\..* is non-finite"):
        trainer.save_checkpoint()
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002"] and (root / "latest").read_text().strip() == "step-00000002"
    trainer.backend.close()


def test_sample_and_eval_refuse_a_non_finite_checkpoint(tmp_path, weights):
    cfg = _config(tmp_path)
    assert run_cli("train", str(cfg), "train.total_kimg=0.032").returncode == 0
    ckpt = tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000002"
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    key = next(iter(state["G_ema"]))
    state["G_ema"][key] = torch.full_like(state["G_ema"][key], float("nan"))
    torch.save(state, ckpt / "trainer.pt")
    out = run_cli("sample", "--checkpoint", str(ckpt), "--num", "4", "--out", str(tmp_path / "s.npz"))
    assert out.returncode == 2 and f"G_ema.{key} holds non-finite values" in out.stderr and not (tmp_path / "s.npz").exists()
    out = run_cli("eval", "--checkpoint", str(ckpt), "--metrics", "is", "--num", "4", "--weights", str(weights), "--device", "cpu")
    assert out.returncode == 2 and "non-finite" in out.stderr


@pytest.mark.dist
def test_two_processes_stop_together_with_exit_3(tmp_path):
    out = _poisoned_train(_config(tmp_path, max_nonfinite=2), 2, "always", launcher=torchrun() + ["--no-python", sys.executable])
    assert out.returncode != 0 and "exitcode  : 3" in out.stderr, out.stderr[-3000:]  # torchrun's report of its ranks
    assert "D skipped 2 steps in a row" in out.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny" / "checkpoints").glob("step-*")) == ["step-00000002"]


# `python -c` prelude: from D's K-th loss on (1-based), the classic recipe's D loss is NaN
NAN_LOSS = """
import sys
from bigtrain.families.gan import recipe as gan
K = int(sys.argv[1])
calls = [0]
d_main = gan.GanRecipe.d_main
def poisoned(self, inputs):
    losses, stats = d_main(self, inputs)
    calls[0] += 1
    return ({k: v * float("nan") for k, v in losses.items()} if calls[0] >= K else losses), stats
gan.GanRecipe.d_main = poisoned
from bigtrain.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("backend", ["accelerate", "deepspeed"])
def test_a_nan_loss_stops_the_run_without_a_nan_checkpoint(tmp_path, backend):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    extra = ["backend.kind=deepspeed", "backend.zero_stage=2"] if backend == "deepspeed" else []
    cmd = [sys.executable, "-c", NAN_LOSS, "3", "train", str(_config(tmp_path, max_nonfinite=3)), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, **DIST_ENV, "DS_ACCELERATOR": "cpu"})
    assert out.returncode == 3, out.stderr[-2000:]
    assert "D skipped 3 steps in a row" in out.stderr and "step 2, phase D_main: the loss" in out.stderr
    run = tmp_path / "runs" / "tiny"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    exported = run_cli("sample", "--checkpoint", str(run / "checkpoints" / "step-00000004"), "--num", "4", "--out", str(tmp_path / "s.npz"), env={"DS_ACCELERATOR": "cpu"})
    assert exported.returncode == 0, exported.stderr[-2000:]  # G_ema finite, and sampled
    rows = _rows(run)
    assert all(r["loss/G"] == r["loss/G"] for r in rows)  # G never saw a NaN
