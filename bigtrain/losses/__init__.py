"""GAN losses: `LOSSES` maps `loss.type` to a builder of a (D loss, G loss) pair of pure functions.

d_loss(real_out [N], fake_out [N]) -> float32 scalar; g_loss(fake_out [N]) -> float32 scalar.
Regularizers (R1, gradient penalty, DRAGAN) are in `regularizers`, BEGAN's terms in `gan`; the
classic recipe (bigtrain/families/gan/recipe.py) combines them as the config asks.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

from torch import Tensor

from bigtrain.errors import ConfigError
from bigtrain.losses import gan


class GanLoss(NamedTuple):
    d_loss: Callable[[Tensor, Tensor], Tensor]  # (real_out, fake_out) -> scalar
    g_loss: Callable[[Tensor], Tensor]  # fake_out -> scalar


def _lsgan(cfg: Any) -> GanLoss:
    a, b, c = cfg.lsgan_abc
    return GanLoss(partial(gan.lsgan_d_loss, a=a, b=b), partial(gan.lsgan_g_loss, c=c))


# each builder takes the `loss` section (bigtrain.families.gan.options.LossConfig: type, lsgan_abc)
LOSSES: dict[str, Callable[[Any], GanLoss]] = {
    "minimax": lambda cfg: GanLoss(gan.nonsaturating_d_loss, gan.minimax_g_loss),
    "nonsaturating": lambda cfg: GanLoss(gan.nonsaturating_d_loss, gan.nonsaturating_g_loss),
    "lsgan": _lsgan,
    "wgan": lambda cfg: GanLoss(gan.wasserstein_d_loss, gan.wasserstein_g_loss),
    "hinge": lambda cfg: GanLoss(gan.hinge_d_loss, gan.hinge_g_loss),
    # BEGAN's D loss needs k_t; the objective uses gan.began_* directly, this pair is its k=1 form
    "began": lambda cfg: GanLoss(partial(gan.began_d_loss, k=1.0), lambda fake_err: fake_err.float().mean()),
}


def build_loss(cfg: Any) -> GanLoss:
    """The pair named by `loss.type`; ConfigError for an unknown name."""
    if cfg.type not in LOSSES:
        raise ConfigError("loss.type", f"unknown loss {cfg.type!r}; choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[cfg.type](cfg)
