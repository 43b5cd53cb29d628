import pytest
import torch
from torch import nn

from bigtrain.config import EmaConfig
from bigtrain.engine.players import EMA, ema_beta


def test_beta_halves_weight_over_half_life():
    cfg = EmaConfig(half_life_kimg=10.0, rampup=None)
    beta = ema_beta(cfg, nimg=10**6, batch_size=64)
    # after half_life / batch updates the old weight's share is one half
    assert beta ** (10_000 / 64) == pytest.approx(0.5, rel=1e-9)


def test_rampup_shortens_half_life_early():
    cfg = EmaConfig(half_life_kimg=10.0, rampup=0.05)
    early = ema_beta(cfg, nimg=1000, batch_size=64)  # half-life = 50 images
    assert early == pytest.approx(0.5 ** (64 / 50))
    late = ema_beta(cfg, nimg=10**7, batch_size=64)  # ramp-up no longer binds
    assert late == pytest.approx(0.5 ** (64 / 10_000))


def test_update_is_the_weighted_average_and_copies_buffers():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(G, EmaConfig(half_life_kimg=1.0, rampup=None))
    old = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    G(torch.randn(8, 3))  # changes the BN running statistics
    beta = ema.update(G, nimg=5000, batch_size=100)
    assert beta == pytest.approx(0.5 ** (100 / 1000))
    for e, o, p in zip(ema.module.parameters(), old, G.parameters()):
        torch.testing.assert_close(e, beta * o + (1 - beta) * p)
    torch.testing.assert_close(ema.module[1].running_mean, G[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())
