"""Minimax, LSGAN, WGAN, BEGAN terms and the gradient regularizers, against hand or autograd values."""
import math

import pytest
import torch

from bigtrain.families.gan.options import LossConfig
from bigtrain.losses import build_loss, gan, regularizers
from bigtrain.errors import ConfigError


def test_minimax_generator_loss_is_log_one_minus_d():
    fake = torch.tensor([0.0, 2.0])
    expected = sum(math.log(1 - 1 / (1 + math.exp(-v))) for v in (0.0, 2.0)) / 2
    torch.testing.assert_close(build_loss(LossConfig(type="minimax")).g_loss(fake), torch.tensor(expected))
    # saturating: when D rejects fakes confidently, G's gradient vanishes (unlike non-saturating)
    confident = torch.tensor([-8.0], requires_grad=True)
    build_loss(LossConfig(type="minimax")).g_loss(confident).backward()
    assert 0 > confident.grad.item() > -1e-3
    confident.grad = None
    build_loss(LossConfig(type="nonsaturating")).g_loss(confident).backward()
    assert confident.grad.item() < -0.99


@pytest.mark.parametrize("abc", [[0.0, 1.0, 1.0], [-1.0, 1.0, 0.0]])
def test_lsgan_abc(abc):
    a, b, c = abc
    loss = build_loss(LossConfig(type="lsgan", lsgan_abc=abc))
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([0.0, -0.5])
    expected_d = 0.5 * ((0.5 - b) ** 2 + (2.0 - b) ** 2) / 2 + 0.5 * ((0.0 - a) ** 2 + (-0.5 - a) ** 2) / 2
    expected_g = 0.5 * ((0.0 - c) ** 2 + (-0.5 - c) ** 2) / 2
    torch.testing.assert_close(loss.d_loss(real, fake), torch.tensor(expected_d))
    torch.testing.assert_close(loss.g_loss(fake), torch.tensor(expected_g))
    # minimum of D's loss at real = b, fake = a; of G's at fake = c
    assert loss.d_loss(torch.tensor([b]), torch.tensor([a])).item() == 0.0
    assert loss.g_loss(torch.tensor([c])).item() == 0.0


def test_lsgan_abc_needs_three_values():
    with pytest.raises(ConfigError, match="loss.lsgan_abc"):
        LossConfig(type="lsgan", lsgan_abc=[0.0, 1.0])


def test_wasserstein_signs():
    loss = build_loss(LossConfig(type="wgan"))
    torch.testing.assert_close(loss.d_loss(torch.tensor([3.0, 1.0]), torch.tensor([0.0, -2.0])), torch.tensor(-1.0 - 2.0))
    torch.testing.assert_close(loss.g_loss(torch.tensor([0.0, -2.0])), torch.tensor(1.0))


def test_began_terms_follow_the_paper():
    real_err, fake_err = torch.tensor([0.2, 0.4]), torch.tensor([0.5, 0.7])
    torch.testing.assert_close(gan.began_d_loss(real_err, fake_err, k=0.25), torch.tensor(0.3 - 0.25 * 0.6))
    # k_{t+1} = k_t + lambda_k (gamma L(x) - L(G(z))), clipped to [0, 1]
    assert gan.began_k_update(0.1, 0.3, 0.05, gamma=0.5, lambda_k=0.001) == pytest.approx(0.1 + 0.001 * (0.15 - 0.05))
    assert gan.began_k_update(0.0, 0.3, 0.9, gamma=0.5, lambda_k=0.1) == 0.0
    assert gan.began_k_update(0.999, 0.3, 0.0, gamma=0.5, lambda_k=0.1) == 1.0
    assert gan.began_convergence(0.3, 0.05, gamma=0.5) == pytest.approx(0.3 + 0.1)


def _critic():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _reference_grad_norms(D, x):
    # an independent per-sample computation with autograd on one sample at a time
    norms = []
    for xi in x:
        xi = xi.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi[None]).sum(), xi)
        norms.append(g.norm())
    return torch.stack(norms)


def test_gradient_penalty_matches_per_sample_autograd():
    D, x = _critic(), torch.randn(5, 3, 2, 2)
    inputs = x.clone().requires_grad_(True)
    gp = regularizers.gradient_penalty(D(inputs).squeeze(1), inputs)
    torch.testing.assert_close(gp, ((_reference_grad_norms(D, x) - 1) ** 2).mean())
    gp.backward()  # the penalty is differentiable w.r.t. D's parameters
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters() if p.dim() > 1)


def test_r1_matches_per_sample_autograd():
    D, x = _critic(), torch.randn(5, 3, 2, 2)
    inputs = x.clone().requires_grad_(True)
    r1 = regularizers.r1_penalty(D(inputs).squeeze(1), inputs)
    torch.testing.assert_close(r1, (_reference_grad_norms(D, x) ** 2).mean())


def test_interpolates_lie_between_real_and_fake():
    real, fake = torch.ones(64, 3), -torch.ones(64, 3)
    x = regularizers.interpolates(real, fake, torch.Generator().manual_seed(0))
    assert ((x >= -1) & (x <= 1)).all() and (x[:, 0] == x[:, 1]).all()  # one eps per sample
    assert x[:, 0].std() > 0.3
    p = regularizers.dragan_perturbed(torch.randn(100, 4), torch.Generator().manual_seed(0))
    assert p.shape == (100, 4)
