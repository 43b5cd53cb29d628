"""GAN losses: `LOSSES` maps `loss.type` names to a (D loss, G loss) pair of pure functions.

d_loss(real_logits [N], fake_logits [N]) -> float32 scalar; g_loss(fake_logits [N]) -> float32 scalar.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor

from bigtrain.losses import gan


class GanLoss(NamedTuple):
    d_loss: Callable[[Tensor, Tensor], Tensor]  # (real_logits, fake_logits) -> scalar
    g_loss: Callable[[Tensor], Tensor]  # fake_logits -> scalar


LOSSES: dict[str, GanLoss] = {
    "nonsaturating": GanLoss(gan.nonsaturating_d_loss, gan.nonsaturating_g_loss),
    "hinge": GanLoss(gan.hinge_d_loss, gan.hinge_g_loss),
}
