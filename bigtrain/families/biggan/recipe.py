"""BigGAN (Brock et al. 2019): the classic recipe on the biggan nets (nets.py, deep.py)
with BigGAN's orthogonal regularisation (docs/design.md, "BigGAN").

The loss, D steps per G step, Adam settings, EMA and accumulation are the ordinary keys
(`loss.type: hinge`, `train.d_steps`, `optim.*`, `ema.decay` / `ema.start_kimg`,
`train.micro_batch`); this recipe adds `biggan.ortho_g` / `biggan.ortho_d`. The penalty's
gradient is added to each weight's gradient between backward and step, through the phase's
`before_step` hook, so it works the same under both backends and costs no extra backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from bigtrain.config import Config
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import EngineCaps, GradAccess, Net, ReduceMean
from bigtrain.families.gan.recipe import GanRecipe


@dataclass
class BigganOptions:
    ortho_g: float = 1e-4  # orthogonal regularisation beta on G's weights (paper, BigGAN-PyTorch: 1e-4); 0 = off
    ortho_d: float = 0.0  # the same on D's (BigGAN-PyTorch's D_ortho, 0 by default)

    def __post_init__(self) -> None:
        for key in ("ortho_g", "ortho_d"):
            if getattr(self, key) < 0:
                raise ConfigError(f"biggan.{key}", f"must be >= 0, got {getattr(self, key)}")


def ortho_penalty(weight: Tensor) -> Tensor:
    """BigGAN's off-diagonal orthogonal regularisation of one weight, W viewed as [out, in*k*k]:
    0.5 * ||W W^T * (1 - I)||_F^2 (fp32). The 0.5 is BigGAN-PyTorch's: its `utils.ortho` adds
    2 (W W^T * (1 - I)) W, the gradient of this, while the paper writes the penalty without it
    (docs/design.md, "BigGAN")."""
    w = weight.reshape(weight.shape[0], -1).float()
    gram = w @ w.t()
    return 0.5 * (gram * (1.0 - torch.eye(w.shape[0], device=w.device))).square().sum()


def ortho_gradient(weight: Tensor) -> Tensor:
    """d ortho_penalty / d weight, in closed form: 2 (W W^T * (1 - I)) W, fp32, weight's shape."""
    w = weight.reshape(weight.shape[0], -1).float()
    gram = w @ w.t()
    gram.fill_diagonal_(0.0)
    return (2.0 * gram @ w).view(weight.shape)


def regularized_weights(net: nn.Module) -> Iterable[nn.Parameter]:
    """The weights BigGAN-PyTorch regularises: every parameter with 2+ dimensions, except G's
    shared class embedding (its `blacklist`)."""
    shared = getattr(net, "shared", None)
    skip = {id(p) for p in shared.parameters()} if isinstance(shared, nn.Module) else set()
    return [p for p in net.parameters() if p.dim() >= 2 and id(p) not in skip]


def add_ortho_gradient(beta: float) -> Callable[[str, nn.Module, GradAccess], None]:
    """A before_step hook adding beta x ortho_gradient to each regularised weight's gradient."""

    @torch.no_grad()
    def hook(name: str, net: nn.Module, grads: GradAccess) -> None:
        for p in regularized_weights(net):
            grad = grads.get(p)
            if grad is not None:
                grads.set(p, grad + (beta * ortho_gradient(p.detach())).to(grad.dtype))

    return hook


class BigganRecipe(GanRecipe):
    """G and D (the biggan nets by default) with orthogonal regularisation."""

    section = "biggan"
    Options = BigganOptions

    def _check(self, cfg: Config, info: DataInfo, policy: str) -> None:
        super()._check(cfg, info, policy)
        self.opts: BigganOptions = cfg.biggan

    def check_engine(self, caps: dict[str, EngineCaps]) -> None:
        super().check_engine(caps)
        for key, player in (("ortho_g", "G"), ("ortho_d", "D")):
            if getattr(self.opts, key) and not caps[player].whole_weights:
                raise ConfigError(
                    f"biggan.{key}",
                    f"orthogonal regularisation needs each whole weight on every rank, which {caps[player].engine} "
                    f"partitions; use ZeRO 1 or 2 for {player} (BigGAN's 158 M parameters and Adam states fit there)",
                )

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        super().bind(players, reduce_mean, micro_batch)
        for phase in self.phases:
            beta = {"G": self.opts.ortho_g, "D": self.opts.ortho_d}[phase.updates[0]]
            if beta > 0 and phase.before_step is None:
                phase.before_step = add_ortho_gradient(beta)
