"""Progressive GAN nets (bigtrain/families/progan/nets.py) against the official G_paper / D_paper:
parameter counts, equalised learning rate, pixel norm, minibatch stddev, the lod fades."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.config import ModelConfig

from bigtrain.families import load_config
from bigtrain.families.progan.nets import ProganDConfig, ProganGConfig
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families import build_discriminator, build_generator, registry

MODELS = registry().archs
from bigtrain.families.progan.nets import EqualizedConv2d, EqualizedLinear, blend_reals, num_features, pixel_norm

SQRT2 = math.sqrt(2.0)
SMALL = {"fmap_base": 64, "fmap_max": 16}  # nf: 16, 16, 16, 8, 4 at 2, 4, 8, 16, 32
Z = 8


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def nets1024():
    """The paper's CelebA-HQ nets (built once; no forward at 1024)."""
    torch.manual_seed(0)
    cfg = ModelConfig(g=ProganGConfig(), d=ProganDConfig(), z_dim=512)
    info = DataInfo("image", (3, 1024, 1024), 0)
    return build_generator(cfg, info), build_discriminator(cfg, info)


def small(res: int = 32, channels: int = 3, mbstd_group: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    info = DataInfo("image", (channels, res, res), 0)
    return MODELS["progan"].g(ProganGConfig(**SMALL), Z, 0, info), MODELS["progan"].d(ProganDConfig(**SMALL, mbstd_group=mbstd_group), Z, 0, info)


def up(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)


def pool(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


def test_parameter_counts_match_the_official_1024_nets(nets1024):
    G, D = nets1024
    assert count(G) == 23_079_115
    assert count(D) == 23_087_249


def test_parameter_counts_of_the_cifar10_nets():
    info = DataInfo("image", (3, 32, 32), 0)
    keys = {"fmap_base": 4096, "fmap_max": 128}
    assert count(MODELS["progan"].g(ProganGConfig(**keys), 128, 0, info)) == 1_296_908
    assert count(MODELS["progan"].d(ProganDConfig(**keys), 128, 0, info)) == 1_298_689


def test_channels_follow_nf(nets1024):
    G, D = nets1024
    assert [num_features(s, 8192, 1.0, 512) for s in range(10)] == [512] * 5 + [256, 128, 64, 32, 16]
    assert [m.weight.shape[1] for m in G.to_rgb] == [512] * 4 + [256, 128, 64, 32, 16]
    assert [m.weight.shape[0] for m in D.from_rgb] == [512] * 4 + [256, 128, 64, 32, 16]
    assert G.blocks[0].dense.weight.shape == (512 * 16, 512) and G.blocks[0].dense_bias.shape == (512,)
    assert D.blocks[0].conv.weight.shape[1] == 513 and D.blocks[0].stddev.group_size == 4  # + the stddev map


def test_every_gain_is_the_official_one(nets1024):
    G, D = nets1024
    gains = {name: m.gain for net in (G, D) for name, m in net.named_modules() if isinstance(m, (EqualizedConv2d, EqualizedLinear))}
    special = {"blocks.0.dense": SQRT2 / 4, **{f"to_rgb.{k}": 1.0 for k in range(9)}}
    for name, gain in gains.items():
        if name.startswith("blocks.0.dense1"):  # D's output layer
            assert gain == 1.0, name
        else:
            assert gain == pytest.approx(special.get(name, SQRT2)), name
    for net in (G, D):
        for m in net.modules():
            if isinstance(m, (EqualizedConv2d, EqualizedLinear)):
                assert m.scale == pytest.approx(m.gain / math.sqrt(m.weight[0].numel()))


def test_initial_weights_are_standard_normal_and_biases_zero(nets1024):
    G, D = nets1024
    w = G.blocks[0].dense.weight  # 4M weights
    assert abs(w.std().item() - 1.0) < 0.01 and abs(w.mean().item()) < 0.01
    for net in (G, D):
        for name, p in net.named_parameters():
            if "bias" in name:
                assert (p == 0).all(), name


def test_equalized_lr_scales_the_stored_weight_at_runtime():
    torch.manual_seed(0)
    conv, lin = EqualizedConv2d(4, 5, 3), EqualizedLinear(6, 7, gain=1.0)
    with torch.no_grad():
        conv.bias.normal_(), lin.bias.normal_()
    x, v = torch.randn(2, 4, 6, 6), torch.randn(3, 6)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * SQRT2 / math.sqrt(4 * 9), conv.bias, padding=1))
    torch.testing.assert_close(lin(v), v @ (lin.weight / math.sqrt(6)).T + lin.bias)
    # the weight is a parameter of unit scale: a gradient step moves the effective weight by lr * scale
    assert conv.weight.requires_grad and abs(conv.weight.std().item() - 1.0) < 0.2


def test_pixel_norm_formula():
    x = torch.randn(3, 5, 2, 2)
    expected = x / torch.sqrt((x**2).sum(dim=1, keepdim=True) / 5 + 1e-8)
    torch.testing.assert_close(pixel_norm(x), expected)
    torch.testing.assert_close(pixel_norm(torch.zeros(1, 4)), torch.zeros(1, 4))  # eps keeps 0 finite
    G, _ = small()
    h = G.blocks[0](torch.randn(4, Z) * 7)  # G's features leave each layer at unit mean square
    torch.testing.assert_close(h.square().mean(dim=1), torch.ones(4, 4, 4), rtol=1e-4, atol=1e-4)


def test_minibatch_stddev_on_a_batch_computed_by_hand():
    _, D = small(mbstd_group=2)
    layer = D.blocks[0].stddev
    # 4 samples, 2 channels, 1x1; group size 2 -> groups of samples {0, 2} and {1, 3} (i mod 2)
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 4.0], [1.0, 3.0]])[:, :, None, None]
    # {0, 2}: channel stds 1 and 2 -> 1.5; {1, 3}: sqrt(0 + 1e-8) = 1e-4 and 1 -> 0.50005
    out = layer(x)
    assert out.shape == (4, 3, 1, 1)
    torch.testing.assert_close(out[:, :2], x)
    torch.testing.assert_close(out[:, 2, 0, 0], torch.tensor([1.5, 0.50005, 1.5, 0.50005]))
    _, D_off = small(mbstd_group=0)
    assert D_off.blocks[0].stddev is None and D_off.blocks[0].conv.weight.shape[1] == 16


def test_generator_fade_is_the_lerp_of_its_two_branches():
    G, _ = small()
    z = torch.randn(4, Z)
    G.set_lod(1.3)  # level 2 (16x16) fading in, alpha 0.7
    with torch.no_grad():
        h = G.blocks[1](G.blocks[0](z))  # 8x8
        new, prev = G.to_rgb[2](G.blocks[2](h)), up(G.to_rgb[1](h))
        torch.testing.assert_close(G(z), prev + (new - prev) * 0.7)
        # the official direction: lod just below a whole value -> the coarser image, upsampled
        G.set_lod(2.0)
        coarse = G(z)
        G.set_lod(2.0 - 1e-6)
        torch.testing.assert_close(G(z), up(coarse), rtol=1e-4, atol=1e-4)
        G.set_lod(1.0)
        fine = G(z)
        G.set_lod(1.0 + 1e-6)
        torch.testing.assert_close(G(z), fine, rtol=1e-4, atol=1e-4)


def test_discriminator_input_fade_is_the_lerp_of_its_two_branches():
    _, D = small()
    x = torch.randn(4, 3, 16, 16)
    D.set_lod(1.25)  # alpha 0.75
    act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    with torch.no_grad():
        new = D.blocks[2](act(D.from_rgb[2](x)))
        prev = act(D.from_rgb[1](pool(x)))
        expected = D.blocks[0](D.blocks[1](prev + (new - prev) * 0.75))
        torch.testing.assert_close(D(x), expected)
        D.set_lod(2.0)
        coarse = D(pool(x))
        D.set_lod(2.0 - 1e-6)  # alpha ~ 0: D sees the downsampled image only
        torch.testing.assert_close(D(x), coarse, rtol=1e-4, atol=1e-4)


def test_blend_reals_is_the_official_fade_lod():
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(blend_reals(x, 2.25), x + (up(pool(x)) - x) * 0.25)
    torch.testing.assert_close(blend_reals(x, torch.tensor(0.9)), x * 0.1 + up(pool(x)) * 0.9)
    assert blend_reals(x, 1.0) is x


def test_output_resolution_follows_lod():
    G, D = small(res=32)
    z = torch.randn(4, Z)
    for lod, res in [(3.0, 4), (2.5, 8), (2.0, 8), (1.9, 16), (1.0, 16), (0.1, 32), (0.0, 32)]:
        G.set_lod(lod), D.set_lod(lod)
        with torch.no_grad():
            x = G(z)
            assert x.shape == (4, 3, res, res) and G.current_resolution == res, lod
            assert D(x).shape == (4,)
    with pytest.raises(ValueError, match="takes 32x32 images"):
        D(torch.randn(4, 3, 16, 16))
    for bad in (-0.1, 3.5):
        with pytest.raises(ValueError, match=r"lod must be in \[0, 3\]"):
            G.set_lod(bad)


def test_lod_is_a_buffer_that_travels_with_the_state_dict():
    G, _ = small(res=32)
    other, _ = small(res=32, seed=1)
    G.set_lod(2.5)
    assert "lod" in dict(G.named_buffers()) and G.state_dict()["lod"].item() == 2.5
    assert other(torch.randn(2, Z)).shape[-1] == 32  # lod 0 until told otherwise, like the official variable
    other.load_state_dict(G.state_dict())
    assert other(torch.randn(2, Z)).shape[-1] == 8
    with torch.no_grad():
        other.lod.copy_(torch.tensor(3.0))  # how the EMA copies buffers
    assert other(torch.randn(2, Z)).shape[-1] == 4


@pytest.mark.parametrize("lod,g_used,d_used", [
    (1.5, {"blocks.0", "blocks.1", "blocks.2", "to_rgb.1", "to_rgb.2"}, {"blocks.0", "blocks.1", "blocks.2", "from_rgb.1", "from_rgb.2"}),
    (1.0, {"blocks.0", "blocks.1", "blocks.2", "to_rgb.2"}, {"blocks.0", "blocks.1", "blocks.2", "from_rgb.2"}),
    (3.0, {"blocks.0", "to_rgb.0"}, {"blocks.0", "from_rgb.0"}),
])
def test_gradients_reach_only_the_layers_in_use(lod, g_used, d_used):
    G, D = small(res=32)
    G.set_lod(lod), D.set_lod(lod)
    D(G(torch.randn(4, Z))).sum().backward()
    for net, used in ((G, g_used), (D, d_used)):
        for name, p in net.named_parameters():
            layer = ".".join(name.split(".")[:2])
            if layer in used:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name


@pytest.mark.parametrize("shape", [(3, 48, 48), (3, 2, 2), (3, 32, 64), (1, 12, 12)])
def test_unsupported_resolutions_are_refused(shape):
    for builder, cls in zip((MODELS["progan"].g, MODELS["progan"].d), (ProganGConfig, ProganDConfig)):
        with pytest.raises(ConfigError) as err:
            builder(cls(), Z, 0, DataInfo("image", shape, 0))
        assert err.value.key == "data.resolution"


def test_conditional_and_vector_data_are_refused():
    info = DataInfo("image", (3, 16, 16), 10)
    for builder, cls in zip((MODELS["progan"].g, MODELS["progan"].d), (ProganGConfig, ProganDConfig)):
        with pytest.raises(ConfigError) as err:
            builder(cls(), Z, 10, info)
        assert err.value.key == "model.num_classes"
    with pytest.raises(ConfigError) as err:
        MODELS["progan"].d(ProganDConfig(), Z, 0, DataInfo("vector", (5,), 0))
    assert err.value.key == "model.d.arch"
    with pytest.raises(ConfigError) as err:  # 32 / 2**4 = 2 channels at 32x32 -> 1 at 64x64 ... 0 at 1024
        MODELS["progan"].g(ProganGConfig(fmap_base=32), Z, 0, DataInfo("image", (3, 1024, 1024), 0))
    assert err.value.key == "model.g.fmap_base"


def test_config_keys_and_checks():
    cfg = load_config(None, ["model.g.arch=progan", "model.d.arch=progan"])
    assert (cfg.model.g.fmap_base, cfg.model.g.fmap_decay, cfg.model.g.fmap_max) == (8192, 1.0, 512)
    assert cfg.model.d.mbstd_group == 4 and not hasattr(cfg.model.g, "mbstd_group")
    for override, key in [("model.g.width=8", "model.g.width"), ("model.d.fmap_base=0", "model.d.fmap_base"),
                          ("model.g.fmap_decay=-1", "model.g.fmap_decay"), ("model.d.mbstd_group=-1", "model.d.mbstd_group"),
                          ("model.g.mbstd_group=4", "model.g.mbstd_group")]:
        with pytest.raises(ConfigError) as err:
            load_config(None, ["model.g.arch=progan", "model.d.arch=progan", override])
        assert err.value.key == key


def test_ddp_leaves_the_lod_buffer_alone():
    """DDP broadcasts buffers before every forward; a broadcast lod would bump the buffer's
    version and make current_lod() read it from the GPU at each forward. Every rank sets the
    same lod, so the recipe marks it local and the backend tells DDP to ignore it (checked in a 1-process gloo group: the broadcast at
    wrapping is the one a single process does)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from bigtrain.engine.backends.accelerate import keep_buffers_local
    from bigtrain.families import build_recipe

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        cfg = load_config(None, ["recipe=progan", "model.z_dim=8", "model.g.arch=progan", "model.d.arch=progan", "model.g.fmap_base=64", "model.g.fmap_max=16",
                                 "model.d.fmap_base=64", "model.d.fmap_max=16", "data.resolution=16"])
        spec = build_recipe(cfg, DataInfo("image", (1, 16, 16), 0)).players()[0]
        assert spec.local_buffers == ("lod",) and spec.unused_parameters  # what the recipe asks of the engine
        G = spec.build()
        G.set_lod(1.5)
        assert keep_buffers_local(G, spec.local_buffers) == ["lod"]  # what the Accelerate backend does with it
        version = G.lod._version
        ddp = DistributedDataParallel(G, find_unused_parameters=True)
        assert all(b is not G.lod for b in ddp.modules_buffers) and G.lod._version == version
        ddp(torch.randn(2, 8)).sum().backward()
        assert G.lod._version == version and G.current_lod() == 1.5
    finally:
        if started:
            dist.destroy_process_group()
