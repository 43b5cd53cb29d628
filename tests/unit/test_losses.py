"""GAN losses: values on hand-computed logits, gradient directions, float32 results."""
from __future__ import annotations

import math

import pytest
import torch

from bigtrain.families.gan.options import LossConfig
from bigtrain.losses import LOSSES, build_loss

LOG2 = math.log(2.0)


def test_nonsaturating_values() -> None:
    loss = build_loss(LossConfig(type="nonsaturating"))
    zeros = torch.zeros(4)
    # D(x) = sigmoid(0) = 1/2, so every term is -log(1/2) = log 2.
    torch.testing.assert_close(loss.d_loss(zeros, zeros), torch.tensor(2 * LOG2))
    torch.testing.assert_close(loss.g_loss(zeros), torch.tensor(LOG2))
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected_d = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2 + (
        math.log1p(math.exp(0.5)) + math.log1p(math.exp(-3.0))
    ) / 2
    expected_g = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(3.0))) / 2
    torch.testing.assert_close(loss.d_loss(real, fake), torch.tensor(expected_d))
    torch.testing.assert_close(loss.g_loss(fake), torch.tensor(expected_g))


def test_nonsaturating_is_stable_for_large_logits() -> None:
    loss = build_loss(LossConfig(type="nonsaturating"))
    big = torch.tensor([100.0])
    torch.testing.assert_close(loss.d_loss(big, -big), torch.tensor(0.0))
    torch.testing.assert_close(loss.g_loss(-big), torch.tensor(100.0))


def test_hinge_values() -> None:
    loss = build_loss(LossConfig(type="hinge"))
    # real 2.0 and fake -1.5 lie beyond the margin (no loss); real 0.5 and fake 0.0 inside it.
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-1.5, 0.0])
    torch.testing.assert_close(loss.d_loss(real, fake), torch.tensor((0.0 + 0.5) / 2 + (0.0 + 1.0) / 2))
    torch.testing.assert_close(loss.g_loss(fake), torch.tensor(0.75))
    torch.testing.assert_close(loss.d_loss(torch.zeros(3), torch.zeros(3)), torch.tensor(2.0))


@pytest.mark.parametrize("name", ["minimax", "nonsaturating", "wgan", "hinge"])
def test_gradient_directions(name: str) -> None:
    loss = build_loss(LossConfig(type=name))
    # Logits inside the hinge margin, where the hinge loss has gradients.
    real = torch.tensor([0.3, -0.2], requires_grad=True)
    fake = torch.tensor([0.1, -0.4], requires_grad=True)
    loss.d_loss(real, fake).backward()
    assert (real.grad < 0).all(), "D loss must fall when real logits rise"
    assert (fake.grad > 0).all(), "D loss must fall when fake logits fall"
    fake.grad = None
    loss.g_loss(fake).backward()
    assert (fake.grad < 0).all(), "G loss must fall when fake logits rise"


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_scalar_for_half_precision_logits(name: str, dtype: torch.dtype) -> None:
    loss = build_loss(LossConfig(type=name))
    real = torch.linspace(-3, 3, 8, dtype=dtype, requires_grad=True)
    fake = torch.linspace(-2, 2, 8, dtype=dtype)
    d = loss.d_loss(real, fake)
    g = loss.g_loss(fake)
    for value in (d, g):
        assert value.dtype == torch.float32 and value.shape == ()
    torch.testing.assert_close(d, loss.d_loss(real.detach().float(), fake.float()))
    d.backward()
    assert real.grad.dtype == dtype  # gradients flow back to the half-precision logits
