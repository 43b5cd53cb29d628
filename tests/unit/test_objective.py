"""Phases of the objective, run through the real Trainer on one CPU process."""
import pytest
import torch

from bigtrain.families import load_config
from bigtrain.engine.loop import Trainer
from bigtrain.tracking import Tracker
from tests.conftest import tiny_config, write_config, write_images_npz


def _trainer(tmp_path, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8, classes=4)
    cfg_file = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data))
    return Trainer(load_config(cfg_file, list(overrides)))


def _tracker(tmp_path):
    return Tracker(tmp_path, is_main=False, reduce_mean=lambda t: t, total_img=1)


def _phase(trainer, name):
    return next(p for p in trainer.recipe.phases if p.name == name)


def _params(player):
    return [p.detach().clone() for p in player.net.parameters()]


def test_g_step_leaves_d_untouched_and_d_step_leaves_g_untouched(tmp_path):
    trainer = _trainer(tmp_path)
    tracker = _tracker(tmp_path)
    d_before, g_before = _params(trainer.players["D"]), _params(trainer.players["G"])
    trainer.run_phase(_phase(trainer, "G_main"), tracker)
    assert all(torch.equal(a, b) for a, b in zip(d_before, trainer.players["D"].net.parameters()))
    assert all(p.grad is None for p in trainer.players["D"].net.parameters())  # no gradient leaked into D
    assert not all(torch.equal(a, b) for a, b in zip(g_before, trainer.players["G"].net.parameters()))
    assert all(p.requires_grad for p in trainer.players["D"].net.parameters())  # unfrozen again

    g_after = _params(trainer.players["G"])
    trainer.run_phase(_phase(trainer, "D_main"), tracker)
    assert all(torch.equal(a, b) for a, b in zip(g_after, trainer.players["G"].net.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, trainer.players["D"].net.parameters()))


def test_wgan_weight_clipping_after_each_d_step(tmp_path):
    trainer = _trainer(tmp_path, "loss.type=wgan", "loss.clip_d_weights=0.01", "optim.d.type=rmsprop", "optim.d.lr=0.05", "train.d_steps=5")
    assert _phase(trainer, "D_main").repeats == 5
    trainer.iteration(_tracker(tmp_path))
    flat = torch.cat([p.flatten() for p in trainer.players["D"].net.parameters()])
    assert flat.abs().max() <= 0.01 + 1e-7 and flat.abs().max() > 0.009


def test_lazy_r1_runs_every_k_iterations(tmp_path):
    trainer = _trainer(tmp_path, "loss.r1_gamma=1.0", "loss.r1_interval=4")
    assert [p.name for p in trainer.recipe.phases] == ["D_main", "D_reg", "G_main"]
    tracker = _tracker(tmp_path)
    runs = []
    for _ in range(5):
        trainer.iteration(tracker)
        runs.append("loss/D_r1" in tracker.sums)
        tracker.sums.clear()
        tracker.counts.clear()
    assert runs == [True, False, False, False, True]


@pytest.mark.parametrize("override, stat", [("loss.gp_weight=10", "loss/D_gp"), ("loss.r1_gamma=10", "loss/D_r1"), ("loss.dragan_weight=10", "loss/D_dragan")])
def test_penalties_enter_the_d_loss(tmp_path, override, stat):
    trainer = _trainer(tmp_path, "loss.type=wgan", override)
    plain = _trainer(tmp_path / "plain", "loss.type=wgan")
    from bigtrain.families.base import Round

    batch = trainer._draw("real", trainer.backend.micro_batch)
    inputs = Round({"real": batch}, trainer.recipe.latents(len(batch["x"]), trainer.latent_gen, trainer.backend.device))
    losses, stats = trainer.recipe.d_main(inputs)
    plain_losses, _ = plain.recipe.d_main(inputs)
    loss, plain_loss = losses["D"], plain_losses["D"]
    assert stat in stats and stats[stat] > 0
    weight = float(override.split("=")[1]) * (0.5 if "r1" in override else 1.0)
    torch.testing.assert_close(loss.detach(), plain_loss.detach() + weight * stats[stat], rtol=1e-5, atol=1e-6)
