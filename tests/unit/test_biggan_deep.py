"""BigGAN-deep's nets (bigtrain/families/biggan/deep.py): counts, shapes, conditioning on [z, y],
the channel-dropping and channel-concatenating skips, bf16."""
import pytest
import torch
import torch.nn.functional as F

from bigtrain.families.biggan.deep import BigganDeepDConfig, BigganDeepGConfig
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.biggan import deep as biggan_deep
from bigtrain.families.biggan.nets import BigganBatchNorm, SelfAttention
from bigtrain.families.biggan.deep import BigganDeepDiscriminator, BigganDeepGenerator, DeepDBlock, DeepGBlock
from bigtrain.families.biggan.recipe import regularized_weights


def count(net):
    return sum(p.numel() for p in net.parameters())


def nets(res, z_dim=16, classes=10, width=8, g=None, d=None):
    info = DataInfo("image", (3, res, res), classes)
    return (BigganDeepGenerator(g or BigganDeepGConfig(width=width, shared_dim=16), z_dim, classes, info),
            BigganDeepDiscriminator(d or BigganDeepDConfig(width=width), z_dim, classes, info))


def test_parameter_counts_match_bigganpytorch(monkeypatch):
    monkeypatch.setattr(biggan_deep, "orthogonal_init", lambda net: None)  # counts do not depend on it; QR of 85 M weights takes ~15 s
    info = DataInfo("image", (3, 128, 128), 1000)
    G = BigganDeepGenerator(BigganDeepGConfig(), 128, 1000, info)  # ch 128, depth 2, z 128, shared 128
    # BGP's G at every commit of BigGANdeep.py: its last conv goes to 3 channels (TF Hub's has 128, of
    # which the image is the first 3; bigtrain had that until issue 27: 50,388,609)
    assert count(G) == 50_244_484
    assert G.out_conv.out_channels == 3
    assert count(BigganDeepDiscriminator(BigganDeepDConfig(), 128, 1000, info)) == 34_590_210


@pytest.mark.parametrize("res", [32, 64, 128, 256, 512])
def test_shapes_at_every_resolution(res):
    info = DataInfo("image", (3, res, res), 10)
    G = BigganDeepGenerator(BigganDeepGConfig(width=8, shared_dim=16), 16, 10, info)  # self-attention needs ch / 8 >= 1
    z, y = torch.randn(2, 16), torch.tensor([1, 3])
    x = G(z, y)
    assert x.shape == (2, 3, res, res) and x.abs().max() <= 1
    assert [len(stage) for stage in G.blocks] == [2] * len(G.blocks)
    assert [type(a) for a in G.attention].count(SelfAttention) == 1
    if res == 512:  # BGP's D_arch stops at 256
        with pytest.raises(ConfigError, match="data.resolution"):
            BigganDeepDiscriminator(BigganDeepDConfig(width=8), 16, 10, info)
        return
    D = BigganDeepDiscriminator(BigganDeepDConfig(width=8), 16, 10, info)
    assert D(x, y).shape == (2,)
    assert [len(stage) for stage in D.blocks] == [2] * len(D.blocks)
    assert [type(a) for a in D.attention].count(SelfAttention) == 1


def test_attention_follows_the_64x64_stages_at_128_px():
    G, D = nets(128)
    assert [type(a) is SelfAttention for a in G.attention] == [False, False, False, True, False]  # G stages output 8, 16, 32, 64, 128
    assert [type(a) is SelfAttention for a in D.attention] == [True, False, False, False, False]  # D stages output 64, 32, 16, 8, 4
    assert G.attention[3].ch == 2 * 8 and D.attention[0].ch == 2 * 8


def test_depth_sets_the_blocks_per_stage():
    G, D = nets(32, g=BigganDeepGConfig(width=8, shared_dim=16, depth=3), d=BigganDeepDConfig(width=8, depth=1))
    assert [len(stage) for stage in G.blocks] == [3, 3, 3] and [len(stage) for stage in D.blocks] == [1, 1, 1]
    assert D(G(torch.randn(2, 16), torch.tensor([0, 1])), torch.tensor([0, 1])).shape == (2,)


def test_widths_too_small_for_a_bottleneck_are_refused():
    with pytest.raises(ConfigError, match="model.g.width.*at least 2, got 1"):
        nets(128, g=BigganDeepGConfig(width=1, shared_dim=16, attention=[]))
    with pytest.raises(ConfigError, match="model.d.width.*at least 2, got 1"):
        nets(128, g=BigganDeepGConfig(width=2, shared_dim=16, attention=[]), d=BigganDeepDConfig(width=1, attention=[]))


def test_class_embedding_changes_the_output_and_bypasses_spectral_norm():
    G, _ = nets(32)
    G.eval()
    z, y = torch.randn(2, 16).repeat(2, 1), torch.tensor([0, 0, 1, 1])  # the same two latents under classes 0 and 1
    x = G(z, y)
    assert (x[:2] - x[2:]).abs().mean() > 1e-3
    assert torch.equal(G(z, class_embedding=G.embed(y)), x)  # an embedding given directly (class interpolation)
    assert not hasattr(G.shared, "parametrizations") and hasattr(G.linear, "parametrizations")  # BGP: no SN on G's shared embedding
    assert id(G.shared.weight) not in {id(p) for p in regularized_weights(G)}  # the recipe's ortho skips it too


def test_the_whole_z_reaches_every_block():
    G, _ = nets(32, z_dim=16)
    G.eval()
    z, y = torch.randn(2, 16, requires_grad=True), torch.tensor([0, 1])
    seen = []
    cbns = [m for m in G.modules() if isinstance(m, BigganBatchNorm) and m.cond_dim]
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[1])) for m in cbns]
    G(z, y).square().sum().backward()
    for hook in hooks:
        hook.remove()
    assert len(cbns) == 4 * 2 * 3  # 4 CBNs a block, 2 blocks a stage, 3 stages at 32 px
    # [embed(y), z], unsplit: BGP's order (`torch.cat([y, z], 1)`)
    embedded = G.shared(y)
    assert len(seen) == len(cbns)
    assert all(c.shape == (2, 16 + 16) and torch.equal(c[:, 16:], z) and torch.equal(c[:, :16], embedded) for c in seen)
    assert (z.grad.abs().sum(dim=0) > 0).all()
    assert G.linear.in_features == 16 + 16  # the input layer reads [embed(y), z] too


def test_g_skip_keeps_the_first_channels():
    torch.manual_seed(0)
    block = DeepGBlock(16, 8, True, cond_dim=4, eps=1e-5, cross_replica=False)
    assert block.conv1.out_channels == 4  # the bottleneck: c_in / 4
    with torch.no_grad():
        block.conv4.weight.zero_(), block.conv4.bias.zero_()  # the residual branch off: what remains is the skip
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(block(x, torch.randn(2, 4)), F.interpolate(x[:, :8], scale_factor=2, mode="nearest"))
    assert all(p.shape[:2] != (8, 16) for p in block.parameters())  # no learned c_in -> c_out shortcut


def test_d_skip_concatenates_a_learned_remainder():
    torch.manual_seed(0)
    block = DeepDBlock(4, 12, True)
    assert block.conv1.out_channels == 3 and block.extra.out_channels == 12 - 4  # bottleneck c_out / 4; conv_sc adds the rest
    with torch.no_grad():
        block.conv4.weight.zero_(), block.conv4.bias.zero_()
    x = torch.randn(2, 4, 8, 8)
    pooled = F.avg_pool2d(x, 2)
    out = block(x)
    assert torch.equal(out[:, :4], pooled) and torch.allclose(out[:, 4:], block.extra(pooled))
    assert DeepDBlock(12, 12, False).extra is None  # equal channels: the identity


def test_training_step_under_bf16_autocast_has_finite_gradients():
    G, D = nets(32)
    G.train(), D.train()
    y = torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.relu(1 + D(G(torch.randn(4, 16), y), y)).mean()
    loss.backward()
    grads = [p.grad for net in (G, D) for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
