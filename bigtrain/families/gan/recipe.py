"""The classic two-player GAN: G and D, the losses of bigtrain.losses, gradient penalties,
AC-GAN, DiffAugment and PacGAN packing (docs/design.md, "The classic recipe").

Phases: `D_main` runs `train.d_steps` times per iteration, each on a fresh real batch; `D_reg`
(lazy R1) every `loss.r1_interval` iterations; `G_main` once. When D has no batch statistics it
scores everything in ONE forward (`cat([real, fake])`), so its buffers update once per step and
DDP broadcasts them once; with batch norm or minibatch stddev in D, real and fake are forwarded
apart so that no statistic mixes them.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain import sampling
from bigtrain.config import Config
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import (
    EngineCaps,
    Net,
    Phase,
    PlayerSpec,
    Recipe,
    ReduceMean,
    Round,
    Stats,
    has_batch_statistics,
    optim_for,
)
from bigtrain.families.gan.augment import diff_augment
from bigtrain.families.gan.options import CLASSIC_SECTIONS
from bigtrain.losses import build_loss, regularizers

GRADIENT_PENALTIES = ("gp_weight", "dragan_weight", "r1_gamma")


def _cat(parts: Sequence[Optional[Tensor]]) -> Optional[Tensor]:
    return None if parts[0] is None else torch.cat(list(parts))


def packed_info(info: DataInfo, pack: int) -> DataInfo:
    """What D sees with PacGAN packing: m samples joined along channels (or features)."""
    if pack == 1:
        return info
    return replace(info, shape=(info.shape[0] * pack, *info.shape[1:]))


def pack_samples(x: Tensor, pack: int) -> Tensor:
    """[N, C, ...] -> [N / m, m C, ...]: m consecutive samples concatenated along dim 1."""
    if pack == 1:
        return x
    return x.reshape(x.shape[0] // pack, x.shape[1] * pack, *x.shape[2:])


class GanRecipe(Recipe):
    """G and D with the adversarial loss named by `loss.type` and the regularizers in `loss`."""

    sections = CLASSIC_SECTIONS
    gp_target: float = 1.0  # the gradient norm the WGAN-GP penalty pulls to (progan sets its own)
    drift: float = 0.0  # weight of E[D(x)^2] on reals in D's loss (progan's epsilon drift)

    def __init__(self, cfg: Config, info: DataInfo):
        super().__init__(cfg, info)
        self.lcfg = cfg.loss
        self.z_dim, self.num_classes = cfg.model.z_dim, cfg.model.num_classes
        self.conditional = self.num_classes > 0
        # began's D has neither key, grid's (unconditional) no `cond` (each arch's section class)
        self.pack: int = getattr(cfg.model.d, "pack", 1)
        self.d_cond: str = getattr(cfg.model.d, "cond", "auto")
        self.acgan = self.d_cond == "acgan" and self.conditional
        self.loss = build_loss(cfg.loss)
        policy = cfg.augment.policy.strip()
        self.augment: Callable[[Tensor], Tensor] = partial(diff_augment, policy=policy) if policy else (lambda x: x)
        self.penalizes_d_gradient = max(getattr(self.lcfg, k) for k in GRADIENT_PENALTIES) > 0
        self._check(cfg, info, policy)

    def _check(self, cfg: Config, info: DataInfo, policy: str) -> None:
        """Cross-field checks, before any engine starts."""
        if self.d_cond == "acgan" and not self.conditional:
            raise ConfigError("model.d.cond", "acgan needs class labels: set model.num_classes")
        if cfg.model.d.arch == "began":
            raise ConfigError("model.d.arch", "the began autoencoder D needs loss.type=began")
        for side in ("g", "d"):
            arch = getattr(cfg.model, side).arch
            if self.archs[arch].maps != "z":
                raise ConfigError(
                    f"model.{side}.arch",
                    f"{arch} nets translate images (G(x) -> y), and this recipe samples from z; use a recipe for them "
                    f"(recipe: {arch})",
                )
        if policy and info.kind != "image":
            raise ConfigError(
                "augment.policy",
                f"DiffAugment works on images, but {cfg.data.path} holds vectors; set augment.policy=''",
            )
        if self.pack > 1:
            if self.conditional:
                raise ConfigError(
                    "model.d.pack",
                    "PacGAN packing is for unconditional models; set model.num_classes=0 or model.d.pack=1",
                )

    # ---- players and phases --------------------------------------------------------------
    def players(self) -> list[PlayerSpec]:
        cfg = self.cfg
        return [
            PlayerSpec("G", lambda: self.build_generator(self.info), optim_for(cfg, "G"), ema=cfg.ema.enabled),
            PlayerSpec("D", lambda: self.build_discriminator(packed_info(self.info, self.pack)), optim_for(cfg, "D")),
        ]

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        if micro_batch % self.pack:
            raise ConfigError(
                "model.d.pack",
                f"{self.pack} does not divide the micro-batch ({micro_batch} per process); D scores packs of m samples",
            )
        self.G, self.D = players["G"], players["D"]
        self.reduce_mean = reduce_mean
        self.separate = has_batch_statistics(self.D.net)
        if self.penalizes_d_gradient and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.D.net.modules()
        ):
            # minibatch stddev is the same in eval mode (over the penalty's own batch, as ProGAN's
            # official code scores it)
            raise ConfigError(
                "model.d",
                "gradient penalties score D in eval mode, which batch norm in D would change; use no batch norm in D "
                "with loss.gp_weight, dragan_weight or r1_gamma",
            )
        lcfg = self.lcfg
        # WGAN (Arjovsky et al. 2017) keeps the critic K-Lipschitz by clipping its weights; the
        # backend clamps them, since under DeepSpeed the optimizer's master copy must follow
        self.phases = [
            Phase(
                "D_main",
                ("D",),
                ("G",),
                self.d_main,
                streams=("real",),
                repeats=self.cfg.train.d_steps,
                clamp_weights=lcfg.clip_d_weights,
            )
        ]
        if lcfg.r1_gamma > 0 and lcfg.r1_interval > 1:
            self.phases.append(Phase("D_reg", ("D",), ("G",), self.d_reg, streams=("real",), interval=lcfg.r1_interval))
        self.phases.append(Phase("G_main", ("G",), ("D",), self.g_main))

    def check_engine(self, caps: dict[str, EngineCaps]) -> None:
        if self.penalizes_d_gradient and not caps["D"].second_order:
            raise ConfigError(
                "loss",
                "gradient penalties (gp_weight, dragan_weight, r1_gamma) need a second backward through D, which "
                f"{caps['D'].engine} cannot do (it releases D's weights before it); train D at ZeRO 0-2 "
                "(backend.zero_stage or backend.configs.d)",
            )

    def latents(self, n: int, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        # on the generator's device (the loop's is the backend's: no copy); .to is then a no-op
        z = torch.randn(n, self.z_dim, generator=gen, device=gen.device)  # [n, z_dim]
        out = {"z": z.to(device)}
        if self.conditional:
            out["y"] = torch.randint(self.num_classes, (n,), generator=gen, device=gen.device).to(device)  # [n]
        return out

    # ---- D's scores ------------------------------------------------------------------------
    # D's outputs: [N] scores, or [N, 1 + classes] with an auxiliary classifier (AC-GAN)
    def _split(self, out: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        return (out[:, 0], out[:, 1:]) if self.acgan else (out, None)

    def _class_loss(self, class_logits: Optional[Tensor], y: Optional[Tensor]) -> Tensor:
        return self.lcfg.acgan_weight * F.cross_entropy(class_logits.float(), y)

    def _score(self, D: nn.Module, parts: list[Tensor], labels: list[Optional[Tensor]]) -> list[Tensor]:
        """D's outputs for each part: one forward of their concatenation, or one forward each
        when D has batch statistics (so real and fake never share them)."""
        packed = [pack_samples(x, self.pack) for x in parts]
        if self.separate:
            return [D(x, y) for x, y in zip(packed, labels)]
        out = D(torch.cat(packed), _cat(labels))
        return list(out.split([len(x) for x in packed]))

    def _real(self, b: Round) -> tuple[Tensor, Optional[Tensor]]:
        batch = b.data["real"]
        return batch["x"], (batch.get("y") if self.conditional else None)

    def _d_inputs(self, b: Round) -> tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
        """(real, y_real, fake, y_fake) for a D phase: G(z) without gradient, both augmented."""
        real, y_real = self._real(b)
        y_fake = b.latents.get("y")
        with torch.no_grad():
            fake = self.G.net(b.latents["z"], y_fake).to(real.dtype)
        return self.augment(real), y_real, self.augment(fake), y_fake

    # ---- phases ----------------------------------------------------------------------------
    def d_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (1) update D: score real data as real and G(z) as fake, plus its regularizers
        real, y_real, fake, y_fake = self._d_inputs(b)
        out_real, out_fake = self._score(self.D.engine, [real, fake], [y_real, y_fake])
        (s_real, c_real), (s_fake, c_fake) = self._split(out_real), self._split(out_fake)
        loss = self.loss.d_loss(s_real, s_fake)
        stats = {
            "loss/D": loss.detach(),
            "D/real": s_real.detach().float().mean(),
            "D/fake": s_fake.detach().float().mean(),
        }
        lcfg, penalties = self.lcfg, []
        if (
            lcfg.gp_weight > 0
        ):  # target gamma: lambda / gamma^2 (|grad| - gamma)^2 (Karras et al. 2018; gamma 1 = WGAN-GP)
            gp = partial(regularizers.gradient_penalty, center=self.gp_target)
            penalties.append(
                ("loss/D_gp", lcfg.gp_weight / self.gp_target**2, gp, regularizers.interpolates(real.detach(), fake))
            )
        if lcfg.dragan_weight > 0:
            penalties.append(
                (
                    "loss/D_dragan",
                    lcfg.dragan_weight,
                    regularizers.gradient_penalty,
                    regularizers.dragan_perturbed(real.detach()),
                )
            )
        if lcfg.r1_gamma > 0 and lcfg.r1_interval == 1:
            penalties.append(("loss/D_r1", 0.5 * lcfg.r1_gamma, regularizers.r1_penalty, real))
        for name, weight, penalty, x in penalties:
            scores, x, _ = self._penalty_scores(x, y_real)
            value = penalty(scores, x)
            loss = loss + weight * value
            stats[name] = value.detach()
        if self.drift > 0:  # ProGAN's epsilon drift: keeps D's scores of reals near 0
            drift = s_real.float().square().mean()
            loss = loss + self.drift * drift
            stats["loss/D_drift"] = drift.detach()
        if self.acgan:
            cls = self._class_loss(torch.cat([c_real, c_fake]), torch.cat([y_real, y_fake]))
            loss = loss + cls
            stats["loss/D_cls"] = cls.detach()
        return {"D": loss}, stats

    def _penalty_scores(self, x: Tensor, y: Optional[Tensor], anchor: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(D's scores of `x` for a gradient penalty, `x` as a leaf that requires grad, the
        anchor): the penalty differentiates the scores w.r.t. `x` inside the forward, so they
        come through D's differentiable_forward (D in eval mode: spectral norm reuses the power
        iteration this step's forward did)."""
        x = x.detach().requires_grad_(True)
        out, zero = self.D.differentiable_forward(pack_samples(x, self.pack), y, anchor=anchor)
        scores, _ = self._split(out)
        return scores, x, zero

    def d_reg(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (1b) lazy R1 every k iterations, weighted by k (the phase's gain) so its strength
        # matches R1 every step; the anchor lets D's engine see a phase that has no other forward
        real, y_real = self._real(b)
        scores, x, anchor = self._penalty_scores(self.augment(real), y_real, anchor=True)
        r1 = regularizers.r1_penalty(scores, x)
        return {"D": anchor + 0.5 * self.lcfg.r1_gamma * b.gain * r1}, {"loss/D_r1": r1.detach()}

    def g_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (2) update G: make the frozen D score G(z) as real; D is called as its plain module so
        # no DDP/DeepSpeed hook of D's engine runs inside G's backward
        y_fake = b.latents.get("y")
        fake = self.G.engine(b.latents["z"], y_fake)
        (out,) = self._score(self.D.net, [self.augment(fake)], [y_fake])
        scores, class_logits = self._split(out)
        loss = self.loss.g_loss(scores)
        stats = {"loss/G": loss.detach()}
        if self.acgan:
            cls = self._class_loss(class_logits, y_fake)
            loss = loss + cls
            stats["loss/G_cls"] = cls.detach()
        return {"G": loss}, stats

    # ---- sampling --------------------------------------------------------------------------
    def generate(self, nets, indices, *, seed, truncation=None, class_idx=None, device="cpu", batch_size=64):
        return sampling.generate(
            nets["G"],
            z_dim=self.z_dim,
            num_classes=self.num_classes,
            indices=indices,
            seed=seed,
            truncation=truncation,
            class_idx=class_idx,
            device=device,
            batch_size=batch_size,
        )

    def grid_classes(self, rows: int) -> list[Optional[int]]:
        return [r % self.num_classes if self.conditional else None for r in range(rows)]

    def standing_statistics(self, nets, batches, batch_size, *, seed, truncation=None, device="cpu"):
        return sampling.standing_statistics(
            nets["G"],
            z_dim=self.z_dim,
            num_classes=self.num_classes,
            batches=batches,
            batch_size=batch_size,
            seed=seed,
            truncation=truncation,
            device=device,
        )

    def interpolation(self, nets, rows, steps, *, kind, seed, truncation=None, device="cpu"):
        return sampling.interpolation(
            nets["G"],
            z_dim=self.z_dim,
            num_classes=self.num_classes,
            rows=rows,
            steps=steps,
            seed=seed,
            kind=kind,
            truncation=truncation,
            device=device,
        )
