"""Adversarial losses: pure functions of D's logits, returning float32 scalar means.

Logits are cast to float32 first, because under bf16/fp16 autocast they arrive in half
precision, where softplus and the means lose too many digits.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def nonsaturating_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(x) - log(1 - D(G(z))) (Goodfellow et al. 2014), with D = sigmoid(logit)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def nonsaturating_g_loss(fake_logits: Tensor) -> Tensor:
    """-log D(G(z)): the paper's non-saturating generator loss, strong gradients early on."""
    return F.softplus(-fake_logits.float()).mean()


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """relu(1 - D(x)) + relu(1 + D(G(z))) (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """-D(G(z)): G raises the fake logits without a margin."""
    return -fake_logits.float().mean()
