"""StyleGAN2-ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data";
NVlabs/stylegan2-ada-pytorch): the non-saturating logistic loss, lazy R1 and path-length
regularisation, style mixing, and the adaptive discriminator augmentation (docs/design.md,
"StyleGAN2-ADA").

Phases, as the reference's: `G_main` (softplus(-D(aug(G(z))))), `G_reg` every `pl_interval`
iterations on 1/`pl_batch_shrink` of the micro-batch (path length: |J_w^T y| for image-space noise y
scaled by 1/sqrt(HW), pulled towards its running mean `pl_mean` with `pl_weight`), `D_main`
(softplus(D(aug(G(z)))) + softplus(-D(aug(x)))) and `D_reg` every `r1_interval` iterations
(gamma / 2 |grad_x D(aug(x))|^2, w.r.t. the un-augmented reals). The loop multiplies nothing: each
phase's regulariser is multiplied by its round's gain (its interval). Adam's lr and betas are
corrected by mb_ratio = k / (k + 1) for each player with a lazy regulariser, as the reference does.

ADA: every image D sees goes through the augment pipe (augment.py) with probability p; p follows
r_t = E[sign(D(x_real))], reduced over every rank by the loop (`reads`), every `ada_interval`
iterations: p += sign(r_t - target) * batch * interval / (ada_kimg * 1000), clamped at 0. p and
pl_mean are recipe state (saved, restored exactly, identical on every rank: pl_mean follows the
mean path length over all ranks, where the reference keeps one per GPU).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from bigtrain import sampling
from bigtrain.config import Config, OptimConfig, _check_choice, _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import EngineCaps, Net, Phase, PlayerSpec, Recipe, ReduceMean, Round, Stats, optim_for
from bigtrain.families.stylegan2.augment import AugmentPipe

AUGMENT_MODES = ("ada", "fixed", "noaug")
ADA_KIMG, ADA_KIMG_FROM_TRAINED = 500.0, 100.0  # the reference's, and its value when it resumes from a pickle
COARSE_STYLES = 7  # the ws a style-mixing column gives its cells (the reference's styles 0-6), at most half of them


@dataclass
class Stylegan2Options:
    r1_gamma: float = 10.0  # R1 weight gamma (the reference's presets: cifar 0.01, paper256 1, stylegan2 10)
    r1_interval: int = 16  # lazy R1: the D_reg phase every k iterations, weighted by k (1 = with D_main)
    pl_weight: float = 2.0  # path-length regularisation weight; 0 = off (the reference's cifar preset)
    pl_interval: int = 4  # lazy path length: the G_reg phase every k iterations, weighted by k
    pl_decay: float = 0.01  # decay of the running mean path length
    pl_batch_shrink: int = 2  # G_reg runs on 1/this of each micro-batch
    style_mixing: float = 0.9  # probability of a second z for the layers from a random cutoff (cifar: 0)
    augment: str = "ada"  # ada (p adapts to E[sign(D(real))]) | fixed (p stays augment_p) | noaug
    augment_p: float = 0.0  # p at the start (ada) or throughout (fixed)
    ada_target: float = 0.6  # r_t ADA steers to
    ada_interval: int = 4  # iterations between adjustments of p
    ada_kimg: Optional[float] = None  # images (thousands) for p to go from 0 to 1; null = 500, 100 from trained weights

    def __post_init__(self) -> None:
        for key in ("r1_gamma", "pl_weight", "pl_decay", "style_mixing", "augment_p"):
            _check_positive(f"stylegan2.{key}", getattr(self, key), allow_zero=True)
        for key in ("r1_interval", "pl_interval", "pl_batch_shrink", "ada_interval"):
            _check_positive(f"stylegan2.{key}", getattr(self, key))
        if self.style_mixing > 1 or self.pl_decay > 1:
            key = "style_mixing" if self.style_mixing > 1 else "pl_decay"
            raise ConfigError(f"stylegan2.{key}", f"must be in [0, 1], got {getattr(self, key)}")
        _check_choice("stylegan2.augment", self.augment, AUGMENT_MODES)
        if self.ada_kimg is not None:
            _check_positive("stylegan2.ada_kimg", self.ada_kimg)


def lazy_adam(cfg: OptimConfig, interval: int) -> OptimConfig:
    """Adam for a player whose regulariser runs every `interval` iterations: lr and betas
    corrected by mb_ratio = interval / (interval + 1), as the reference's training loop does."""
    ratio = interval / (interval + 1)
    return dataclasses.replace(cfg, lr=cfg.lr * ratio, betas=[beta**ratio for beta in cfg.betas])


class Stylegan2Recipe(Recipe):
    """G and D of arch stylegan2 with StyleGAN2-ADA's loss, regularisers and augmentation."""

    section = "stylegan2"
    Options = Stylegan2Options
    reads = {"D/sign_real": 1}  # re-set per run to stylegan2.ada_interval in __init__

    def __init__(self, cfg: Config, info: DataInfo):
        super().__init__(cfg, info)
        self.opts: Stylegan2Options = cfg.stylegan2
        for side in ("g", "d"):
            if getattr(cfg.model, side).arch != "stylegan2":
                raise ConfigError(
                    f"model.{side}.arch", "the stylegan2 recipe trains the stylegan2 nets; set it to stylegan2"
                )
        if info.kind != "image":
            raise ConfigError("data.path", f"stylegan2 trains on images; {cfg.data.path} holds vectors")
        self.num_classes = cfg.model.num_classes
        self.reads = {"D/sign_real": self.opts.ada_interval} if self.opts.augment == "ada" else {}
        from_trained = bool(getattr(cfg.train, "init_from", ""))
        self.ada_kimg = self.opts.ada_kimg or (ADA_KIMG_FROM_TRAINED if from_trained else ADA_KIMG)
        self.pipe = AugmentPipe(p=self.opts.augment_p if self.opts.augment != "noaug" else 0.0)
        self.pl_mean = torch.zeros(())
        self.batch = cfg.train.batch_size  # the iteration's global batch (begin_iteration follows the plan)
        weights = torch.tensor(info.label_counts, dtype=torch.float64) if info.label_counts else None
        self.label_weights = weights if weights is not None and weights.sum() > 0 else None

    # ---- players and phases --------------------------------------------------------------
    def players(self) -> list[PlayerSpec]:
        cfg, o = self.cfg, self.opts
        # the reference corrects both players' Adam for their lazy intervals, whether or not the
        # regulariser is on (its cifar preset: pl_weight 0, G's Adam still for interval 4)
        g_optim, d_optim = lazy_adam(optim_for(cfg, "G"), o.pl_interval), optim_for(cfg, "D")
        if o.r1_interval > 1:
            d_optim = lazy_adam(d_optim, o.r1_interval)
        return [
            PlayerSpec(
                "G", lambda: self.build_generator(self.info), g_optim, ema=cfg.ema.enabled, local_buffers=("w_avg",)
            ),
            PlayerSpec("D", lambda: self.build_discriminator(self.info), d_optim),
        ]

    def check_engine(self, caps: dict[str, EngineCaps]) -> None:
        for name, on in (("G", self.opts.pl_weight > 0), ("D", self.opts.r1_gamma > 0)):
            if on and not caps[name].second_order:
                raise ConfigError(
                    "stylegan2",
                    f"{name}'s regulariser needs a second backward through it, which {caps[name].engine} "
                    "cannot do; train it at ZeRO 0-2 (backend.zero_stage or backend.configs)",
                )

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        self.G, self.D = players["G"], players["D"]
        self.reduce_mean = reduce_mean
        device = next(self.D.net.parameters()).device
        self.pipe.to(device)
        self.pl_mean = self.pl_mean.to(device)
        o = self.opts
        self.phases = [Phase("G_main", ("G",), ("D",), self.g_main)]
        if o.pl_weight > 0:
            self.phases.append(
                Phase(
                    "G_reg", ("G",), ("D",), self.g_reg, interval=o.pl_interval, batch_fraction=1.0 / o.pl_batch_shrink
                )
            )
        both = o.r1_gamma > 0 and o.r1_interval == 1  # the reference's Dboth: R1 in the main phase
        self.phases.append(Phase("D_main", ("D",), ("G",), self.d_main, streams=("real",)))
        if o.r1_gamma > 0 and not both:
            self.phases.append(Phase("D_reg", ("D",), ("G",), self.d_reg, streams=("real",), interval=o.r1_interval))

    def latents(self, n: int, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        z_dim, num_ws = self.cfg.model.z_dim, self.G.net.num_ws
        out = {"z": torch.randn(n, z_dim, generator=gen, device=gen.device).to(device)}  # [n, z_dim]
        if self.num_classes:
            if self.label_weights is not None:  # the data's label distribution, as the reference draws labels
                y = torch.multinomial(self.label_weights.to(gen.device), n, replacement=True, generator=gen)
            else:
                y = torch.randint(self.num_classes, (n,), generator=gen, device=gen.device)
            out["y"] = y.to(device)
        if self.opts.style_mixing > 0:
            # per sample: a second z and the first layer it styles (num_ws: none), so that the draws
            # do not depend on how a phase is split into rounds
            cutoff = torch.randint(1, num_ws, (n,), generator=gen, device=gen.device)
            mixed = torch.rand(n, generator=gen, device=gen.device) < self.opts.style_mixing
            out["mix_z"] = torch.randn(n, z_dim, generator=gen, device=gen.device).to(device)
            out["mix_cutoff"] = torch.where(mixed, cutoff, torch.full_like(cutoff, num_ws)).to(device)
        return out

    # ---- G and D through the pipe --------------------------------------------------------------
    def _g_inputs(self, b: Round) -> tuple[tuple, dict]:
        lat = b.latents
        return (lat["z"], lat.get("y")), {
            "mix_z": lat.get("mix_z"),
            "mix_cutoff": lat.get("mix_cutoff"),
            "return_ws": True,
        }

    def _track_w_avg(self, ws: Tensor) -> None:
        """w_avg follows the mean w of this batch over every rank (the reference: each GPU's own)."""
        mapping = self.G.net.mapping
        mean = self.reduce_mean(ws[:, 0].detach().float().mean(dim=0))
        with torch.no_grad():
            mapping.w_avg.copy_(mean.to(mapping.w_avg.dtype).lerp(mapping.w_avg, mapping.w_avg_beta))

    def _d(self, D, img: Tensor, y: Optional[Tensor]) -> Tensor:
        return D(self.pipe(img), y if self.num_classes else None)

    # ---- phases ----------------------------------------------------------------------------------
    def g_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (1) update G: make the frozen D (its plain module) score aug(G(z)) as real
        args, kwargs = self._g_inputs(b)
        img, ws = self.G.engine(*args, **kwargs)
        self._track_w_avg(ws)
        logits = self._d(self.D.net, img, args[1])
        loss = F.softplus(-logits.float()).mean()
        return {"G": loss}, {"loss/G": loss.detach(), "D/fake_for_G": logits.detach().float().mean()}

    def g_reg(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (1b) path length, lazily: E[(|J_w^T y| - a)^2] on a share of the micro-batch, times the gain;
        # the derivative w.r.t. w is taken inside the phase, so G forwards through differentiable_forward
        args, kwargs = self._g_inputs(b)
        (img, ws), anchor = self.G.differentiable_forward(*args, anchor=True, **kwargs)
        self._track_w_avg(ws)
        noise = torch.randn_like(img) / math.sqrt(
            img.shape[2] * img.shape[3]
        )  # the rank's torch RNG: saved, exact resume
        (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grads.float().square().sum(2).mean(1).sqrt()  # [n]
        # the penalty's mean follows this rank's lengths, as the reference's; the state follows every rank's
        target = self.pl_mean.lerp(lengths.mean(), self.opts.pl_decay)
        self.pl_mean = self.pl_mean.lerp(self.reduce_mean(lengths.mean().detach()), self.opts.pl_decay)
        penalty = (lengths - target).square().mean()
        loss = anchor + penalty * self.opts.pl_weight * b.gain
        return {"G": loss}, {"loss/G_pl": penalty.detach(), "G/pl_mean": self.pl_mean.clone()}

    def d_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (2) update D: aug(G(z)) as fake, aug(x) as real, each in its own forward (minibatch stddev)
        args, kwargs = self._g_inputs(b)
        with torch.no_grad():
            fake, ws = self.G.net(*args, **kwargs)
        self._track_w_avg(ws)
        real, y_real = b.data["real"]["x"], b.data["real"].get("y")
        fake_logits = self._d(self.D.engine, fake.to(real.dtype), args[1]).float()
        stats = {}
        if self.opts.r1_gamma > 0 and self.opts.r1_interval == 1:
            real_logits, r1, _ = self._real_with_r1(real, y_real, anchor=False)
            loss_r1 = 0.5 * self.opts.r1_gamma * r1
            stats["loss/D_r1"] = r1.detach()
        else:
            real_logits, loss_r1 = self._d(self.D.engine, real, y_real).float(), 0.0
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean() + loss_r1
        sign = real_logits.detach().sign().mean()
        return {"D": loss}, {
            "loss/D": loss.detach(),
            "D/real": real_logits.detach().mean(),
            "D/fake": fake_logits.detach().mean(),
            "D/sign_real": sign,
            **stats,
        }

    def _real_with_r1(self, real: Tensor, y: Optional[Tensor], anchor: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """(D's logits of aug(x), R1 = E[|grad_x D(aug(x))|^2] w.r.t. the un-augmented reals, the anchor)."""
        x = real.detach().requires_grad_(True)
        logits, zero = self.D.differentiable_forward(self.pipe(x), y if self.num_classes else None, anchor=anchor)
        (grads,) = torch.autograd.grad(logits.float().sum(), x, create_graph=True)
        return logits.float(), grads.float().square().sum(dim=[1, 2, 3]).mean(), zero

    def d_reg(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (2b) R1 lazily, times the gain; the anchor lets D's engine see this phase
        real, y_real = b.data["real"]["x"], b.data["real"].get("y")
        _, r1, anchor = self._real_with_r1(real, y_real, anchor=True)
        loss = anchor + 0.5 * self.opts.r1_gamma * b.gain * r1
        return {"D": loss}, {"loss/D_r1": r1.detach()}

    # ---- the schedule and ADA -----------------------------------------------------------------
    def begin_iteration(self, plan: Any) -> tuple[str, ...]:
        self.batch = plan.batch_size
        return ()

    def read_statistics(self, step: int, means: dict[str, Tensor]) -> None:
        sign = float(means["D/sign_real"])  # one host read per ada_interval iterations
        adjust = math.copysign(1.0, sign - self.opts.ada_target) if sign != self.opts.ada_target else 0.0
        adjust *= self.batch * self.opts.ada_interval / (self.ada_kimg * 1000)
        self.pipe.p.copy_((self.pipe.p + adjust).clamp_min(0.0))  # in float32, as the reference
        self.pipe.p_value = float(self.pipe.p)

    def end_iteration(self) -> Stats:
        return {"augment/p": self.pipe.p.clone()}

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"p": self.pipe.p.detach().cpu().clone(), "pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "p" in state:
            self.pipe.set_p(float(state["p"]))
            self.pl_mean = state["pl_mean"].to(self.pl_mean.device).clone()

    # ---- sampling ---------------------------------------------------------------------------------
    def generate(
        self,
        nets,
        indices,
        *,
        seed,
        truncation=None,
        class_idx=None,
        device="cpu",
        batch_size=64,
        truncation_cutoff: Optional[int] = None,
        noise_mode: str = "const",
    ):
        """Samples for `indices`: z per index (never truncated in Z), truncation in W space with
        psi = `truncation` on the first `truncation_cutoff` layers, noise as `noise_mode` (const:
        sample i depends only on (seed, i), as the reference's generate.py)."""
        G = nets["G"]
        indices = list(indices)
        z = sampling.latents(self.cfg.model.z_dim, indices, seed)  # [N, z_dim]
        y = sampling.labels(self.num_classes, indices, seed, class_idx) if self.num_classes else None
        psi = 1.0 if truncation is None else truncation
        out = []
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                zb = z[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device) if y is not None else None
                out.append(
                    G(zb, yb, truncation_psi=psi, truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
                    .float()
                    .cpu()
                )
        x = torch.cat(out) if out else torch.empty(0)
        return x, y

    def style_mixing(
        self,
        nets,
        rows,
        cols,
        *,
        seed,
        truncation=None,
        device="cpu",
        noise_mode: str = "const",
        truncation_cutoff: Optional[int] = None,
    ) -> Tensor:
        """The reference's style_mixing.py grid: samples 0..rows-1 down the first column, samples
        rows..rows+cols-1 along the first row, and in cell (r, c) sample r with the coarse styles
        (the first COARSE_STYLES ws, at most half) of sample c; the top-left cell is black."""
        G = nets["G"]
        indices = list(range(rows + cols))
        z = sampling.latents(self.cfg.model.z_dim, indices, seed).to(device)
        y = sampling.labels(self.num_classes, indices, seed) if self.num_classes else None
        psi = 1.0 if truncation is None else truncation
        with torch.no_grad():
            ws = G.mapping(z, y.to(device) if y is not None else None, psi, truncation_cutoff)  # [n, num_ws, w_dim]
            row_ws, col_ws = ws[:rows], ws[rows:]
            cells = row_ws[:, None].repeat(1, cols, 1, 1)  # [rows, cols, num_ws, w_dim]
            coarse = min(COARSE_STYLES, G.num_ws // 2)
            cells[:, :, :coarse] = col_ws[None, :, :coarse]
            images = G.synthesis(torch.cat([col_ws, row_ws, cells.flatten(0, 1)]), noise_mode=noise_mode).float().cpu()
        heads, firsts, mixed = (
            images[:cols],
            images[cols : cols + rows],
            images[cols + rows :].view(rows, cols, *images.shape[1:]),
        )
        grid = [torch.full_like(images[0], -1.0), *heads]
        for r in range(rows):
            grid += [firsts[r], *mixed[r]]
        return torch.stack(grid)

    def grid_classes(self, rows: int) -> list[Optional[int]]:
        return [r % self.num_classes if self.num_classes else None for r in range(rows)]
