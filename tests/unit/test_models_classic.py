"""SNGAN and BEGAN architectures, conditioning modes (concat / cbn / projection / acgan) and
spectral norm across architectures."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families import registry

MODELS = registry().archs
from bigtrain.layers import SPECTRAL_NORM_LAYERS, ConditionalBatchNorm2d

Z_DIM = 8
WIDTH = 4
BATCH = 4
K = 3  # classes


def image(res: int, channels: int = 3, num_classes: int = K) -> DataInfo:
    return DataInfo("image", (channels, res, res), num_classes)


def make(arch: str, player: str, res: int = 32, num_classes: int = 0, **net) -> nn.Module:
    net.setdefault("width", WIDTH)
    side = "GD".index(player)
    return (MODELS[arch].g, MODELS[arch].d)[side]((MODELS[arch].g_config, MODELS[arch].d_config)[side](**net), Z_DIM, num_classes, image(res, num_classes=num_classes))


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


Y = labels(0, 1, 2, 0)


@pytest.mark.parametrize(
    "res,g_ladder,d_ladder", [(32, [4, 4, 4], [2, 2, 2, 2]), (128, [16, 8, 4, 2, 1], [1, 2, 4, 8, 16, 16])]
)
def test_sngan_structure_shapes_and_range(res: int, g_ladder: list[int], d_ladder: list[int]) -> None:
    torch.manual_seed(0)
    G, D = make("sngan", "G", res), make("sngan", "D", res, norm="none")
    assert [b.conv2.out_channels for b in G.blocks] == [WIDTH * k for k in g_ladder]
    assert [b.conv2.out_channels for b in D.blocks] == [WIDTH * k for k in d_ladder]
    x = G(torch.randn(2, Z_DIM))
    assert x.shape == (2, 3, res, res) and x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (2,)
    # D ends at 8x8 for 32 (last two blocks keep the size) and 4x4 for 128 (the last one does).
    assert D.blocks(x).shape[2:] == ((8, 8) if res == 32 else (4, 4))
    # Residual blocks, not plain stacks: zeroing the residual convs leaves the shortcut path.
    with torch.no_grad():
        for block in D.blocks:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
    assert D(x).abs().sum() > 0


@pytest.mark.parametrize("arch,res", [("sngan", 48), ("sngan", 16), ("began", 8), ("began", 24)])
def test_unsupported_resolutions(arch: str, res: int) -> None:
    for player in ("G", "D"):
        with pytest.raises(ConfigError) as err:
            make(arch, player, res)
        assert err.value.key == "data.resolution"


@pytest.mark.parametrize("res", [16, 32])
def test_began_autoencoder(res: int) -> None:
    torch.manual_seed(0)
    G, D = make("began", "G", res), make("began", "D", res, h_dim=5)
    x = G(torch.randn(BATCH, Z_DIM))
    assert x.shape == (BATCH, 3, res, res) and x.min() >= -1 and x.max() <= 1
    assert D.encoder(x).shape == (BATCH, 5)  # the bottleneck has h_dim units
    recon = D.reconstruct(x)
    assert recon.shape == x.shape
    errors = D(x)
    assert errors.shape == (BATCH,)
    torch.testing.assert_close(errors, (recon - x).abs().mean(dim=(1, 2, 3)))
    # Per-sample: changing one image changes only its own error.
    x2 = x.clone()
    x2[0] = -x2[0]
    changed = D(x2) != errors
    assert changed.tolist() == [True] + [False] * (BATCH - 1)
    # Encoder filters grow linearly with each stride-2 subsampling: 2n, 3n, ...
    strided = [m.out_channels for m in D.encoder.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert strided == [WIDTH * k for k in range(2, res.bit_length() - 2)]


def test_began_is_unconditional() -> None:
    for player in ("G", "D"):
        with pytest.raises(ConfigError) as err:
            make("began", player, 32, num_classes=K)
        assert err.value.key == "model.num_classes"


@pytest.mark.parametrize("arch", ["dcgan", "sngan"])
def test_cbn_generator(arch: str) -> None:
    torch.manual_seed(0)
    G = make(arch, "G", num_classes=K, cond="cbn")
    cbns = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert cbns and not any(m.bn.affine for m in cbns)
    first = next(m for m in G.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d)))
    assert first.weight.shape[0 if isinstance(first, nn.ConvTranspose2d) else 1] == Z_DIM  # no one-hot in z
    z = torch.randn(BATCH, Z_DIM)
    G(z, Y).square().sum().backward()
    gain = cbns[0].gain
    # Only the classes in the batch (0, 1, 2 here, not a 4th) receive gradients on their rows.
    assert (gain.grad.abs().sum(dim=1) > 0).all()
    with torch.no_grad():
        for m in cbns:  # they start as the identity for every class; make the classes differ
            m.gain.add_(torch.randn_like(m.gain))
    G.eval()
    with torch.no_grad():
        assert not torch.allclose(G(z, labels(0, 0, 0, 0)), G(z, labels(1, 1, 1, 1)))


def test_sngan_generator_defaults_to_cbn_and_keeps_last_bn_plain() -> None:
    G = make("sngan", "G", num_classes=K)
    assert G.cond == "cbn"
    assert isinstance(G.out[0], nn.BatchNorm2d)  # the reference code's final BN is unconditional
    assert G.linear.in_features == Z_DIM
    assert make("sngan", "G", num_classes=K, cond="concat").linear.in_features == Z_DIM + K


@pytest.mark.parametrize("arch", ["mlp", "dcgan", "sngan"])
def test_concat_discriminator(arch: str) -> None:
    torch.manual_seed(0)
    D = make(arch, "D", num_classes=K, cond="concat")
    first = next(m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    expected_in = 3 * 32 * 32 + K if arch == "mlp" else 3 + K  # flat input, or label maps
    assert (first.in_features if arch == "mlp" else first.in_channels) == expected_in
    D.eval()
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        out = D(x, Y)
        assert out.shape == (BATCH,)
        assert (out - D(x, (Y + 1) % K)).abs().min() > 0


@pytest.mark.parametrize("arch", ["mlp", "dcgan", "sngan"])
def test_acgan_discriminator(arch: str) -> None:
    torch.manual_seed(0)
    D = make(arch, "D", num_classes=K, cond="acgan")
    x = torch.randn(BATCH, 3, 32, 32, requires_grad=True)
    out = D(x, Y)
    assert out.shape == (BATCH, 1 + K)  # column 0: adversarial logit; 1: class logits
    out[:, 1:].sum().backward()  # the class head is trained through D's features
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["mlp", "dcgan", "sngan"])
def test_projection_discriminator(arch: str) -> None:
    torch.manual_seed(0)
    D = make(arch, "D", num_classes=K, cond="projection")
    assert D.head.embed is not None and D.head.embed.num_embeddings == K
    D.eval()
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        assert (D(x, labels(0, 0, 0, 0)) - D(x, labels(2, 2, 2, 2))).abs().min() > 0


@pytest.mark.parametrize(
    "arch,player,net,key",
    [
        ("dcgan", "D", {"cond": "cbn"}, "model.d.cond"),
        ("sngan", "D", {"cond": "cbn"}, "model.d.cond"),
        ("mlp", "D", {"cond": "cbn"}, "model.d.cond"),
        ("dcgan", "G", {"cond": "projection"}, "model.g.cond"),
        ("sngan", "G", {"cond": "acgan"}, "model.g.cond"),
        ("mlp", "G", {"cond": "cbn"}, "model.g.cond"),  # mlp has no batch norm to condition
        ("dcgan", "G", {"cond": "cbn", "norm": "none"}, "model.g.cond"),
        ("sngan", "G", {"cond": "cbn", "norm": "none"}, "model.g.cond"),
    ],
)
def test_invalid_conditioning(arch: str, player: str, net: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make(arch, player, num_classes=K, **net)
    assert err.value.key == key
    make(arch, player, num_classes=0, **net)  # unconditional nets ignore cond


def weight_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, SPECTRAL_NORM_LAYERS)]


@pytest.mark.parametrize("arch", ["mlp", "dcgan", "sngan"])
@pytest.mark.parametrize("player", ["G", "D"])
def test_spectral_norm_wraps_every_weight_layer(arch: str, player: str) -> None:
    cond = "projection" if player == "D" else "auto"
    net = make(arch, player, num_classes=K, spectral_norm=True, cond=cond)
    layers = weight_layers(net)
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    if player == "D":
        assert parametrize.is_parametrized(net.head.embed, "weight")  # the projection embedding
    assert not any(parametrize.is_parametrized(m) for m in weight_layers(make(arch, player, num_classes=K)))
    cbns = [m for m in net.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert not any(parametrize.is_parametrized(m) for m in cbns)  # class gains are not projections


def test_spectral_norm_bounds_the_largest_singular_value() -> None:
    torch.manual_seed(0)
    D = make("sngan", "D", num_classes=K, spectral_norm=True)
    conv = D.blocks[1].conv1
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(10.0)  # far above 1 without normalisation
    D.train()
    for _ in range(20):  # one power iteration per access in training mode, as in each forward
        conv.weight
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert 0.9 < sigma.item() < 1.05
    # Two forwards before one backward (real and fake passes) must not trip autograd.
    x, y = torch.randn(2, 3, 32, 32), labels(0, 1)
    (D(x, y) - D(-x, y)).sum().backward()
    assert conv.parametrizations.weight.original.grad is not None
