"""A GAN as players and phases: the loop runs phases; only this file knows the GAN maths.

Each phase trains one player with the others frozen. `D_main` runs `train.d_steps` times per
iteration, each time on a fresh real batch; `D_reg` (lazy R1) every `loss.r1_interval`
iterations; `G_main` once. D is run ONCE per phase on everything it must score
(`cat([real, fake, extra])`), so its buffers update once per step and DDP broadcasts them once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from bigtrain.config import Config
from bigtrain.data.augment import diff_augment
from bigtrain.engine.players import Player
from bigtrain.errors import ConfigError
from bigtrain.losses import build_loss, gan, regularizers

Stats = dict[str, Tensor]
ReduceMean = Callable[[Tensor], Tensor]


@dataclass
class RoundInputs:
    """One accumulation round's tensors, already on the device."""

    real: Optional[Tensor]  # [B, C, H, W] in [-1, 1] (or [B, D]); None for phases without real data
    y_real: Optional[Tensor]  # [B] int64 labels of `real`
    z: Tensor  # [B, z_dim] latents
    y_fake: Optional[Tensor]  # [B] int64 labels to generate


@dataclass
class Phase:
    name: str  # "D_main", "D_reg", "G_main", ...
    player: Player  # the one being updated
    frozen: list[Player]  # players whose parameters get no gradient in this phase
    needs_real: bool  # draws a real micro-batch each round
    compute: Callable[[RoundInputs], tuple[Tensor, Stats]]  # -> (loss to minimise, stats)
    repeats: int = 1  # runs per iteration (d_steps for D)
    interval: int = 1  # runs only every `interval` iterations (lazy regularization)
    clamp_weights: float = 0.0  # > 0: the player's weights are clamped to [-c, c] after each step (WGAN)


def _cat(parts: list[Optional[Tensor]]) -> Optional[Tensor]:
    return None if parts[0] is None else torch.cat(parts)


class Objective:
    """The two-player GAN with its loss, regularizers, auxiliary classifier and augmentation."""

    def __init__(self, G: Player, D: Player, cfg: Config, reduce_mean: ReduceMean):
        self.G, self.D, self.cfg = G, D, cfg
        self.lcfg = cfg.loss
        self.loss = build_loss(cfg.loss)
        self.reduce_mean = reduce_mean
        self.acgan = cfg.model.d.cond == "acgan" and cfg.model.num_classes > 0
        policy = cfg.augment.policy.strip()
        self.augment: Callable[[Tensor], Tensor] = partial(diff_augment, policy=policy) if policy else (lambda x: x)
        lazy_r1 = self.lcfg.r1_gamma > 0 and self.lcfg.r1_interval > 1
        # gradient penalties backpropagate through D's input gradient: a second-order backward
        self.penalizes_d_gradient = max(self.lcfg.gp_weight, self.lcfg.dragan_weight, self.lcfg.r1_gamma) > 0
        # WGAN (Arjovsky et al. 2017) keeps the critic K-Lipschitz by clipping its weights; the
        # backend clamps them, since under DeepSpeed the optimizer's master copy must follow
        self.phases = [Phase("D_main", D, frozen=[G], needs_real=True, compute=self.d_main, repeats=cfg.train.d_steps, clamp_weights=self.lcfg.clip_d_weights)]
        if lazy_r1:
            self.phases.append(Phase("D_reg", D, frozen=[G], needs_real=True, compute=self.d_reg, interval=self.lcfg.r1_interval))
        self.phases.append(Phase("G_main", G, frozen=[D], needs_real=False, compute=self.g_main))

    # D's outputs: [N] scores, or [N, 1 + classes] with an auxiliary classifier (AC-GAN)
    def _split(self, out: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        return (out[:, 0], out[:, 1:]) if self.acgan else (out, None)

    def _class_loss(self, class_logits: Optional[Tensor], y: Optional[Tensor]) -> Tensor:
        return self.lcfg.acgan_weight * F.cross_entropy(class_logits.float(), y)

    def d_main(self, b: RoundInputs) -> tuple[Tensor, Stats]:
        # (1) update D: score real data as real and G(z) as fake, plus its regularizers
        with torch.no_grad():
            fake = self.G.net(b.z, b.y_fake).to(b.real.dtype)
        real, fake = self.augment(b.real), self.augment(fake)
        n = len(real)
        out = self.D.engine(torch.cat([real, fake]), _cat([b.y_real, b.y_fake]))
        scores, class_logits = self._split(out)
        loss = self.loss.d_loss(scores[:n], scores[n:])
        stats = {"loss/D": loss.detach(), "D/real": scores[:n].detach().float().mean(), "D/fake": scores[n:].detach().float().mean()}
        penalties = []
        if self.lcfg.gp_weight > 0:
            penalties.append(("loss/D_gp", self.lcfg.gp_weight, regularizers.gradient_penalty, regularizers.interpolates(real.detach(), fake)))
        if self.lcfg.dragan_weight > 0:
            penalties.append(("loss/D_dragan", self.lcfg.dragan_weight, regularizers.gradient_penalty, regularizers.dragan_perturbed(real.detach())))
        if self.lcfg.r1_gamma > 0 and self.lcfg.r1_interval == 1:
            penalties.append(("loss/D_r1", 0.5 * self.lcfg.r1_gamma, regularizers.r1_penalty, real))
        for name, weight, penalty, x in penalties:
            value = penalty(*self._penalty_scores(x, b.y_real))
            loss = loss + weight * value
            stats[name] = value.detach()
        if self.acgan:
            cls = self._class_loss(class_logits, torch.cat([b.y_real, b.y_fake]))
            loss = loss + cls
            stats["loss/D_cls"] = cls.detach()
        return loss, stats

    def _penalty_scores(self, x: Tensor, y: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """D's scores of `x` for a gradient penalty, with `x` as a leaf that requires grad.

        The penalty differentiates the scores w.r.t. `x` inside the forward (autograd.grad with
        create_graph), so they come from D's plain module, not its engine: a DeepSpeed engine
        treats any backward through its outputs as the training backward (it divides by the
        accumulation rounds, starts its gradient reduction, and fails inside autograd.grad). The
        module runs in eval mode, so spectral norm reuses the power iteration this step's engine
        forward just did instead of taking a second one; D has no batch norm (it is refused).
        """
        x = x.detach().requires_grad_(True)
        was_training = self.D.net.training
        self.D.net.eval()
        try:
            scores, _ = self._split(self.D.net(x, y))
        finally:
            self.D.net.train(was_training)
        return scores, x

    def d_reg(self, b: RoundInputs) -> tuple[Tensor, Stats]:
        # (1b) lazy R1 every k iterations, weighted by k so its strength matches R1 every step
        real = self.augment(b.real)
        # the engine must see this phase's forward: DDP's gradient all-reduce and DeepSpeed's
        # backward bookkeeping start from it; it adds nothing to the loss
        anchor = self.D.engine(real, b.y_real).float().sum() * 0.0
        r1 = regularizers.r1_penalty(*self._penalty_scores(real, b.y_real))
        return anchor + 0.5 * self.lcfg.r1_gamma * self.lcfg.r1_interval * r1, {"loss/D_r1": r1.detach()}

    def g_main(self, b: RoundInputs) -> tuple[Tensor, Stats]:
        # (2) update G: make the frozen D score G(z) as real; D is called as its plain module so
        # no DDP/DeepSpeed hook of D's engine runs inside G's backward
        fake = self.G.engine(b.z, b.y_fake)
        scores, class_logits = self._split(self.D.net(self.augment(fake), b.y_fake))
        loss = self.loss.g_loss(scores)
        stats = {"loss/G": loss.detach()}
        if self.acgan:
            cls = self._class_loss(class_logits, b.y_fake)
            loss = loss + cls
            stats["loss/G_cls"] = cls.detach()
        return loss, stats

    def end_iteration(self) -> Stats:
        """Per-iteration bookkeeping after all phases; returns stats to report."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class BeganObjective(Objective):
    """BEGAN (Berthelot et al. 2017): D is an autoencoder scoring samples by reconstruction error.

    L_D = L(x) - k_t L(G(z_D)), L_G = L(G(z_G)), and after each iteration
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1). The errors are averaged over
    ranks before the update, so k_t stays identical everywhere.
    """

    def __init__(self, G: Player, D: Player, cfg: Config, reduce_mean: ReduceMean):
        super().__init__(G, D, cfg, reduce_mean)
        self.k = cfg.loss.began_k0
        self._real_err: list[Tensor] = []
        self._fake_err: list[Tensor] = []

    def d_main(self, b: RoundInputs) -> tuple[Tensor, Stats]:
        with torch.no_grad():
            fake = self.G.net(b.z, b.y_fake).to(b.real.dtype)
        errors = self.D.engine(torch.cat([self.augment(b.real), self.augment(fake)]), None)
        real_err, fake_err = errors.float().split([len(b.real), len(fake)])
        loss = gan.began_d_loss(real_err, fake_err, self.k)
        self._real_err.append(real_err.detach().mean())
        return loss, {"loss/D": loss.detach(), "D/real": real_err.detach().mean(), "D/fake": fake_err.detach().mean()}

    def g_main(self, b: RoundInputs) -> tuple[Tensor, Stats]:
        fake_err = self.D.net(self.augment(self.G.engine(b.z, b.y_fake)), None).float()
        loss = fake_err.mean()
        self._fake_err.append(loss.detach())
        return loss, {"loss/G": loss.detach()}

    def end_iteration(self) -> Stats:
        means = self.reduce_mean(torch.stack([torch.stack(self._real_err).mean(), torch.stack(self._fake_err).mean()]))
        real_err, fake_err = means.tolist()  # BEGAN's control needs the values on the host
        self._real_err.clear()
        self._fake_err.clear()
        gamma = self.lcfg.began_gamma
        self.k = gan.began_k_update(self.k, real_err, fake_err, gamma, self.lcfg.began_lambda_k)
        return {"began/k": torch.tensor(self.k), "began/M_global": torch.tensor(gan.began_convergence(real_err, fake_err, gamma))}

    def state_dict(self) -> dict:
        return {"k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = float(state["k"])


def build_objective(G: Player, D: Player, cfg: Config, reduce_mean: ReduceMean) -> Objective:
    """The objective for `loss.type` (BEGAN has its own), with the config's consistency checks."""
    lcfg = cfg.loss
    if lcfg.type == "began" and cfg.model.d.arch != "began":
        raise ConfigError("loss.type", "began needs the autoencoder discriminator: set model.d.arch=began")
    if cfg.model.d.arch == "began" and lcfg.type != "began":
        raise ConfigError("model.d.arch", "the began autoencoder D needs loss.type=began")
    if cfg.model.d.cond == "acgan" and cfg.model.num_classes == 0:
        raise ConfigError("model.d.cond", "acgan needs class labels: set model.num_classes")
    return (BeganObjective if lcfg.type == "began" else Objective)(G, D, cfg, reduce_mean)
