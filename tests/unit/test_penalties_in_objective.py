"""Gradient penalties inside D's update (bigtrain/families/gan/recipe.py): taken through D's plain module, on the
weights of the step's main forward, with one spectral-norm power iteration per step, and
reaching D's parameters. Checked against autograd on a copy of D made before the step."""
import copy
import dataclasses

import torch

from bigtrain.families import load_config
from bigtrain.data import DataInfo
from bigtrain.engine.backends import Backend
from bigtrain.engine.players import Player
from bigtrain.families.base import Round
from bigtrain.families import build_recipe
from bigtrain.losses import regularizers
from bigtrain.families import build_discriminator, build_generator


class CountingEngine(torch.nn.Module):
    """Stands in for DDP / DeepSpeed: forwards to the module and counts the calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args):
        self.calls += 1
        return self.net(*args)


def _objective(*overrides):
    cfg = load_config(None, ["data.resolution=16", "model.z_dim=8", "model.g.width=8", "model.d.width=8", "model.d.spectral_norm=true", *overrides])
    info = DataInfo("image", (1, 16, 16), 0)
    torch.manual_seed(0)
    G, D = build_generator(cfg.model, info), build_discriminator(cfg.model, info)
    backend = Backend()  # the interface's own differentiable_forward, as both engines use it up to ZeRO-2
    G_player = Player(name="G", net=G, engine=G, optimizer=torch.optim.SGD(G.parameters(), lr=0.1), backend=backend)
    D_player = Player(name="D", net=D, engine=CountingEngine(D), optimizer=torch.optim.SGD(D.parameters(), lr=0.1), backend=backend)
    recipe = build_recipe(cfg, info)
    recipe.bind({"G": G_player, "D": D_player}, lambda t: t, 4)
    return recipe, G, D, D_player.engine


def _batch():
    gen = torch.Generator().manual_seed(3)
    real = torch.rand(4, 1, 16, 16, generator=gen) * 2 - 1
    return Round({"real": {"x": real}}, {"z": torch.randn(4, 8, generator=gen)})


def _input_gradient(D, x):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x, None).sum(), x)
    return g.flatten(1)


def test_gradient_penalty_sees_the_step_weights_and_one_power_iteration():
    obj, G, D, engine = _objective("loss.type=wgan", "loss.gp_weight=10")
    b = _batch()
    D_copy = copy.deepcopy(D)
    torch.manual_seed(1)
    losses, stats = obj.d_main(b)
    loss = losses["D"]
    assert engine.calls == 1  # the main scores went through the engine, once

    with torch.no_grad():
        fake = G(b.latents["z"], None)
    D_copy(torch.cat([b.data["real"]["x"], fake]), None)  # one training-mode forward = one power iteration
    torch.manual_seed(1)
    x_hat = regularizers.interpolates(b.data["real"]["x"], fake)
    D_copy.eval()
    expected = ((_input_gradient(D_copy, x_hat).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(stats["loss/D_gp"], expected, rtol=1e-5, atol=1e-7)
    for (name, mine), (_, theirs) in zip(D.state_dict().items(), D_copy.state_dict().items()):
        assert torch.equal(mine, theirs), name  # spectral norm's u/v advanced once, not twice
    assert D.training

    loss.backward()  # (the WGAN loss cancels in the last bias, and the penalty ignores it)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in D.named_parameters() if "weight" in n)


def test_lazy_r1_phase_goes_through_the_engine_and_adds_only_r1():
    obj, G, D, engine = _objective("loss.r1_gamma=2", "loss.r1_interval=4")
    assert [p.name for p in obj.phases] == ["D_main", "D_reg", "G_main"] and obj.phases[1].interval == 4
    b = dataclasses.replace(_batch(), gain=obj.phases[1].interval)  # the loop hands the phase its interval as its gain
    D_copy = copy.deepcopy(D)
    losses, stats = obj.d_reg(b)
    loss = losses["D"]
    assert engine.calls == 1  # DDP / DeepSpeed see the phase's forward
    D_copy(b.data["real"]["x"], None)
    D_copy.eval()
    r1 = _input_gradient(D_copy, b.data["real"]["x"]).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(stats["loss/D_r1"], r1, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, 0.5 * 2 * 4 * r1, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert all(p.grad is not None for p in D.parameters())
