"""A GAN as players and phases: the loop runs phases; only this file knows the GAN maths.

Each phase trains one player with the others frozen. `D_main` runs `train.d_steps` times per
iteration, each time on a fresh real batch; `G_main` runs once. Later objectives (regularizers
every k steps, several discriminators, CycleGAN) are more phases over more players.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from bigtrain.engine.players import Player
from bigtrain.losses import GanLoss

Stats = dict[str, Tensor]


@dataclass
class RoundInputs:
    """One accumulation round's tensors, already on the device."""

    real: Optional[Tensor]  # [B, C, H, W] in [-1, 1] (or [B, D]); None for phases without real data
    y_real: Optional[Tensor]  # [B] int64 labels of `real`
    z: Tensor  # [B, z_dim] latents
    y_fake: Optional[Tensor]  # [B] int64 labels to generate


@dataclass
class Phase:
    name: str  # "D_main", "G_main", ...
    player: Player  # the one being updated
    frozen: list[Player]  # players whose parameters get no gradient in this phase
    needs_real: bool  # draws a real micro-batch each round
    compute: Callable[[RoundInputs], tuple[Tensor, Stats]]  # -> (loss to minimise, stats)
    repeats: int = 1  # runs per iteration (d_steps for D)


class Objective:
    """The standard two-player GAN: D separates real from fake, G fools D."""

    def __init__(self, G: Player, D: Player, loss: GanLoss, d_steps: int):
        self.G, self.D, self.loss = G, D, loss
        self.phases = [
            Phase("D_main", D, frozen=[G], needs_real=True, compute=self.d_main, repeats=d_steps),
            Phase("G_main", G, frozen=[D], needs_real=False, compute=self.g_main),
        ]

    def d_main(self, b: RoundInputs) -> tuple[Tensor, Stats]:
        # (1) update D: push D(x) up on real data and D(G(z)) down on fakes
        with torch.no_grad():
            fake = self.G.net(b.z, b.y_fake)
        # one forward of cat([real, fake]) keeps D's BN/SN buffers updated once per step
        x = torch.cat([b.real, fake.to(b.real.dtype)])
        y = torch.cat([b.y_real, b.y_fake]) if b.y_fake is not None else None
        logits = self.D.engine(x, y)
        real_logits, fake_logits = logits.split([len(b.real), len(fake)])
        loss = self.loss.d_loss(real_logits, fake_logits)
        stats = {"loss/D": loss.detach(), "D/real": real_logits.detach().float().mean(), "D/fake": fake_logits.detach().float().mean()}
        return loss, stats

    def g_main(self, b: RoundInputs) -> tuple[Tensor, Stats]:
        # (2) update G: make the frozen D score G(z) as real; D is called as its plain module so
        # no DDP/DeepSpeed hook of D's engine runs inside G's backward
        fake = self.G.engine(b.z, b.y_fake)
        fake_logits = self.D.net(fake, b.y_fake)
        loss = self.loss.g_loss(fake_logits)
        return loss, {"loss/G": loss.detach()}
