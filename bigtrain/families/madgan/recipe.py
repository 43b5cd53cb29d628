"""MAD-GAN (Ghosh et al. 2018, "Multi-Agent Diverse Generative Adversarial Networks").

K generators share every layer but the last (one player `G` holding a shared perceptron trunk
and K output heads, as the paper shares parameters); D has K + 1 outputs: which generator made
a sample, or "real" (the last). D maximises log D_real(x) + sum_k log D_k(G_k(z)); each G_k
maximises log D_real(G_k(z)) (the non-saturating form). To tell the generators apart, D must
push them to different modes: that is the diversity the method is after.

Sampling mixes the generators (sample i comes from head i mod K) unless one head is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain import sampling
from bigtrain.config import Config, _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import Net, Phase, PlayerSpec, Recipe, ReduceMean, Round, Stats, optim_for
from bigtrain.families.gan.mlp import MlpDConfig, MlpGConfig, hidden_layers
from bigtrain.families.gan.options import CLASSIC_SECTIONS


@dataclass
class MadganOptions:
    generators: int = 4  # K generators (heads of one shared trunk)

    def __post_init__(self) -> None:
        _check_positive("madgan.generators", self.generators)


class MultiHeadGenerator(nn.Module):
    """z [N, z_dim] -> K outputs [K, N, *shape]: a shared ReLU perceptron, then K linear heads."""

    def __init__(self, net: MlpGConfig, z_dim: int, heads: int, info: DataInfo):
        super().__init__()
        self.shape = tuple(info.shape)
        self.trunk = nn.Sequential(*hidden_layers(z_dim, net.width, net.depth, nn.ReLU))
        self.heads = nn.ModuleList(nn.Linear(net.width, math.prod(self.shape)) for _ in range(heads))
        self.out = nn.Tanh() if info.kind == "image" else nn.Identity()

    def forward(self, z: Tensor, head: Optional[int] = None) -> Tensor:
        h = self.trunk(z)  # [N, width]
        heads = self.heads if head is None else [self.heads[head]]
        return torch.stack([self.out(f(h).view(len(z), *self.shape)) for f in heads])  # [K, N, *shape]


class MadganDiscriminator(nn.Module):
    """x [N, *shape] -> logits [N, K + 1] (column k: made by G_k; column K: real)."""

    def __init__(self, net: MlpDConfig, heads: int, info: DataInfo):
        super().__init__()
        self.features = nn.Sequential(
            *hidden_layers(math.prod(info.shape), net.width, net.depth, lambda: nn.LeakyReLU(0.2))
        )
        self.head = nn.Linear(net.width, heads + 1)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.head(self.features(x.flatten(1)))


class MadganRecipe(Recipe):
    """G (K heads) and a (K + 1)-way D; `model.g` / `model.d` (arch mlp) give widths and depths."""

    sections = CLASSIC_SECTIONS
    section = "madgan"
    Options = MadganOptions
    conditional_sampling = False

    def __init__(self, cfg: Config, info: DataInfo):
        super().__init__(cfg, info)
        self.K = cfg.madgan.generators
        self.z_dim = cfg.model.z_dim
        if cfg.model.num_classes:
            raise ConfigError("model.num_classes", "madgan is unconditional; set it to 0")
        for side, net in (("g", cfg.model.g), ("d", cfg.model.d)):
            if net.arch != "mlp":
                raise ConfigError(
                    f"model.{side}.arch", "madgan's nets are perceptrons sized by mlp's width and depth; set it to mlp"
                )
            for f in fields(net):
                if f.name not in ("arch", "width", "depth") and getattr(net, f.name) != f.default:
                    raise ConfigError(
                        f"model.{side}.{f.name}",
                        "is not read by the madgan recipe, whose nets take width and depth only",
                    )
        for key in ("gp_weight", "r1_gamma", "dragan_weight", "clip_d_weights"):
            if getattr(cfg.loss, key) > 0:
                raise ConfigError(f"loss.{key}", "is not supported by the madgan recipe; set it to 0")
        if cfg.augment.policy.strip():
            raise ConfigError("augment.policy", "is not supported by the madgan recipe")

    def players(self) -> list[PlayerSpec]:
        cfg = self.cfg
        return [
            PlayerSpec(
                "G",
                lambda: MultiHeadGenerator(cfg.model.g, self.z_dim, self.K, self.info),
                optim_for(cfg, "G"),
                ema=cfg.ema.enabled,
            ),
            PlayerSpec("D", lambda: MadganDiscriminator(cfg.model.d, self.K, self.info), optim_for(cfg, "D")),
        ]

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        self.G, self.D = players["G"], players["D"]
        self.phases = [
            Phase("D_main", ("D",), ("G",), self.d_main, streams=("real",), repeats=self.cfg.train.d_steps),
            Phase("G_main", ("G",), ("D",), self.g_main),
        ]

    def latents(self, n: int, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        return {"z": torch.randn(n, self.z_dim, generator=gen, device=gen.device).to(device)}

    def _targets(self, n: int, device: torch.device) -> Tensor:
        return torch.arange(self.K, device=device).repeat_interleave(n)  # [K n]: head k's samples are class k

    def d_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (1) update D: tell real data (class K) from each generator's samples (class k)
        real = b.data["real"]["x"]
        with torch.no_grad():
            fakes = self.G.net(b.latents["z"]).to(real.dtype)  # [K, n, ...]
        n = len(real)
        logits = self.D.engine(torch.cat([real, fakes.flatten(0, 1)]), None).float()  # [(K + 1) n, K + 1]
        real_loss = F.cross_entropy(logits[:n], torch.full((n,), self.K, device=real.device))
        fake_loss = F.cross_entropy(logits[n:], self._targets(n, real.device)) * self.K  # sum over k of per-head means
        p_real = logits.softmax(dim=1)[:, self.K].detach()
        loss = real_loss + fake_loss
        return {"D": loss}, {"loss/D": loss.detach(), "D/real": p_real[:n].mean(), "D/fake": p_real[n:].mean()}

    def g_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (2) update every G_k: make D call its samples real
        fakes = self.G.engine(b.latents["z"])  # [K, n, ...]
        logits = self.D.net(fakes.flatten(0, 1), None).float()
        loss = F.cross_entropy(logits, torch.full((len(logits),), self.K, device=logits.device)) * self.K
        return {"G": loss}, {"loss/G": loss.detach()}

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
        head: Optional[int] = None,
    ):
        """Sample i from head `head`, or from head i mod K (a mixture of the K generators)."""
        if class_idx is not None:
            raise ConfigError("--class", "madgan is unconditional")
        if head is not None and not 0 <= head < self.K:
            raise ConfigError("--head", f"{head} is out of range 0..{self.K - 1}")
        indices = [int(i) for i in indices]
        z_all = sampling.latents(self.z_dim, indices, seed, truncation)
        G = nets["G"]
        was_training = G.training
        G.eval()
        out = []
        try:
            with torch.no_grad():
                for lo in range(0, len(indices), batch_size):
                    z = z_all[lo : lo + batch_size].to(device)
                    idx = torch.tensor(indices[lo : lo + batch_size])
                    if head is not None:
                        out.append(G(z, head)[0].float().cpu())
                    else:
                        every = G(z).float().cpu()  # [K, n, ...]
                        out.append(every[idx % self.K, torch.arange(len(idx))])
        finally:
            G.train(was_training)
        return (torch.cat(out) if out else torch.empty(0)), None
