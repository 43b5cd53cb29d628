"""BigGAN-deep (Brock et al. 2019, appendix B), laid out as BigGAN-PyTorch's `BigGANdeep.py` (BGP).

Where plain BigGAN (bigtrain/families/biggan/nets.py) has one wide residual block per resolution, the
deep nets have `depth` (BGP's G_depth / D_depth, 2) bottleneck blocks per resolution, a stage:
1x1 conv to a quarter of the channels, two 3x3 convs, 1x1 conv back out.

G: the shared class embedding and z together, c = [embed(y), z] (shared_dim + z_dim, 256), feed
the input layer (an SN-linear map to a 4x4 map) and every conditional BN: z is not split into
chunks. Each stage is `depth` blocks, the last one doubling the resolution and going to the
stage's output channels; a block is CBN, ReLU, conv1x1 (to c_in / 4), CBN, ReLU, [2x nearest
upsample], conv3x3, CBN, ReLU, conv3x3, CBN, ReLU, conv1x1 (to c_out), and its skip is x's first
c_out channels (upsampled in the last block): no learned shortcut. Self-attention follows the
stages whose output resolution is in `attention` -> BN, ReLU, conv3x3 (to the image's C channels),
tanh. (The TF Hub BigGAN-deep's last conv has 128 output channels of which the image is the first 3;
BGP's, at every commit, has 3, and so has this one.)
D: a conv3x3 stem, then stages of `depth` blocks, the first one halving the resolution (except
at the end of the 32 px ladder) and going to the stage's channels; a block is ReLU, conv1x1 (to
c_out / 4), ReLU, conv3x3, ReLU, conv3x3, ReLU, [2x2 average pool], conv1x1 (to c_out), and its
skip is x (pooled likewise) with c_out - c_in more channels appended, a learned conv1x1 of that
pooled x. Self-attention after the stages in `attention` -> ReLU, global sum pooling, a linear
logit + the projection <embed(y), h>.

Init, spectral norm (all but G's shared embedding), the fp32 numerics and cross-replica BN are
biggan.py's, whose pieces this module uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config import _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.biggan.nets import (
    LADDERS,
    BigganBatchNorm,
    BigganGenerator,
    SelfAttention,
    _attention_after,
    _BigganNet,
    conv,
    default_attention,
    orthogonal_init,
    spectral_norm_fp32,
)
from bigtrain.layers import DiscriminatorHead, check_labels, image_resolution, resolve_cond


@dataclass
class BigganDeepGConfig(_BigganNet):
    """BigGAN-deep's G (bigtrain/families/biggan/deep.py): z is never split, so no `hier`."""

    arch: str = "biggan_deep"  # this class's architecture
    width: int = 128  # channel multiple `ch` (BigGAN-PyTorch's G_ch): see bigtrain/families/biggan/deep.py
    depth: int = 2  # bottleneck residual blocks per resolution (BigGAN-PyTorch's G_depth)
    shared_dim: int = 128  # size of the shared class embedding (no spectral norm); [it, z] feeds every conditional BN
    bn_eps: float = 1e-5  # batch norm epsilon (BigGAN-PyTorch --BN_eps 1e-5)
    cross_replica: bool = False  # G's batch-norm statistics over every process (SyncBN); G_ema uses its own

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for key in ("shared_dim", "bn_eps"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))


@dataclass
class BigganDeepDConfig(_BigganNet):
    """BigGAN-deep's D (bigtrain/families/biggan/deep.py)."""

    arch: str = "biggan_deep"  # this class's architecture
    width: int = 128  # channel multiple `ch` (BigGAN-PyTorch's D_ch): see bigtrain/families/biggan/deep.py
    depth: int = 2  # bottleneck residual blocks per resolution (BigGAN-PyTorch's D_depth)


# G: BGP's G_arch is plain BigGAN's: channels / width of the 4x4 map, then each stage's output
G_LADDERS = {res: ladder.g for res, ladder in LADDERS.items()}


class DeepDLadder(NamedTuple):
    d: tuple[int, ...]  # channels / width: the stem's output, then each stage's
    down: tuple[bool, ...]  # which stages halve the resolution


# D: BGP's D_arch (it has none at 512 px; its 32 px ladder is 4x wide and ends at 8x8)
D_LADDERS = {
    32: DeepDLadder(d=(4, 4, 4, 4), down=(True, True, False)),
    64: DeepDLadder(d=(1, 2, 4, 8, 16), down=(True,) * 4),
    128: DeepDLadder(d=(1, 2, 4, 8, 16, 16), down=(True,) * 5),
    256: DeepDLadder(d=(1, 2, 4, 8, 8, 16, 16), down=(True,) * 6),
}


def _check_bottleneck(key: str, width: int, multiples: tuple[int, ...], res: int) -> None:
    """ConfigError naming `key` where a block's bottleneck (its channels / 4) would have no channels."""
    least = -(-4 // min(multiples))
    if width < least:
        raise ConfigError(
            key,
            f"biggan_deep's bottlenecks have a quarter of a block's channels: at {res} px the width must be at least "
            f"{least}, got {width}",
        )


def _init(net: nn.Module, cfg: BigganDeepGConfig | BigganDeepDConfig, skip: Optional[nn.Module] = None) -> None:
    """Orthogonal init, then spectral norm (if cfg asks) on every weight but `skip`'s."""
    orthogonal_init(net)
    if cfg.spectral_norm:
        spectral_norm_fp32(net, cfg.sn_eps, skip=[skip] if skip is not None else [])


class DeepGBlock(nn.Module):
    """x [N, c_in, H, W], c [N, cond_dim] -> [N, c_out, 2H, 2W] (H, W when not `up`), c_out <= c_in."""

    def __init__(self, c_in: int, c_out: int, up: bool, cond_dim: int, eps: float, cross_replica: bool):
        super().__init__()
        hidden = c_in // 4
        self.c_out, self.up = c_out, up
        self.bn1 = BigganBatchNorm(c_in, cond_dim, eps, cross_replica)
        self.conv1 = conv(c_in, hidden, 1)
        self.bn2 = BigganBatchNorm(hidden, cond_dim, eps, cross_replica)
        self.conv2 = conv(hidden, hidden)
        self.bn3 = BigganBatchNorm(hidden, cond_dim, eps, cross_replica)
        self.conv3 = conv(hidden, hidden)
        self.bn4 = BigganBatchNorm(hidden, cond_dim, eps, cross_replica)
        self.conv4 = conv(hidden, c_out, 1)

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else x

    def forward(self, x: Tensor, c: Optional[Tensor]) -> Tensor:
        h = F.relu(self.bn2(self.conv1(F.relu(self.bn1(x, c))), c))  # [N, c_in / 4, H, W]
        h = self.conv3(F.relu(self.bn3(self.conv2(self._up(h)), c)))
        h = self.conv4(F.relu(self.bn4(h, c)))  # [N, c_out, 2H, 2W]
        return h + self._up(x[:, : self.c_out])  # the skip drops channels


class DeepDBlock(nn.Module):
    """x [N, c_in, H, W] -> [N, c_out, H/2, W/2] (H, W when not `down`), c_out >= c_in."""

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        hidden = c_out // 4
        self.down = down
        self.conv1 = conv(c_in, hidden, 1)
        self.conv2 = conv(hidden, hidden)
        self.conv3 = conv(hidden, hidden)
        self.conv4 = conv(hidden, c_out, 1)
        self.extra = conv(c_in, c_out - c_in, 1) if c_out != c_in else None  # BGP's conv_sc

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv3(F.relu(self.conv2(F.relu(self.conv1(F.relu(x))))))  # [N, c_out / 4, H, W]
        h = self.conv4(self._pool(F.relu(h)))  # [N, c_out, H/2, W/2]
        skip = self._pool(x)
        if self.extra is not None:
            skip = torch.cat([skip, self.extra(skip)], 1)  # [N, c_in + (c_out - c_in), H/2, W/2]
        return h + skip


class BigganDeepGenerator(nn.Module):
    """z [N, z_dim] (+ y int64 [N], or a class embedding [N, shared_dim]) -> images in [-1, 1]."""

    def __init__(self, net: BigganDeepGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.g.arch", "biggan_deep", tuple(G_LADDERS))
        if net.cond not in ("auto", "cbn"):
            raise ConfigError(
                "model.g.cond", f"biggan_deep G conditions its batch norms (cbn, = auto); got {net.cond!r}"
            )
        _check_bottleneck("model.g.width", net.width, G_LADDERS[res][:-1], res)  # each block's input channels / 4
        channels = [net.width * k for k in G_LADDERS[res]]
        self.num_classes, self.image_channels, self.ch0 = num_classes, info.shape[0], channels[0]
        self.shared = nn.Embedding(num_classes, net.shared_dim) if num_classes else None
        cond_dim = z_dim + (net.shared_dim if num_classes else 0)
        self.linear = nn.Linear(cond_dim, 4 * 4 * self.ch0)
        bn = dict(cond_dim=cond_dim, eps=net.bn_eps, cross_replica=net.cross_replica)
        self.blocks = nn.ModuleList(
            nn.ModuleList(DeepGBlock(a, b if last else a, last, **bn) for last in [False] * (net.depth - 1) + [True])
            for a, b in zip(channels, channels[1:])
        )
        outputs = [8 * 2**i for i in range(len(self.blocks))]
        attend = _attention_after(
            outputs,
            channels[1:],
            net.attention if net.attention is not None else default_attention(res),
            "model.g.attention",
        )
        self.attention = nn.ModuleList(SelfAttention(c) if a else nn.Identity() for c, a in zip(channels[1:], attend))
        self.out_bn = BigganBatchNorm(channels[-1], 0, net.bn_eps, net.cross_replica)
        self.out_conv = conv(channels[-1], self.image_channels)
        _init(self, net, skip=self.shared)  # BGP: no SN on G's shared embedding

    embed = BigganGenerator.embed  # y -> the shared class embedding [N, shared_dim] (for class interpolation)

    def forward(self, z: Tensor, y: Optional[Tensor] = None, class_embedding: Optional[Tensor] = None) -> Tensor:
        if class_embedding is None and self.shared is not None:
            class_embedding = self.embed(check_labels(y, self.num_classes))  # [N, shared_dim]
        c = (
            z if class_embedding is None else torch.cat([class_embedding, z.to(class_embedding.dtype)], 1)
        )  # [N, cond_dim]: [embed(y), z], BGP's order (`torch.cat([y, z], 1)` in BigGANdeep.py)
        h = self.linear(c).view(z.shape[0], self.ch0, 4, 4)
        for stage, attention in zip(self.blocks, self.attention):
            for block in stage:
                h = block(h, c)
            h = attention(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))  # [N, C, res, res]


class BigganDeepDiscriminator(nn.Module):
    """x [N, C, res, res] (+ y) -> logits [N] (or [N, 1 + K] with cond acgan)."""

    def __init__(self, net: BigganDeepDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.d.arch", "biggan_deep", tuple(D_LADDERS))
        self.cond = resolve_cond(
            net, num_classes, "model.d.cond", "biggan_deep", ("projection", "acgan"), default="projection"
        )
        self.num_classes = num_classes
        ladder = D_LADDERS[res]
        _check_bottleneck("model.d.width", net.width, ladder.d[1:], res)  # each block's output channels / 4
        channels = [net.width * k for k in ladder.d]
        self.input_conv = conv(info.shape[0], channels[0])
        self.blocks = nn.ModuleList(
            nn.ModuleList(DeepDBlock(a if i == 0 else b, b, down and i == 0) for i in range(net.depth))
            for a, b, down in zip(channels, channels[1:], ladder.down)
        )
        outputs = [res >> sum(ladder.down[: i + 1]) for i in range(len(ladder.down))]  # each stage's resolution
        attend = _attention_after(
            outputs,
            channels[1:],
            net.attention if net.attention is not None else default_attention(res),
            "model.d.attention",
        )
        self.attention = nn.ModuleList(SelfAttention(c) if a else nn.Identity() for c, a in zip(channels[1:], attend))
        self.head = DiscriminatorHead(channels[-1], num_classes, self.cond)
        _init(self, net)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        y = check_labels(y, self.num_classes)
        h = self.input_conv(x)  # [N, ch x d[0], res, res]
        for stage, attention in zip(self.blocks, self.attention):
            for block in stage:
                h = block(h)
            h = attention(h)
        return self.head(F.relu(h).sum(dim=(2, 3)), y)  # sum pooling, as BGP
