"""GMAN (Durugkar et al. 2017, "Generative Multi-Adversarial Networks"): one G, K discriminators.

Each D_k is trained with the adversarial loss of `loss.type` on the same real batch and the same
fakes (one G forward shared by the K scores: one phase, one loss per D). G minimises a
combination of its K per-discriminator losses L_k:
- `mean`: the average (the paper's "GMAN-0", lambda = 0);
- `max`: the largest, i.e. the discriminator that currently wins (the paper's "GMAN-max");
- `soft_mean`: sum_k w_k L_k with w = softmax(lambda L), between the two (the paper's
  "GMAN-lambda"). The weights stay in the graph, as the paper's F_soft is differentiated whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from bigtrain.config import Config, _check_choice, _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import Net, Phase, PlayerSpec, ReduceMean, Round, Stats, has_batch_statistics, optim_for
from bigtrain.families.gan.recipe import GRADIENT_PENALTIES, GanRecipe

COMBINERS = ("mean", "max", "soft_mean")


@dataclass
class GmanOptions:
    discriminators: int = 2  # K: players D1..DK, nets from model.d (model.nets.dk over it), optim.dk (else optim.d)
    combiner: str = "mean"  # how G combines its K losses: mean | max | soft_mean
    softmax_lambda: float = 1.0  # soft_mean: lambda of w = softmax(lambda L); 0 = mean, large = max

    def __post_init__(self) -> None:
        _check_positive("gman.discriminators", self.discriminators)
        _check_choice("gman.combiner", self.combiner, COMBINERS)
        _check_positive("gman.softmax_lambda", self.softmax_lambda, allow_zero=True)


def combine(losses: Tensor, combiner: str, softmax_lambda: float = 1.0) -> Tensor:
    """G's loss from its K per-discriminator losses [K] (see the module docstring)."""
    if combiner == "mean":
        return losses.mean()
    if combiner == "max":
        return losses.max()
    weights = torch.softmax(softmax_lambda * losses, dim=0)  # [K]
    return (weights * losses).sum()


class GmanRecipe(GanRecipe):
    """The classic recipe with K discriminators D1..DK."""

    section = "gman"
    Options = GmanOptions

    def _check(self, cfg: Config, info: DataInfo, policy: str) -> None:
        super()._check(cfg, info, policy)
        for key in (*GRADIENT_PENALTIES, "clip_d_weights"):
            if getattr(cfg.loss, key) > 0:
                raise ConfigError(f"loss.{key}", "is not supported by the gman recipe; set it to 0")
        self.opts: GmanOptions = cfg.gman
        self.d_names = tuple(f"D{k + 1}" for k in range(self.opts.discriminators))
        # each D_k is model.d with model.nets.dk over it (a different width, arch, ...)
        self.d_nets = {name: self.net_for(name, "d") for name in self.d_names}
        for name, net in self.d_nets.items():
            section = f"model.nets.{name.lower()}" if name.lower() in cfg.model.nets else "model.d"
            if net.arch == "began":
                raise ConfigError(f"{section}.arch", "the began autoencoder D needs the began recipe")
            if getattr(net, "cond", "auto") == "acgan" or getattr(net, "pack", 1) > 1:
                raise ConfigError(section, "gman supports neither cond: acgan nor pack > 1 in its discriminators")

    def players(self) -> list[PlayerSpec]:
        cfg = self.cfg
        specs = [PlayerSpec("G", lambda: self.build_generator(self.info), optim_for(cfg, "G"), ema=cfg.ema.enabled)]
        specs += [
            PlayerSpec(name, partial(self.build_discriminator, self.info, self.d_nets[name]), optim_for(cfg, name, "d"))
            for name in self.d_names
        ]
        return specs

    def optim_groups(self) -> tuple[str, ...]:
        return ("d",)

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        self.G, self.Ds = players["G"], [players[n] for n in self.d_names]
        self.reduce_mean = reduce_mean
        self.separate = any(has_batch_statistics(d.net) for d in self.Ds)
        self.phases = [
            Phase("D_main", self.d_names, ("G",), self.d_main, streams=("real",), repeats=self.cfg.train.d_steps),
            Phase("G_main", ("G",), self.d_names, self.g_main),
        ]

    def d_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (1) update every D_k on the same real batch and the same fakes
        real, y_real, fake, y_fake = self._d_inputs(b)
        losses, stats = {}, {}
        for name, D in zip(self.d_names, self.Ds):
            s_real, s_fake = self._score(D.engine, [real, fake], [y_real, y_fake])
            losses[name] = self.loss.d_loss(s_real, s_fake)
            stats[f"loss/{name}"] = losses[name].detach()
            stats[f"{name}/real"], stats[f"{name}/fake"] = (
                s_real.detach().float().mean(),
                s_fake.detach().float().mean(),
            )
        return losses, stats

    def g_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (2) update G against the K frozen discriminators, their losses combined
        y_fake = b.latents.get("y")
        fake = self.augment(self.G.engine(b.latents["z"], y_fake))
        per_d = torch.stack([self.loss.g_loss(self._score(D.net, [fake], [y_fake])[0]) for D in self.Ds])  # [K]
        loss = combine(per_d, self.opts.combiner, self.opts.softmax_lambda)
        return {"G": loss}, {
            "loss/G": loss.detach(),
            **{f"loss/G_{n}": v for n, v in zip(self.d_names, per_d.detach())},
        }
