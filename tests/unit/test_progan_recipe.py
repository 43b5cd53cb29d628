"""The progan recipe through the unchanged loop (issue 12): growth 4 -> 8 -> 16 on CPU, the
schedule's batch/lr/alpha applied, reals at the current resolution and blended, optimizer state
reset at fades (or kept), resume mid-fade and mid-stabilise bit for bit, sampling at a stage."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bigtrain.families import config_from_dict
from bigtrain.engine.loop import Trainer
from bigtrain.errors import ConfigError
from bigtrain.families.progan.nets import blend_reals
from bigtrain.families.base import Round
from tests.conftest import run_cli, tiny_config, write_images_npz

STEP_IMG = 16  # one iteration: the minibatch of every resolution
PHASE = 4 * STEP_IMG / 1000  # 4 iterations of stabilisation, 4 of fade


def _cfg(tmp_path, name="pg", **progan):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=16)
    cfg = tiny_config(tmp_path, data, data={"resolution": 16}, run={"name": name, "out_dir": str(tmp_path / "runs"), "seed": 3},
                      model={"z_dim": 8, "g": {"arch": "progan", "fmap_base": 64, "fmap_max": 16}, "d": {"arch": "progan", "fmap_base": 64, "fmap_max": 16}},
                      loss={"type": "wgan", "gp_weight": 10.0}, train={"total_kimg": 6 * PHASE, "batch_size": 16, "micro_batch": 8},
                      backend={"find_unused_parameters": True}, checkpoint={"every_kimg": 2 * STEP_IMG / 1000, "keep_last": 20},
                      log={"every_kimg": STEP_IMG / 1000, "samples_every_kimg": 1.0, "progress_bar": False})
    cfg["recipe"] = "progan"
    cfg["progan"] = {"training_kimg": PHASE, "transition_kimg": PHASE, "minibatch_base": 16, **progan}
    return cfg


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(cfg):
    trainer = Trainer(config_from_dict(cfg))
    trainer.train()
    trainer.backend.close()
    return trainer


def test_growth_4_to_16_follows_the_schedule_and_keeps_old_adam_state(tmp_path):
    trainer = _train(_cfg(tmp_path, reset_optimizer=False))
    rows = _rows(tmp_path / "runs" / "pg")
    # lod 2 (4x4) for 4 steps and the fade's first (alpha 0 is lod 2 still), the fade to 8x8 over
    # 3 more, 8x8 for 5, the fade to 16x16 over 3, then 16x16
    assert [r["progan/resolution"] for r in rows] == [4] * 5 + [8] * 8 + [16] * 11
    alphas = [r["progan/alpha"] for r in rows]
    assert alphas[:5] == [1.0] * 5 and alphas[5:8] == pytest.approx([0.25, 0.5, 0.75]) and alphas[8:13] == [1.0] * 5
    assert all(torch.isfinite(torch.tensor([r["loss/D"], r["loss/G"], r["loss/D_gp"], r["loss/D_drift"]])).all() for r in rows)
    G, D = trainer.players["G"], trainer.players["D"]
    assert G.net.current_resolution == D.net.current_resolution == trainer.emas["G"].module.current_resolution == 16
    # the 4x4 block trained at every step, Adam's state kept across both growths: 24 steps
    first = next(G.net.blocks[0].parameters())
    assert int(G.optimizer.state[first]["step"]) == 24
    top = next(G.net.blocks[2].parameters())  # the 16x16 block: in use since the second fade began (step 14)
    assert int(G.optimizer.state[top]["step"]) == 11


def test_optimizer_state_is_reset_where_each_fade_starts_and_ends(tmp_path):
    trainer = _train(_cfg(tmp_path))  # progan.reset_optimizer: true, the official default
    first = next(trainer.players["G"].net.blocks[0].parameters())
    # resets before steps 6, 9, 14 and 17 (each fade's start and end): 8 steps since the last
    assert int(trainer.players["G"].optimizer.state[first]["step"]) == 8
    assert int(trainer.players["D"].optimizer.state[next(trainer.players["D"].net.blocks[0].parameters())]["step"]) == 8


@pytest.mark.parametrize("resume_step", [6, 10], ids=["mid-fade", "mid-stabilise"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, resume_step):
    whole = _train(_cfg(tmp_path, name="whole"))
    ckpt = tmp_path / "runs" / "whole" / "checkpoints" / f"step-{resume_step:08d}"
    cfg = _cfg(tmp_path, name="resumed")
    cfg["train"]["resume"] = str(ckpt)
    resumed = _train(cfg)
    keys = ("loss/D", "loss/G", "loss/D_gp", "progan/alpha", "progan/resolution")
    expect = [[r[k] for k in keys] for r in _rows(tmp_path / "runs" / "whole") if r["step"] > resume_step]
    assert [[r[k] for k in keys] for r in _rows(tmp_path / "runs" / "resumed")] == expect
    for name in ("G", "D"):
        for a, b in zip(whole.players[name].net.state_dict().values(), resumed.players[name].net.state_dict().values()):
            assert torch.equal(a, b)


class _Recording(Trainer):
    """A Trainer noting, at each iteration, (global batch, micro-batch, rounds) as applied to
    the backend and the samples its stream served before it."""

    def apply_plan(self):
        plan = super().apply_plan()
        self.seen = getattr(self, "seen", []) + [(plan.batch_size, self.backend.micro_batch, self.backend.rounds, self.counters.data_pos["real"])]
        return plan


@pytest.mark.parametrize("micro, table, expect", [
    # 208 images at 4x4 and 8x8 in minibatches of 16, then 176 at 16x16 in minibatches of 8 (the fade's too)
    (0, {}, [(16, 16, 1)] * 13 + [(8, 8, 1)] * 22),  # the official way: each process's whole share, one round
    pytest.param(4, {}, [(16, 4, 4)] * 13 + [(8, 4, 2)] * 22, marks=pytest.mark.slow),  # train.micro_batch caps it: accumulation makes up the minibatch
    pytest.param(0, {4: 16, 8: 8}, [(16, 16, 1)] * 5 + [(16, 8, 2)] * 8 + [(8, 8, 1)] * 22, marks=pytest.mark.slow),  # progan.micro_batch by resolution
], ids=["whole-share", "capped", "table"])
def test_the_micro_batch_follows_the_resolution(tmp_path, micro, table, expect):
    cfg = _cfg(tmp_path, minibatch={16: 8}, micro_batch=table)
    cfg["train"]["micro_batch"] = micro
    trainer = _Recording(config_from_dict(cfg))
    trainer.train()
    trainer.backend.close()
    assert [s[:3] for s in trainer.seen] == expect
    served = [b - a for a, b in zip([s[3] for s in trainer.seen], [s[3] for s in trainer.seen[1:]] + [trainer.counters.data_pos["real"]])]
    assert served == [s[0] for s in expect]  # each iteration read exactly its minibatch of reals
    assert trainer.chunk == min(m for _, m, _ in expect)
    rows = _rows(tmp_path / "runs" / "pg")
    res = [r["progan/resolution"] for r in rows]  # a line every 16 images: every step, then every second step
    assert res[:13] == [4] * 5 + [8] * 8 and res[13:] == [16] * 11
    assert all(torch.isfinite(torch.tensor([r["loss/D"], r["loss/G"]])).all() for r in rows)


@pytest.mark.parametrize("resume_step", [pytest.param(10, marks=pytest.mark.slow), 15], ids=["before-the-change", "after-the-change"])
def test_resume_across_a_micro_batch_change_reproduces_the_uninterrupted_run(tmp_path, resume_step):
    """Micro-batch 16 at 4x4 and 8x8, 8 at 16x16 (from step 14): a resume before or after the
    change continues with the losses and weights of the uninterrupted run."""
    def cfg(name, **train):
        c = _cfg(tmp_path, name=name, minibatch={16: 8})
        c["train"].update(micro_batch=0, **train)
        return c

    whole = _train(cfg("whole"))
    resumed = _train(cfg("resumed", resume=str(tmp_path / "runs" / "whole" / "checkpoints" / f"step-{resume_step:08d}")))
    keys = ("loss/D", "loss/G", "loss/D_gp", "progan/resolution")
    expect = [[r[k] for k in keys] for r in _rows(tmp_path / "runs" / "whole") if r["step"] > resume_step]
    assert [[r[k] for k in keys] for r in _rows(tmp_path / "runs" / "resumed")] == expect
    assert resumed.counters.data_pos == whole.counters.data_pos
    for name in ("G", "D"):
        for a, b in zip(whole.players[name].net.state_dict().values(), resumed.players[name].net.state_dict().values()):
            assert torch.equal(a, b)


def test_reals_are_box_filtered_to_the_current_resolution_and_blended(tmp_path):
    trainer = Trainer(config_from_dict(_cfg(tmp_path)))
    recipe = trainer.recipe
    plan = trainer.apply_plan()
    recipe.begin_iteration(replace(plan, nimg=int(6.5 * STEP_IMG)))  # the first fade, alpha 0.625 at 8x8
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    real, _ = recipe._real(Round({"real": {"x": x}}, {}))
    assert recipe.now.resolution == 8 and recipe.now.alpha == pytest.approx(0.625)
    assert torch.allclose(real, blend_reals(F.avg_pool2d(x, 2), recipe.now.lod))
    assert not torch.allclose(real, F.avg_pool2d(x, 2))  # the blend did something
    trainer.backend.close()


def test_sampling_a_checkpoint_of_any_stage_gives_its_resolution(tmp_path):
    _train(_cfg(tmp_path))
    for step, res in ((2, 4), (10, 8), (24, 16)):
        out = run_cli("sample", "--checkpoint", str(tmp_path / "runs" / "pg" / "checkpoints" / f"step-{step:08d}"), "--num", "4", "--out", str(tmp_path / f"s{step}.npz"))
        assert out.returncode == 0, out.stderr
        assert np.load(tmp_path / f"s{step}.npz")["x"].shape == (4, res, res, 1)


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["model"].update(g={"arch": "dcgan", "width": 8}), "model.g.arch"),
    (lambda c: c["train"].update(micro_batch=3, batch_size=24), "train.micro_batch"),
    (lambda c: c["progan"].update(micro_batch={8: 5}), "progan.micro_batch.8"),
    (lambda c: c["model"]["d"].update(mbstd_group=3), "model.d.mbstd_group"),
    (lambda c: c["progan"].update(minibatch={16: 0}), "progan.minibatch.16"),
    (lambda c: c["backend"].update(kind="deepspeed"), "progan.reset_optimizer"),
    (lambda c: c["progan"].update(initial_resolution=32), "progan.initial_resolution"),
    (lambda c: c.update(schedule={"batch": [[1, 32]]}), "schedule"),
    (lambda c: c["progan"].update(gp_target=0), "progan.gp_target"),
])
def test_bad_progan_settings_are_one_error_naming_the_key(tmp_path, edit, key):
    cfg = _cfg(tmp_path)
    edit(cfg)
    with pytest.raises(ConfigError) as err:
        Trainer(config_from_dict(cfg)).backend.close()
    assert str(err.value).startswith(f"config error: {key}:"), str(err.value)
