"""Architectures: shapes, value ranges, conditioning, DCGAN structure and config errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from bigtrain.config import ModelConfig

from bigtrain.families import load_config
from bigtrain.families.gan.dcgan import DcganGConfig
from bigtrain.netconfig import NetConfig
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families import build_discriminator, build_generator, registry

MODELS = registry().archs

# grid: PacGAN's 2-D nets (tests/unit/test_grid25.py); progan: tests/unit/test_progan_nets.py; biggan(_deep):
# tests/unit/test_biggan(_deep).py; cyclegan, pix2pix (image to image, no z): tests/unit/test_img2img_nets.py;
# stylegan2 (channel_base, not width; an unbounded output as the reference's): tests/unit/test_stylegan2_nets.py
IMAGE_ARCHS = [arch for arch in MODELS if arch not in ("grid", "progan", "biggan", "biggan_deep", "cyclegan", "pix2pix", "stylegan2")]

Z_DIM = 16
WIDTH = 8
# sngan's channels are larger multiples of width (G: 4x at 32, up to 16x at 64), so it gets a
# smaller width to stay about as cheap as dcgan.
WIDTHS = {"sngan": 2}
BATCH = 4  # > 1 so BatchNorm has batch statistics in train mode
NUM_CLASSES = 3

IMAGE_INFOS = {
    "rgb32": DataInfo("image", (3, 32, 32), NUM_CLASSES),
    "gray32": DataInfo("image", (1, 32, 32), NUM_CLASSES),
    "rgb64": DataInfo("image", (3, 64, 64), NUM_CLASSES),
    "gray64": DataInfo("image", (1, 64, 64), NUM_CLASSES),
}
VECTOR_INFO = DataInfo("vector", (5,), NUM_CLASSES)
UNCONDITIONAL_ONLY = {"began"}
CONDITIONAL_ARCHS = [arch for arch in IMAGE_ARCHS if arch not in UNCONDITIONAL_ONLY]
CASES = [
    (arch, name, num_classes)
    for arch in IMAGE_ARCHS
    for name in IMAGE_INFOS
    for num_classes in ([0] if arch in UNCONDITIONAL_ONLY else [0, NUM_CLASSES])
] + [("mlp", "vector", 0), ("mlp", "vector", NUM_CLASSES)]


def info_of(name: str) -> DataInfo:
    return VECTOR_INFO if name == "vector" else IMAGE_INFOS[name]


def net_config(cls: type[NetConfig], width: int, norm: str) -> NetConfig:
    """A `cls` of `width`, with `norm` where the net has a norm key that allows it."""
    has_norm = "norm" in {f.name for f in dataclasses.fields(cls)} and norm in cls.norms
    return cls(width=width, **({"norm": norm} if has_norm else {}))


def build(arch: str, info: DataInfo, num_classes: int, norm: str = "batch") -> tuple[nn.Module, nn.Module]:
    width = WIDTHS.get(arch, WIDTH)
    g, d = (net_config(cls, width, norm) for cls in (MODELS[arch].g_config, MODELS[arch].d_config))
    cfg = ModelConfig(g=g, d=d, z_dim=Z_DIM, num_classes=num_classes)
    return build_generator(cfg, info), build_discriminator(cfg, info)


def inputs(num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.randn(BATCH, Z_DIM)
    y = torch.arange(BATCH) % num_classes if num_classes else None
    return z, y


@pytest.mark.parametrize("arch,data,num_classes", CASES)
def test_shapes_and_ranges(arch: str, data: str, num_classes: int) -> None:
    torch.manual_seed(0)
    info = info_of(data)
    G, D = build(arch, info, num_classes)
    z, y = inputs(num_classes)
    x = G(z, y)
    assert x.shape == (BATCH, *info.shape) and x.dtype == torch.float32
    logits = D(x, y)
    assert logits.shape == (BATCH,) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    # Blow the weights up: image outputs must stay inside tanh's range, vectors must not be squashed.
    with torch.no_grad():
        for p in G.parameters():
            p.mul_(10.0)
    x = G(z, y)
    if info.kind == "image":
        assert x.min() >= -1.0 and x.max() <= 1.0
    else:
        assert x.abs().max() > 1.0


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_gradient_flows_from_d_logit_to_g(arch: str) -> None:
    torch.manual_seed(0)
    num_classes = 0 if arch in UNCONDITIONAL_ONLY else NUM_CLASSES
    G, D = build(arch, IMAGE_INFOS["rgb32"], num_classes)
    z, y = inputs(num_classes)
    D(G(z, y), y).sum().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "arch,data", [("mlp", "vector"), ("mlp", "rgb32"), ("dcgan", "rgb32"), ("sngan", "rgb32")]
)
def test_labels_change_outputs(arch: str, data: str) -> None:
    torch.manual_seed(0)
    G, D = build(arch, info_of(data), NUM_CLASSES)
    G.eval(), D.eval()  # fixed BatchNorm statistics, so only y differs between the two calls
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(("gain", "bias")) and p.dim() == 2:  # conditional BN starts class-blind
                p.add_(torch.randn_like(p))
    z, _ = inputs(0)
    y0, y1 = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    with torch.no_grad():
        assert not torch.allclose(G(z, y0), G(z, y1))
        x = G(z, y0)
        assert (D(x, y0) - D(x, y1)).abs().min() > 0


def test_dcgan_discriminator_projection_term() -> None:
    torch.manual_seed(0)
    _, D = build("dcgan", IMAGE_INFOS["rgb32"], NUM_CLASSES)
    D.eval()
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.zeros(BATCH, dtype=torch.long)
    with torch.no_grad():
        h = D.features(x)
        expected = D.head.linear(h).squeeze(1) + (D.head.embed(y) * h).sum(dim=1)
        torch.testing.assert_close(D(x, y), expected)
        D.head.embed.weight.zero_()  # without the embedding, the class must not matter any more
        torch.testing.assert_close(D(x, y), D(x, y + 1))


@pytest.mark.parametrize("arch", CONDITIONAL_ARCHS)
def test_conditional_nets_require_labels(arch: str) -> None:
    G, D = build(arch, IMAGE_INFOS["rgb32"], NUM_CLASSES)
    z, _ = inputs(0)
    with pytest.raises(ValueError, match="class-conditional"):
        G(z)
    with pytest.raises(ValueError, match="class-conditional"):
        D(torch.randn(BATCH, 3, 32, 32))


@pytest.mark.parametrize("res,ladder", [(32, [4, 2, 1]), (64, [8, 4, 2, 1])])
def test_dcgan_structure(res: int, ladder: list[int]) -> None:
    G, D = build("dcgan", DataInfo("image", (3, res, res), 0), 0)
    g_convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in g_convs] == [WIDTH * k for k in ladder] + [3]
    g_norms = [m.num_features for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    assert g_norms == [WIDTH * k for k in ladder]  # every hidden layer, not the output one
    assert isinstance(list(G.net)[-1], nn.Tanh)

    d_convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in d_convs] == [WIDTH * k for k in reversed(ladder)]
    d_norms = [m.num_features for m in D.modules() if isinstance(m, nn.BatchNorm2d)]
    assert d_norms == [WIDTH * k for k in reversed(ladder)][1:]  # none after the input layer
    assert isinstance(D.features[1], nn.LeakyReLU) and D.features[1].negative_slope == 0.2


def test_dcgan_without_batch_norm() -> None:
    G, D = build("dcgan", IMAGE_INFOS["rgb32"], 0, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in [*G.modules(), *D.modules()])
    assert all(m.bias is not None for m in G.modules() if isinstance(m, nn.ConvTranspose2d))


def test_dcgan_init() -> None:
    torch.manual_seed(0)
    # Wider than the other tests, so the first layer has enough weights (~200k) for a tight std.
    G = MODELS["dcgan"].g(DcganGConfig(width=32), 100, 0, DataInfo("image", (3, 32, 32), 0))
    first = G.net[0].weight
    assert abs(first.std().item() - 0.02) < 0.002 and abs(first.mean().item()) < 0.002
    bn = G.net[1]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and 0.01 < bn.weight.std().item() < 0.03
    assert (bn.bias == 0).all() and (G.net[-2].bias == 0).all()


def test_mlp_has_no_batch_statistics() -> None:
    G, D = build("mlp", IMAGE_INFOS["rgb32"], NUM_CLASSES)  # it has no norm key (tests/unit/test_net_config.py)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in [*G.modules(), *D.modules()])


@pytest.mark.parametrize("shape", [(3, 48, 48), (3, 8, 8), (3, 256, 256), (3, 32, 64)])
def test_dcgan_rejects_unsupported_resolution(shape: tuple[int, ...]) -> None:
    for builder, net in zip((MODELS["dcgan"].g, MODELS["dcgan"].d), (MODELS["dcgan"].g_config, MODELS["dcgan"].d_config)):
        with pytest.raises(ConfigError) as err:
            builder(net(), Z_DIM, 0, DataInfo("image", shape, 0))
        assert err.value.key == "data.resolution"


def test_dcgan_rejects_vector_data() -> None:
    cfg = ModelConfig(g=MODELS["dcgan"].g_config(), d=MODELS["dcgan"].d_config())
    with pytest.raises(ConfigError) as err:
        build_generator(cfg, VECTOR_INFO)
    assert err.value.key == "model.g.arch"
    with pytest.raises(ConfigError) as err:
        build_discriminator(cfg, VECTOR_INFO)
    assert err.value.key == "model.d.arch"


def test_unknown_arch() -> None:
    for side in ("g", "d"):
        with pytest.raises(ConfigError, match="unknown architecture 'nope'; choose one of began, biggan, biggan_deep, cyclegan, dcgan, grid, mlp, pix2pix, progan, sngan") as err:
            load_config(None, [f"model.{side}.arch=nope"])
        assert err.value.key == f"model.{side}.arch"
