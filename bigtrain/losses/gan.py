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


def minimax_g_loss(fake_logits: Tensor) -> Tensor:
    """log(1 - D(G(z))): the original minimax generator loss (saturates when D wins)."""
    return -F.softplus(fake_logits.float()).mean()


def lsgan_d_loss(real_out: Tensor, fake_out: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """1/2 (D(x) - b)^2 + 1/2 (D(G(z)) - a)^2 (Mao et al. 2017, a-b-c coding)."""
    return 0.5 * (real_out.float() - b).pow(2).mean() + 0.5 * (fake_out.float() - a).pow(2).mean()


def lsgan_g_loss(fake_out: Tensor, c: float = 1.0) -> Tensor:
    """1/2 (D(G(z)) - c)^2: G pulls D's scores of fakes to the value c."""
    return 0.5 * (fake_out.float() - c).pow(2).mean()


def wasserstein_d_loss(real_out: Tensor, fake_out: Tensor) -> Tensor:
    """D(G(z)) - D(x): the critic's estimate of the Wasserstein-1 distance, negated (Arjovsky et al. 2017)."""
    return fake_out.float().mean() - real_out.float().mean()


def wasserstein_g_loss(fake_out: Tensor) -> Tensor:
    """-D(G(z))."""
    return -fake_out.float().mean()


def began_d_loss(real_err: Tensor, fake_err: Tensor, k: float) -> Tensor:
    """L(x) - k_t L(G(z)) with L the autoencoder's per-sample L1 reconstruction error (Berthelot et al. 2017)."""
    return real_err.float().mean() - k * fake_err.float().mean()


def began_k_update(k: float, real_err: float, fake_err: float, gamma: float, lambda_k: float) -> float:
    """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1): proportional control that keeps
    E[L(G(z))] = gamma E[L(x)]."""
    return min(max(k + lambda_k * (gamma * real_err - fake_err), 0.0), 1.0)


def began_convergence(real_err: float, fake_err: float, gamma: float) -> float:
    """M_global = L(x) + |gamma L(x) - L(G(z))|, BEGAN's measure of convergence."""
    return real_err + abs(gamma * real_err - fake_err)
