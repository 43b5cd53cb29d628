"""Recipes: a family written here trains through the unchanged loop; D statistics never mix
real and fake; GMAN's combiners; freezing keeps sub-networks frozen; the schedule's shapes."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain import families
from bigtrain.config import CurveConfig, ScheduleConfig
from bigtrain.families import load_config
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families import build_discriminator
from bigtrain.families.base import Family, Phase, PlayerSpec, Recipe, optim_for
from bigtrain.families.gman.recipe import combine
from bigtrain.schedule import factor, make_plan
from tests.conftest import tiny_config, write_config, write_images_npz


@dataclass
class ToyOptions:
    info_weight: float = 1.0  # weight of Q's reconstruction of z


class ToyInfoRecipe(Recipe):
    """Three players: G, D and Q (which recovers z from G(z), InfoGAN-style). Its G_Q phase
    updates two players from one forward; nothing of it is known to the loop."""

    section = "toy3"
    Options = ToyOptions

    def players(self):
        cfg, info = self.cfg, self.info
        return [
            PlayerSpec("G", lambda: self.build_generator(info), optim_for(cfg, "G"), ema=True),
            PlayerSpec("D", lambda: self.build_discriminator(info), optim_for(cfg, "D")),
            PlayerSpec("Q", lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, cfg.model.z_dim)), optim_for(cfg, "Q")),
        ]

    def bind(self, players, reduce_mean, micro_batch):
        self.p = players
        self.phases = [Phase("D_main", ("D",), ("G", "Q"), self.d_main, streams=("real",)), Phase("GQ_main", ("G", "Q"), ("D",), self.gq_main)]

    def latents(self, n, gen, device):
        return {"z": torch.randn(n, self.cfg.model.z_dim, generator=gen).to(device)}

    def d_main(self, b):
        with torch.no_grad():
            fake = self.p["G"].net(b.latents["z"], None)
        out = self.p["D"].engine(torch.cat([b.data["real"]["x"], fake]), None)
        real, fake = out.split(len(fake))
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        return {"D": loss}, {"loss/D": loss.detach()}

    def gq_main(self, b):
        fake = self.p["G"].engine(b.latents["z"], None)
        adv = F.softplus(-self.p["D"].net(fake, None)).mean()
        info = self.cfg.toy3.info_weight * (self.p["Q"].engine(fake) - b.latents["z"]).pow(2).mean()
        return {"G": adv, "Q": info}, {"loss/G": adv.detach(), "loss/Q": info.detach()}

    def generate(self, nets, indices, *, seed, truncation=None, class_idx=None, device="cpu", batch_size=64):
        from bigtrain import sampling

        return sampling.generate(nets["G"], z_dim=self.cfg.model.z_dim, num_classes=0, indices=indices, seed=seed, device=device)


@pytest.fixture
def toy_recipe(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "toy3", Family(recipes={"toy3": ToyInfoRecipe}))


def _toy_config(tmp_path, name, **train):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    cfg = tiny_config(tmp_path, data, train={"total_kimg": 0.064, **train}, model={"num_classes": 0})
    cfg["recipe"], cfg["toy3"], cfg["run"]["name"] = "toy3", {"info_weight": 0.5}, name
    cfg["optim"] = {"q": {"lr": 0.01}}
    return write_config(tmp_path / f"{name}.yaml", cfg)


def test_a_three_player_recipe_trains_and_resumes_through_the_unchanged_loop(tmp_path, toy_recipe):
    from bigtrain.engine.loop import train

    whole = train(load_config(_toy_config(tmp_path, "whole")))
    params = {n: [q.detach().clone() for q in p.net.parameters()] for n, p in whole.players.items()}
    assert sorted(whole.players) == ["D", "G", "Q"] and whole.counters.step == 4
    assert whole.cfg.toy3.info_weight == 0.5 and whole.players["Q"].optimizer.param_groups[0]["lr"] == 0.01

    first = train(load_config(_toy_config(tmp_path, "parts"), ["train.total_kimg=0.032"]))
    assert first.counters.step == 2
    resumed = train(load_config(_toy_config(tmp_path, "parts")))
    assert resumed.counters.step == 4
    for name, player in resumed.players.items():
        for mine, theirs in zip(player.net.parameters(), params[name]):
            assert torch.equal(mine, theirs), name
    fresh = families.build_recipe(whole.cfg, whole.info).players()[2].build()
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), params["Q"]))  # Q trained
    # the recipe's own section is checked like every other
    with pytest.raises(ConfigError, match="toy3.nope"):
        load_config(_toy_config(tmp_path, "bad"), ["toy3.nope=1"])
    with pytest.raises(ConfigError, match="optim.e"):
        families.build_recipe(load_config(_toy_config(tmp_path, "bad2"), ["optim.e.lr=0.1"]), whole.info)


def _mbstd_recipe():
    cfg = load_config(None, ["data.resolution=16", "model.g.arch=dcgan", "model.d.arch=dcgan", "model.g.width=8", "model.d.width=8", "model.d.mbstd_group=4"])
    info = DataInfo("image", (1, 16, 16), 0)
    recipe = families.build_recipe(cfg, info)
    torch.manual_seed(0)
    D = build_discriminator(cfg.model, info)
    return recipe, D


@pytest.mark.parametrize("separate", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="cat([real, fake]) mixes them: the check must fail"))])
def test_minibatch_stddev_never_mixes_real_and_fake(separate):
    recipe, D = _mbstd_recipe()
    recipe.separate, recipe.pack, recipe.acgan = separate, 1, False
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    varied = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    identical = varied[:1].expand(8, -1, -1, -1).clone()
    D.eval()  # no buffers move between the calls; minibatch stddev works the same in eval mode
    real_a, fake_a = recipe._score(D, [real, varied], [None, None])
    real_b, fake_b = recipe._score(D, [real, identical], [None, None])
    assert not torch.allclose(fake_a[:1], fake_b[:1])  # the same first fake, scored differently: D sees the lack of variety
    assert torch.equal(real_a, real_b)  # the reals' scores do not depend on the fakes


def test_batch_norm_in_d_is_forwarded_apart():
    cfg = load_config(None, ["data.resolution=16", "model.d.arch=dcgan", "model.d.width=8", "model.d.norm=batch"])
    recipe = families.build_recipe(cfg, DataInfo("image", (1, 16, 16), 0))
    D = build_discriminator(cfg.model, DataInfo("image", (1, 16, 16), 0))
    calls = []
    D.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    from bigtrain.families.base import has_batch_statistics

    recipe.separate = has_batch_statistics(D)
    assert recipe.separate
    recipe._score(D, [torch.zeros(4, 1, 16, 16), torch.ones(4, 1, 16, 16)], [None, None])
    assert calls == [4, 4]


def test_minibatch_stddev_layer_matches_the_formula():
    from bigtrain.layers import MinibatchStddev

    x = torch.randn(8, 6, 3, 3)
    out = MinibatchStddev(group_size=4, num_channels=2)(x)
    assert out.shape == (8, 8, 3, 3) and torch.equal(out[:, :6], x)
    # sample i is in group i mod 2; feature group f holds channels 3f..3f+2
    for i in range(8):
        members = x[i % 2 :: 2]  # [4, 6, 3, 3]
        for f in range(2):
            expected = members[:, 3 * f : 3 * f + 3].std(dim=0, unbiased=False).mean()
            torch.testing.assert_close(out[i, 6 + f], torch.full((3, 3), float(expected)), atol=1e-5, rtol=1e-5)


def test_gman_combiners():
    losses = torch.tensor([1.0, 3.0, 2.0])
    assert combine(losses, "mean") == 2.0 and combine(losses, "max") == 3.0
    torch.testing.assert_close(combine(losses, "soft_mean", 0.0), torch.tensor(2.0))  # lambda 0 = mean
    w = torch.softmax(torch.tensor([2.0, 6.0, 4.0]), 0)
    torch.testing.assert_close(combine(losses, "soft_mean", 2.0), (w * losses).sum())
    assert 2.0 < float(combine(losses, "soft_mean", 2.0)) < 3.0


def test_freeze_keeps_a_frozen_subnetwork_frozen():
    from bigtrain.engine.players import Player

    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[0].requires_grad_(False)  # e.g. a pretrained encoder kept fixed
    player = Player("E", net, net, torch.optim.SGD(net.parameters(), lr=0.1))
    player.freeze()
    assert not any(p.requires_grad for p in net.parameters())
    player.unfreeze()
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True]


def test_schedule_shapes():
    const, step = CurveConfig(), CurveConfig(shape="step", milestones_kimg=[1.0, 2.0], gamma=0.5)
    linear = CurveConfig(shape="linear", start_kimg=1.0, end_kimg=3.0, final=0.0)
    warm = CurveConfig(warmup_kimg=1.0)
    assert [factor(const, n, 10, 100) for n in (0, 5000)] == [1.0, 1.0]
    assert [factor(step, n, 10, 100) for n in (0, 999, 1000, 2500)] == [1.0, 1.0, 0.5, 0.25]
    assert [factor(linear, n, 10, 100) for n in (0, 1000, 2000, 3000, 9000)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert [factor(warm, n, 10, 100) for n in (0, 400, 900, 5000)] == [0.1, 0.5, 1.0, 1.0]
    plan = make_plan(ScheduleConfig(lr={"g": step}, batch=[[0.5, 128], [2.0, 256]]), 1500, base_lr={"G": 0.002, "D": 0.001}, default_batch=64, total_kimg=10)
    assert plan.batch_size == 128 and plan.lr == {"G": 0.001, "D": 0.001}
    assert make_plan(ScheduleConfig(batch=[[0.5, 128]]), 0, base_lr={}, default_batch=64, total_kimg=10).batch_size == 64
    with pytest.raises(ConfigError, match="schedule.batch"):
        load_config(None, ["schedule.batch=[[1.0,64],[0.5,128]]"])
    with pytest.raises(ConfigError, match="schedule.lr.g.shape"):
        load_config(None, ["schedule.lr.g.shape=cosine"])
