"""StyleGAN2-ADA's nets (bigtrain/families/stylegan2/nets.py): the reference's parameter counts for the
presets of its train.py, its module names, shapes, noise, truncation, w_avg, labels, mixed precision,
config checks, and second-order gradients through every op (R1, path length). Values equal to the
reference's are checked by the harness outside the repository (float32: equal; float64: ~1e-16)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import bigtrain.families.stylegan2.nets as nets
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.stylegan2.layers import FullyConnectedLayer, bias_act, minibatch_stddev, modulated_conv2d
from bigtrain.families.stylegan2.nets import Stylegan2DConfig, Stylegan2Discriminator, Stylegan2GConfig, Stylegan2Generator
from bigtrain.layers.resample import setup_filter

# preset: (resolution, classes, G keys, D keys, (G, G.mapping, D) parameters of the reference's nets)
PRESETS = {
    "cifar_cond": (32, 10, {"map": 2}, {"architecture": "orig", "mbstd_group": 32}, (20_215_315, 793_088, 23_089_664)),
    "cifar": (32, 0, {"map": 2}, {"architecture": "orig", "mbstd_group": 32}, (19_947_539, 525_312, 20_720_641)),
    "paper256": (256, 0, {"channel_base": 16384}, {"channel_base": 16384, "mbstd_group": 8},
                 (24_767_458, 2_101_248, 24_001_089)),  # fmt: skip
    "paper1024": (1024, 0, {}, {}, (30_370_060, 2_101_248, 29_012_513)),  # = the stylegan2 preset
}
TINY_G = {"channel_base": 64, "channel_max": 8, "w_dim": 8, "map": 2}
TINY_D = {"channel_base": 64, "channel_max": 8, "mbstd_group": 2}
Z = 8


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def tiny(res: int = 16, classes: int = 0, g: dict | None = None, d: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    info = DataInfo("image", (3, res, res), classes)
    G = Stylegan2Generator(Stylegan2GConfig(**{**TINY_G, **(g or {})}), Z, classes, info)
    D = Stylegan2Discriminator(Stylegan2DConfig(**{**TINY_D, **(d or {})}), Z, classes, info)
    return G, D


def with_noise_and_biases(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Noise strengths and biases away from their zero init, so that every term counts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("noise_strength", "bias")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_counts_equal_the_reference_presets(preset):
    res, classes, g, d, (n_g, n_map, n_d) = PRESETS[preset]
    info = DataInfo("image", (3, res, res), classes)
    G = Stylegan2Generator(Stylegan2GConfig(**g), 512, classes, info)
    D = Stylegan2Discriminator(Stylegan2DConfig(**d), 512, classes, info)
    assert (count(G), count(G.mapping), count(D)) == (n_g, n_map, n_d)
    assert G.num_ws == 2 * int(math.log2(res)) - 2  # two per resolution, one less at 4x4, + the last ToRGB
    assert G.synthesis.b4.conv1.weight.shape[0] == 512 and G.synthesis.b4.const.shape == (512, 4, 4)


def test_module_names_are_the_references():
    G, D = tiny(classes=3, d={"architecture": "resnet"})
    g_keys, d_keys = set(G.state_dict()), set(D.state_dict())
    for key in ["mapping.embed.weight", "mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg",
                "synthesis.b4.const", "synthesis.b4.conv1.affine.weight", "synthesis.b4.conv1.noise_const",
                "synthesis.b4.conv1.noise_strength", "synthesis.b16.conv0.weight", "synthesis.b16.torgb.affine.bias",
                "synthesis.b8.torgb.weight"]:  # fmt: skip
        assert key in g_keys, key
    for key in ["b16.fromrgb.weight", "b16.conv0.bias", "b16.conv1.weight", "b16.skip.weight", "b8.skip.weight",
                "b4.conv.weight", "b4.fc.weight", "b4.out.bias", "mapping.embed.weight",
                "mapping.fc7.weight"]:  # fmt: skip
        assert key in d_keys, key
    # the FIR filters come from the config, not the state dict; the noise buffers are state
    assert not any("resample_filter" in k for k in g_keys | d_keys)
    assert "b8.fromrgb.weight" not in d_keys and "b16.skip.bias" not in d_keys


def test_shapes():
    G, D = tiny(res=32, classes=3)
    z, y = torch.randn(4, Z), torch.tensor([0, 1, 2, 1])
    ws = G.mapping(z, y)
    assert ws.shape == (4, G.num_ws, 8) and G.num_ws == 8
    img = G.synthesis(ws)
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert G(z, y).shape == (4, 3, 32, 32)
    assert D(img, y).shape == (4,)
    for g_arch, d_arch in [("orig", "skip"), ("resnet", "orig")]:
        G2, D2 = tiny(res=8, g={"architecture": g_arch}, d={"architecture": d_arch})
        assert D2(G2(torch.randn(2, Z))).shape == (2,)
    with pytest.raises(ValueError):
        D(torch.randn(4, 3, 16, 16), y)
    with pytest.raises(ValueError):
        G.synthesis(ws[:, 1:])


def test_initial_values_and_equalised_learning_rate():
    G, _ = tiny()
    layer = G.synthesis.b16.conv0
    assert layer.noise_strength.item() == 0 and (layer.bias == 0).all() and (layer.affine.bias == 1).all()
    fc = FullyConnectedLayer(400, 300, "lrelu", lr_mult=0.01)
    assert abs(fc.weight.std().item() - 100) < 2  # N(0, 1) / lr_mult, so lr_mult scales its steps
    with torch.no_grad():
        fc.bias.normal_()
    x = torch.randn(5, 400)
    expected = F.leaky_relu(x @ (fc.weight * 0.01 / 20).T + fc.bias * 0.01, 0.2) * math.sqrt(2)
    torch.testing.assert_close(fc(x), expected)
    conv = nets.Conv2dLayer(4, 6, 3, clamp=0.1)
    out = conv(torch.randn(2, 4, 5, 5) * 100)
    torch.testing.assert_close(out.abs().max(), torch.tensor(0.1))  # conv_clamp


def test_noise_modes():
    G, _ = tiny()
    ws = G.mapping(torch.randn(2, Z))
    # strengths start at 0: no mode adds anything
    torch.testing.assert_close(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="none"))
    with_noise_and_biases(G)
    const = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), const, rtol=0, atol=0)
    none = G.synthesis(ws, noise_mode="none")
    assert not torch.allclose(const, none)
    assert not torch.allclose(G.synthesis(ws), G.synthesis(ws))  # random: fresh noise per call
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, nets.SynthesisLayer):
                m.noise_const.zero_()
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), none)  # const reads the noise_const buffers
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode="fixed")


def test_truncation_in_w_space():
    G, _ = tiny()
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    z = torch.randn(3, Z)
    ws = G.mapping(z)
    torch.testing.assert_close(G.mapping(z, truncation_psi=0), G.mapping.w_avg.expand_as(ws))
    half = G.mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(half, (ws + G.mapping.w_avg) / 2)
    cut = G.mapping(z, truncation_psi=0, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], G.mapping.w_avg.expand(3, 2, -1))
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])  # later layers keep their w
    with torch.no_grad():
        img = G(z, truncation_psi=0, noise_mode="const")
    torch.testing.assert_close(img[0], img[2])  # every sample is the average one


def test_w_avg_moves_only_when_asked_in_training():
    G, _ = tiny()
    z = torch.randn(6, Z)
    G.train()
    G(z)
    G.mapping(z)
    assert (G.mapping.w_avg == 0).all()  # not asked
    G.eval()
    G.mapping(z, update_emas=True)
    assert (G.mapping.w_avg == 0).all()  # not in training
    G.train()
    w = G.mapping(z, update_emas=True)[:, 0]
    torch.testing.assert_close(G.mapping.w_avg, w.mean(dim=0) * (1 - 0.995))  # lerp(mean, w_avg, beta) from 0


def test_labels():
    G, D = tiny(classes=3)
    z, x = torch.randn(2, Z), torch.randn(2, 3, 16, 16)
    for call in (lambda: G(z), lambda: D(x), lambda: G(z, torch.tensor([0.0, 1.0])), lambda: D(x, torch.tensor(1))):
        with pytest.raises(ValueError, match="class-conditional"):
            call()
    assert not torch.allclose(G.mapping(z, torch.tensor([0, 0])), G.mapping(z, torch.tensor([1, 1])))
    assert not torch.allclose(D(x, torch.tensor([0, 0])), D(x, torch.tensor([2, 2])))
    G0, D0 = tiny()
    with pytest.raises(ValueError, match="unconditional"):
        G0(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        D0(x, torch.tensor([0, 1]))


def test_style_mixing_reads_each_layers_w():
    G, _ = tiny()
    ws = G.mapping(torch.randn(2, Z)).detach().requires_grad_(True)
    img = G.synthesis(ws, noise_mode="const")
    (grad,) = torch.autograd.grad(img.square().sum(), ws)
    assert (grad.abs().sum(dim=2) > 0).all()  # every layer's w reaches the image
    mixed = torch.cat([ws[:1, :3], ws[1:, 3:]], dim=1)
    assert not torch.allclose(G.synthesis(mixed, noise_mode="const"), img[:1])


def test_fused_and_unfused_modulated_conv_agree():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    noise = torch.randn(3, 1, 12, 12)
    f = setup_filter([1, 3, 3, 1])
    for up, demodulate in [(1, True), (2, True), (1, False)]:
        n = noise if up == 2 else noise[:, :, :6, :6]
        a = modulated_conv2d(x, weight, styles, n, up, f, demodulate, fused=True)
        b = modulated_conv2d(x, weight, styles, n, up, f, demodulate, fused=False)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # demodulated: each sample's output channel is a unit-norm filter of the input, whatever the weight's scale
    a = modulated_conv2d(x, weight, styles)
    torch.testing.assert_close(modulated_conv2d(x, weight * 7, styles * 3), a, rtol=1e-5, atol=1e-5)
    G, _ = tiny()
    with_noise_and_biases(G)
    ws = G.mapping(torch.randn(2, Z))
    fused, unfused = G.synthesis(ws, "const", fused_modconv=True), G.synthesis(ws, "const", fused_modconv=False)
    torch.testing.assert_close(fused, unfused)


def test_minibatch_stddev_groups():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 4.0], [1.0, 3.0]])[:, :, None, None]
    out = minibatch_stddev(x, group_size=2, num_channels=1)  # groups {0, 2} and {1, 3} (i mod N/G)
    torch.testing.assert_close(out[:, 2, 0, 0], torch.tensor([1.5, 0.50005, 1.5, 0.50005]))
    out = minibatch_stddev(x, group_size=2, num_channels=2)  # a statistic per channel group
    torch.testing.assert_close(out[:, 2:, 0, 0], torch.tensor([[1.0, 2.0], [1e-4, 1.0], [1.0, 2.0], [1e-4, 1.0]]))
    assert minibatch_stddev(x, 32, 1).shape == (4, 3, 1, 1)  # the group is at most the batch
    _, D = tiny(d={"mbstd_group": 0})
    assert D.b4.conv.weight.shape[1] == 8  # no stddev channel


def test_mixed_precision(monkeypatch):
    """On CPU everything runs in float32, also inside autocast; the top num_fp16_res resolutions
    switch to the half dtype the device would pick (forced here; CUDA picks it by itself)."""
    G, D = tiny(res=32, g={"num_fp16_res": 2}, d={"num_fp16_res": 2})
    G.eval()
    z = torch.randn(2, Z)
    seen = {}
    for res in (4, 8, 16, 32):
        getattr(G.synthesis, f"b{res}").conv1.register_forward_hook(lambda m, i, o, r=res: seen.__setitem__(r, o.dtype))
    full = G(z, noise_mode="const")
    assert set(seen.values()) == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(G(z, noise_mode="const"), full, rtol=0, atol=0)  # the nets own their precision
        assert D(full).dtype == torch.float32
    for half in (torch.float16, torch.bfloat16):
        monkeypatch.setattr(nets, "half_dtype", lambda device, half=half: half)
        img = G(z, noise_mode="const")
        assert seen == {4: torch.float32, 8: torch.float32, 16: half, 32: half} and img.dtype == torch.float32
        torch.testing.assert_close(img, full, rtol=0.05, atol=0.05)
        torch.testing.assert_close(D(img), D(full.detach()), rtol=0.05, atol=0.05)


def test_config_checks_name_the_key():
    assert Stylegan2GConfig().arch == Stylegan2DConfig().arch == "stylegan2"
    for cls, keys, key in [
        (Stylegan2GConfig, {"width": 32}, "width"),
        (Stylegan2GConfig, {"architecture": "fancy"}, "architecture"),
        (Stylegan2GConfig, {"map": 0}, "map"),
        (Stylegan2GConfig, {"w_avg_beta": 1.0}, "w_avg_beta"),
        (Stylegan2GConfig, {"conv_clamp": -1.0}, "conv_clamp"),
        (Stylegan2GConfig, {"resample_filter": []}, "resample_filter"),
        (Stylegan2DConfig, {"channel_base": 0}, "channel_base"),
        (Stylegan2DConfig, {"num_fp16_res": -1}, "num_fp16_res"),
        (Stylegan2DConfig, {"mbstd_group": -1}, "mbstd_group"),
        (Stylegan2DConfig, {"mbstd_channels": 0}, "mbstd_channels"),
    ]:
        with pytest.raises(ConfigError) as err:
            cls(**keys).validate("model.x")
        assert err.value.key == f"model.x.{key}"
    Stylegan2GConfig(conv_clamp=None).validate("model.g")  # null and 0 turn the clamp off
    assert Stylegan2GConfig(conv_clamp=0).clamp() is None and Stylegan2DConfig().clamp() == 256
    with pytest.raises(ConfigError) as err:
        tiny(res=32, g={"channel_base": 16})
    assert err.value.key == "model.g.channel_base"
    with pytest.raises(ConfigError) as err:
        Stylegan2Discriminator(Stylegan2DConfig(), Z, 0, DataInfo("image", (3, 24, 24), 0))
    assert err.value.key == "data.resolution"
    # the sections load through OmegaConf as the config loader does (lists, optional floats)
    merged = OmegaConf.merge(OmegaConf.structured(Stylegan2GConfig), {"resample_filter": [1, 1], "conv_clamp": None})
    cfg = OmegaConf.to_object(merged)
    assert cfg.resample_filter == [1.0, 1.0] and cfg.conv_clamp is None


def test_every_op_is_twice_differentiable():
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    x, weight, styles = torch.randn(2, 2, 4, 4, **d), torch.randn(3, 2, 3, 3, **d), torch.randn(2, 2, **d)
    f = setup_filter([1, 3, 3, 1]).double()
    for up, fused in [(1, True), (2, True), (2, False)]:

        def mod(x, weight, styles, up=up, fused=fused):
            return modulated_conv2d(x, weight, styles, None, up, f, fused=fused)

        assert torch.autograd.gradcheck(mod, (x, weight, styles), fast_mode=True)
        assert torch.autograd.gradgradcheck(mod, (x, weight, styles), fast_mode=True)
    b = torch.randn(2, **d)
    ops = (lambda x, b: bias_act(x, b, "lrelu", math.sqrt(2), clamp=1.0),
           lambda x, b: minibatch_stddev(x + b[:, None, None], 2, 1))  # fmt: skip
    for op in ops:
        assert torch.autograd.gradcheck(op, (x, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(op, (x, b), fast_mode=True)


def test_r1_and_path_length_backpropagate_through_whole_nets():
    G, D = tiny(res=8, classes=2)
    G, D = with_noise_and_biases(G).double(), with_noise_and_biases(D).double()
    y = torch.tensor([0, 1])
    # R1: the gradient of D's logits w.r.t. its input, then that norm's gradient w.r.t. D's weights
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(D(x, y).sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    # every weight (biases only move lrelu's kinks: zero second derivative), the label mapping's included
    weights = [(n, p) for n, p in D.named_parameters() if n.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in weights) and len(weights) == 16
    # path length: the gradient of <G(w), noise> w.r.t. ws, then its norm's gradient w.r.t. G's weights
    ws = G.mapping(torch.randn(2, Z, dtype=torch.float64), y)
    img = G.synthesis(ws, noise_mode="const")
    (grad_ws,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    grad_ws.square().sum(dim=2).mean().sqrt().backward()
    assert G.mapping.fc0.weight.grad.abs().sum() > 0 and G.synthesis.b8.conv0.weight.grad.abs().sum() > 0
    # and D's input gradient is right to second order (finite differences through a whole narrow D)
    _, D1 = tiny(res=8, d={"channel_max": 2, "channel_base": 16})
    D1 = with_noise_and_biases(D1).double()
    x1 = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: D1(x), (x1,), fast_mode=True)
