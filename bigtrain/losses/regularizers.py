"""Gradient regularizers of D: pure functions of D's outputs and the inputs they came from.

The caller runs D on inputs that `require_grad`; these take the input gradient with
`create_graph=True`, so the penalty's own gradient reaches D's parameters in the backward.
"""

from __future__ import annotations

import torch
from torch import Tensor


def input_gradients(outputs: Tensor, inputs: Tensor) -> Tensor:
    """d sum(outputs) / d inputs, per sample [N, ...], differentiable."""
    (grads,) = torch.autograd.grad(outputs.float().sum(), inputs, create_graph=True)
    return grads


def gradient_penalty(outputs: Tensor, inputs: Tensor, center: float = 1.0) -> Tensor:
    """mean((|grad_x D(x)| - center)^2): WGAN-GP on real/fake interpolates (Gulrajani et al. 2017)
    and DRAGAN around perturbed real data (Kodali et al. 2017)."""
    norms = input_gradients(outputs, inputs).flatten(1).norm(dim=1)
    return (norms - center).pow(2).mean()


def r1_penalty(real_outputs: Tensor, real_inputs: Tensor) -> Tensor:
    """mean(|grad_x D(x)|^2) on real data (Mescheder et al. 2018); weight it by gamma / 2."""
    return input_gradients(real_outputs, real_inputs).flatten(1).pow(2).sum(dim=1).mean()


def interpolates(real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample (WGAN-GP)."""
    eps = torch.rand(
        (real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype, generator=generator
    )
    return torch.lerp(fake, real, eps)


def dragan_perturbed(real: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x + 0.5 std(x) u, u ~ U[0, 1] elementwise: the neighbourhood of real data DRAGAN smooths."""
    noise = torch.rand(real.shape, device=real.device, dtype=real.dtype, generator=generator)
    return real + 0.5 * real.std() * noise
