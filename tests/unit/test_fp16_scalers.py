"""fp16: G and D own independent loss scalers, so an overflow in one never skips the other."""
import torch
from torch import nn

from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
from bigtrain.engine.backends.accelerate import AccelerateBackend


def test_overflow_in_d_skips_only_d():
    backend = AccelerateBackend(BackendConfig(), TrainConfig(batch_size=4, precision="fp16"))
    torch.manual_seed(0)
    G = backend.make_player("G", nn.Linear(3, 3), OptimConfig(lr=0.1))
    D = backend.make_player("D", nn.Linear(3, 1), OptimConfig(lr=0.1))
    assert G.scaler is not None and D.scaler is not None and G.scaler is not D.scaler

    x = torch.randn(4, 3)
    backend.backward([(D, D.engine(x).mean())])
    backend.backward([(G, G.engine(x).pow(2).mean())])
    for p in D.net.parameters():
        p.grad[0] = float("inf")  # an overflow in D's gradients only
    d_before = [p.detach().clone() for p in D.net.parameters()]
    g_before = [p.detach().clone() for p in G.net.parameters()]
    g_scale, d_scale = G.scaler.get_scale(), D.scaler.get_scale()

    d_skipped = backend.step(D)
    g_skipped = backend.step(G)

    assert d_skipped.item() == 1.0 and g_skipped.item() == 0.0
    assert all(torch.equal(a, b) for a, b in zip(d_before, D.net.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(g_before, G.net.parameters()))
    assert D.scaler.get_scale() < d_scale and G.scaler.get_scale() == g_scale
