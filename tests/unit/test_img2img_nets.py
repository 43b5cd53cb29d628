"""CycleGAN's and Pix2Pix's nets (issue 14 point 1; bigtrain/families/img2img/nets.py): the reference's
parameter counts, shapes, instance norm, U-Net dropout, init, config keys and errors."""
import pytest
import torch
from torch import nn

from bigtrain.families.img2img.nets import CycleganDConfig, CycleganGConfig, Pix2pixDConfig, Pix2pixGConfig
from bigtrain.config import ModelConfig
from bigtrain.families import load_config
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families import build_discriminator, build_generator, registry

MODELS = registry().archs

RGB256 = DataInfo("image", (3, 256, 256), 0)
CLASSES = {"cyclegan": (CycleganGConfig, CycleganDConfig), "pix2pix": (Pix2pixGConfig, Pix2pixDConfig)}


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def nets(arch: str, info: DataInfo, g: dict = {}, d: dict = {}) -> tuple[nn.Module, nn.Module]:
    g_cls, d_cls = CLASSES[arch]
    return MODELS[arch].g(g_cls(**g), 0, 0, info), MODELS[arch].d(d_cls(**d), 0, 0, info)


@pytest.fixture(scope="module")
def reference():
    """The four nets at the reference settings (3 channels, 256 px, width 64, the defaults)."""
    torch.manual_seed(0)
    return {**dict(zip(("resnet_g", "patch_d"), nets("cyclegan", RGB256))), **dict(zip(("unet_g", "pair_d"), nets("pix2pix", RGB256)))}


def test_parameter_counts_match_the_reference(reference):
    # the counts: ResNet-9 G and PatchGAN D with instance norm, U-Net-256 G and Pix2Pix D with batch norm
    assert count(reference["resnet_g"]) == 11_378_179
    assert count(reference["patch_d"]) == 2_764_737
    assert count(reference["unet_g"]) == 54_413_955
    assert count(reference["pair_d"]) == 2_768_705
    assert reference["pair_d"].net[0].in_channels == 6 and reference["patch_d"].net[0].in_channels == 3


def test_the_norm_sets_the_count_through_affine_parameters_and_conv_biases():
    # batch norm: +2 per channel, -1 bias per conv before it (D: 128 + 256 + 512 channels normalised)
    assert count(nets("cyclegan", RGB256, d={"norm": "batch"})[1]) == 2_764_737 + 128 + 256 + 512
    assert count(nets("pix2pix", RGB256, d={"norm": "instance"})[1]) == 2_768_705 - 128 - 256 - 512
    g, d = nets("cyclegan", RGB256, g={"width": 8}, d={"norm": "none"})  # no norm: every conv keeps its bias (the reference drops them)
    assert count(d) == 2_764_737 and not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in d.modules())
    assert count(MODELS["cyclegan"].g(CycleganGConfig(width=8, norm="none"), 0, 0, RGB256)) == count(g)


def test_reference_shapes(reference):
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert reference["patch_d"](x).shape == (1, 1, 30, 30)  # 70x70 patches, a 30x30 map
        assert reference["pair_d"](torch.cat([x, x], dim=1)).shape == (1, 1, 30, 30)
        y = reference["unet_g"].eval()(x)
        assert y.shape == x.shape and y.abs().max() <= 1
        resnet = MODELS["cyclegan"].g(CycleganGConfig(width=8), 0, 0, RGB256)  # the shape does not depend on the width
        assert resnet(x).shape == x.shape


@pytest.mark.parametrize("arch,shape,g,d,patches", [
    ("cyclegan", (3, 32, 32), {"width": 4, "blocks": 2}, {"width": 4}, (2, 2)),
    ("cyclegan", (1, 32, 64), {"width": 4, "blocks": 2}, {"width": 4, "layers": 2}, (6, 14)),
    ("pix2pix", (3, 32, 32), {"width": 4, "downs": 5}, {"width": 4}, (2, 2)),
    ("pix2pix", (1, 16, 32), {"width": 4, "downs": 4}, {"width": 4, "layers": 2}, (2, 6)),
])
def test_small_shapes_and_gradients(arch, shape, g, d, patches):
    torch.manual_seed(0)
    G, D = nets(arch, DataInfo("image", shape, 0), g, d)
    x = torch.rand(2, *shape) * 2 - 1
    y = G(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    logits = D(torch.cat([x, y], dim=1) if arch == "pix2pix" else y)
    assert logits.shape == (2, 1, *patches)
    logits.mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_instance_norm_has_no_parameters_and_no_running_statistics():
    G, D = nets("cyclegan", DataInfo("image", (3, 32, 32), 0), {"width": 4, "blocks": 2}, {"width": 4})
    norms = [m for m in [*G.modules(), *D.modules()] if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == (1 + 2 + 2 * 2 + 2) + 3  # G: stem, 2 down, 2 per block, 2 up; D: every conv but the first and the last
    assert all(not list(m.parameters()) and not list(m.buffers()) for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in [*G.modules(), *D.modules()])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # no running statistics: eval mode normalises as train mode does
        torch.testing.assert_close(G.train()(x), G.eval()(x))


@pytest.mark.parametrize("norm,per_sample", [("instance", True), ("none", True), ("batch", False)])
def test_a_sample_output_does_not_depend_on_the_other_samples(norm, per_sample):
    torch.manual_seed(0)
    info = DataInfo("image", (3, 32, 32), 0)
    G, D = nets("cyclegan", info, {"width": 4, "blocks": 1, "norm": norm}, {"width": 4, "norm": norm})
    G.train(), D.train()
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    b[0] = a[0]  # sample 0 the same, sample 1 another
    with torch.no_grad():
        for net in (G, D):
            same = torch.allclose(net(a)[0], net(b)[0], rtol=0, atol=1e-6)
            assert same == per_sample, (norm, type(net).__name__)


def test_unet_dropout_is_on_in_train_mode_only():
    info = DataInfo("image", (3, 64, 64), 0)
    torch.manual_seed(0)
    G = MODELS["pix2pix"].g(Pix2pixGConfig(width=4, downs=6, norm="instance"), 0, 0, info)
    assert sum(isinstance(m, nn.Dropout) for m in G.modules()) == 1  # downs - 5 levels
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(G.train()(x), G(x))
        torch.testing.assert_close(G.eval()(x), G(x))
        off = MODELS["pix2pix"].g(Pix2pixGConfig(width=4, downs=6, norm="instance", dropout=False), 0, 0, info).train()
        torch.testing.assert_close(off(x), off(x))


def test_unet_skips_come_first_in_the_up_path_input_as_in_the_reference():
    G = MODELS["pix2pix"].g(Pix2pixGConfig(width=4, downs=5), 0, 0, DataInfo("image", (3, 32, 32), 0))
    seen = {}
    G.down[2].register_forward_hook(lambda m, inputs, out: seen.update(skip=out))
    G.up[2].register_forward_hook(lambda m, inputs, out: seen.update(joined=inputs[0]))
    with torch.no_grad():
        G(torch.randn(2, 3, 32, 32))
    assert seen["joined"].shape[1] == 2 * seen["skip"].shape[1] == 2 * 16
    torch.testing.assert_close(seen["joined"][:, :16], seen["skip"], rtol=0, atol=0)


def test_dropout_placement_follows_the_reference(reference):
    unet = reference["unet_g"]
    with_dropout = [i for i, up in enumerate(unet.up) if any(isinstance(m, nn.Dropout) for m in up.modules())]
    assert with_dropout == [4, 5, 6]  # the num_downs - 5 levels of 8x width above the bottleneck (level 7)
    resnet = MODELS["cyclegan"].g(CycleganGConfig(width=4, blocks=2, dropout=True), 0, 0, DataInfo("image", (3, 32, 32), 0))
    assert sum(isinstance(m, nn.Dropout) for m in resnet.modules()) == 2  # one per residual block
    assert not any(isinstance(m, nn.Dropout) for m in reference["resnet_g"].modules())  # CycleGAN: off


def test_reference_init(reference):
    convs = [m for m in reference["unet_g"].modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.02) < 2e-4 and abs(weights.mean().item()) < 2e-4
    assert all(m.bias is None or (m.bias == 0).all() for m in convs)
    assert reference["unet_g"].up[0][1].bias is not None  # the output layer has one (no norm after it)
    bns = [m for m in reference["unet_g"].modules() if isinstance(m, nn.BatchNorm2d)]
    gains = torch.cat([m.weight for m in bns])
    assert abs(gains.mean().item() - 1.0) < 2e-3 and 0.018 < gains.std().item() < 0.022
    assert all((m.bias == 0).all() for m in bns)
    d_convs = [m for m in reference["patch_d"].modules() if isinstance(m, nn.Conv2d)]
    assert abs(torch.cat([m.weight.flatten() for m in d_convs]).std().item() - 0.02) < 2e-4
    assert all((m.bias == 0).all() for m in d_convs)  # instance norm: every conv has a bias, at 0


def test_config_defaults_and_keys():
    cfg = load_config(None, ["model.g.arch=cyclegan", "model.d.arch=cyclegan"])
    assert cfg.model.g == CycleganGConfig(width=64, norm="instance", blocks=9, dropout=False)
    assert cfg.model.d == CycleganDConfig(width=64, norm="instance", layers=3)
    cfg = load_config(None, ["model.g.arch=pix2pix", "model.d.arch=pix2pix"])
    assert cfg.model.g == Pix2pixGConfig(width=64, norm="batch", downs=8, dropout=True)
    assert cfg.model.d == Pix2pixDConfig(width=64, norm="batch", layers=3)
    with pytest.raises(ConfigError) as err:  # instance norm is for the image-to-image nets only
        load_config(None, ["model.d.arch=dcgan", "model.d.norm=instance"])
    assert err.value.key == "model.d.norm"


@pytest.mark.parametrize("arch,override,key", [
    ("cyclegan", "model.g.norm=group", "model.g.norm"), ("cyclegan", "model.g.blocks=-1", "model.g.blocks"),
    ("cyclegan", "model.d.layers=0", "model.d.layers"), ("pix2pix", "model.g.width=0", "model.g.width"),
    ("pix2pix", "model.g.downs=0", "model.g.downs"), ("pix2pix", "model.d.norm=layer", "model.d.norm"),
    ("cyclegan", "model.g.downs=5", "model.g.downs"), ("pix2pix", "model.g.blocks=9", "model.g.blocks"),  # the other G's key
    ("cyclegan", "model.d.dropout=true", "model.d.dropout"),  # a G key
])
def test_bad_values_and_keys_name_the_key(arch, override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"model.g.arch={arch}", f"model.d.arch={arch}", override])
    assert err.value.key == key


def test_g_and_d_archs_mix():
    # a Pix2Pix D (2C channels) behind the ResNet G: each section's arch picks its own net
    cfg = load_config(None, ["model.g.arch=cyclegan", "model.g.width=4", "model.g.blocks=1", "model.d.arch=pix2pix", "model.d.width=4"])
    info = DataInfo("image", (3, 32, 32), 0)
    G, D = build_generator(cfg.model, info), build_discriminator(cfg.model, info)
    x = torch.randn(2, 3, 32, 32)
    assert D(torch.cat([x, G(x)], dim=1)).shape == (2, 1, 2, 2)


@pytest.mark.parametrize("arch", ["cyclegan", "pix2pix"])
def test_labels_and_non_image_data_are_refused(arch):
    g_cls, d_cls = CLASSES[arch]
    model = ModelConfig(g=g_cls(width=4), d=d_cls(width=4), num_classes=10)
    for build in (build_generator, build_discriminator):
        with pytest.raises(ConfigError, match="takes no labels") as err:
            build(model, DataInfo("image", (3, 256, 256), 10))
        assert err.value.key == "model.num_classes"
    model.num_classes = 0
    for build, key in ((build_generator, "model.g.arch"), (build_discriminator, "model.d.arch")):
        with pytest.raises(ConfigError) as err:
            build(model, DataInfo("vector", (5,), 0))
        assert err.value.key == key


@pytest.mark.parametrize("arch,side,net,shape", [
    ("pix2pix", "g", {"downs": 8}, (3, 32, 32)),  # 256 px for downs 8
    ("pix2pix", "g", {"downs": 5}, (3, 48, 40)),  # 40 is no multiple of 32
    ("cyclegan", "g", {}, (3, 30, 30)),  # not a multiple of 4
    ("cyclegan", "g", {}, (3, 4, 4)),  # too small for the reflection padding
    ("cyclegan", "d", {}, (3, 16, 16)),  # 3 layers need 24 px
    ("pix2pix", "d", {"layers": 4}, (3, 32, 32)),  # 4 layers need 48 px
])
def test_resolutions_the_nets_cannot_take_are_refused(arch, side, net, shape):
    cls = CLASSES[arch]["gd".index(side)]
    with pytest.raises(ConfigError) as err:
        (MODELS[arch].g, MODELS[arch].d)["gd".index(side)](cls(width=4, **net), 0, 0, DataInfo("image", shape, 0))
    assert err.value.key == "data.resolution"
    assert f"{shape[1]}x{shape[2]}" in err.value.reason


@pytest.mark.parametrize("side", ["g", "d"])
def test_the_z_recipes_refuse_image_to_image_nets(side):
    from bigtrain.families import load_config
    from bigtrain.families import build_recipe

    cfg = load_config(None, [f"model.{side}.arch=cyclegan", "data.resolution=32"])
    with pytest.raises(ConfigError, match=f"model.{side}.arch: cyclegan nets translate images"):
        build_recipe(cfg, DataInfo("image", (3, 32, 32), 0))
