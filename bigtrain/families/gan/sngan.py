"""SNGAN's ResNets (Miyato et al. 2018, appendix B.4; Miyato & Koyama 2018 for 64 and 128).

G: z -> Linear to a 4x4 map -> residual up-blocks (BN, ReLU, 2x nearest upsample, conv3x3, BN,
ReLU, conv3x3; shortcut upsample + conv1x1) -> BN, ReLU, conv3x3 to C, tanh. With cond "cbn"
the blocks' BNs are class-conditional; the last BN stays plain, as in the reference code.
D: an "optimized" first block (conv3x3, ReLU, conv3x3, avgpool; shortcut avgpool + conv1x1),
residual down-blocks (ReLU, conv3x3, ReLU, conv3x3, avgpool; learnable 1x1 shortcut where the
channels change or the block downsamples), ReLU, global SUM pooling, a linear logit (+ the
projection term). D has no normalisation layers (spectral norm is its normaliser), so
`model.d.norm` can only be none.

Channels are multiples of `width` (64 in the papers): see LADDERS. Initialisation follows the
authors' Chainer code: Glorot-uniform with gain sqrt(2) for the residual 3x3 convs (they are
followed by ReLUs), gain 1 for shortcuts, the input linear layer, the output conv and D's head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.data import DataInfo
from bigtrain.layers import (
    D_CONDS,
    G_CONDS,
    Conditional,
    CondSequential,
    DiscriminatorHead,
    apply_spectral_norm,
    call_layer,
    check_labels,
    concat_label_maps,
    concat_one_hot,
    image_resolution,
    norm_layer,
    resolve_cond,
)
from bigtrain.netconfig import NetConfig, _Cond, _Norm, _Pack, _SpectralNorm


@dataclass
class SnganGConfig(_SpectralNorm, _Cond, _Norm, NetConfig):
    arch: str = "sngan"  # this class's architecture


@dataclass
class SnganDConfig(_Pack, _SpectralNorm, _Cond, _Norm, NetConfig):
    """`norm` can only be none: this D has no normalisation layers (spectral norm is its normaliser)."""

    norms: ClassVar[tuple[str, ...]] = ("none",)
    arch: str = "sngan"  # this class's architecture
    norm: str = "none"  # none only


class Ladder(NamedTuple):
    g: tuple[int, ...]  # G's channels / width: the 4x4 map, then the output of each up-block
    d: tuple[int, ...]  # D's channels / width: output of the optimized block, then each down-block
    d_down: tuple[bool, ...]  # which D blocks halve the resolution


LADDERS = {
    # CIFAR ResNet: G 256 and D 128 channels throughout; D's last two blocks keep 8x8.
    32: Ladder(g=(4, 4, 4, 4), d=(2, 2, 2, 2), d_down=(True, True, False, False)),
    # Reference code for 64x64: D halves five times, down to 2x2.
    64: Ladder(g=(16, 8, 4, 2, 1), d=(1, 2, 4, 8, 16), d_down=(True,) * 5),
    128: Ladder(g=(16, 16, 8, 4, 2, 1), d=(1, 2, 4, 8, 16, 16), d_down=(True,) * 5 + (False,)),
}
RESIDUAL_GAIN = math.sqrt(2.0)


def glorot(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """Glorot-uniform weights with `gain`, zero bias; returns the layer."""
    nn.init.xavier_uniform_(layer.weight, gain)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv3x3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return glorot(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias), RESIDUAL_GAIN)


def upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2)


class UpBlock(Conditional):
    """x [N, c_in, H, W] (+ y for conditional BN) -> [N, c_out, 2H, 2W]."""

    def __init__(self, c_in: int, c_out: int, norm: str, cond: Optional[str], num_classes: int):
        super().__init__()
        self.norm1 = norm_layer(c_in, norm, cond, num_classes)
        # conv1 feeds a BN, whose mean subtraction would cancel a bias.
        self.conv1 = conv3x3(c_in, c_out, bias=norm != "batch")
        self.norm2 = norm_layer(c_out, norm, cond, num_classes)
        self.conv2 = conv3x3(c_out, c_out)
        self.shortcut = glorot(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = F.relu(call_layer(self.norm1, x, y))
        h = self.conv1(upsample(h))
        h = F.relu(call_layer(self.norm2, h, y))
        return self.conv2(h) + self.shortcut(upsample(x))


class DownBlock(nn.Module):
    """x [N, c_in, H, W] -> [N, c_out, H/2, W/2] (or H, W when not `down`).

    The optimized first block (`first=True`, always downsampling) skips the leading ReLU, which
    on raw images would only clip them.
    """

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False):
        super().__init__()
        self.down, self.first = down or first, first
        hidden = c_out if first else c_in  # the reference code's hidden widths
        self.conv1 = conv3x3(c_in, hidden)
        self.conv2 = conv3x3(hidden, c_out)
        learnable = first or down or c_in != c_out
        self.shortcut = glorot(nn.Conv2d(c_in, c_out, 1)) if learnable else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        if self.first:
            # Pooling and a 1x1 conv commute (both linear); pooling first is 4x cheaper on images.
            return downsample(h) + self.shortcut(downsample(x))
        h = h + self.shortcut(x)
        return downsample(h) if self.down else h


class SnganGenerator(nn.Module):
    """z [N, z_dim] (+ y) -> images [N, C, res, res] in [-1, 1]."""

    def __init__(self, net: SnganGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.g.arch", "sngan", tuple(LADDERS))
        self.cond = resolve_cond(net, num_classes, "model.g.cond", "sngan", G_CONDS, default="cbn")
        self.num_classes = num_classes
        channels = [net.width * k for k in LADDERS[res].g]
        self.ch0 = channels[0]
        self.linear = glorot(nn.Linear(z_dim + (num_classes if self.cond == "concat" else 0), 4 * 4 * self.ch0))
        self.blocks = CondSequential(
            *(UpBlock(c_in, c_out, net.norm, self.cond, num_classes) for c_in, c_out in zip(channels, channels[1:]))
        )
        self.out = nn.Sequential(
            norm_layer(channels[-1], net.norm),
            nn.ReLU(),
            glorot(nn.Conv2d(channels[-1], info.shape[0], 3, 1, 1)),
            nn.Tanh(),
        )  # -> [N, C, res, res]
        if net.spectral_norm:
            apply_spectral_norm(self)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        y = check_labels(y, self.num_classes)
        h = concat_one_hot(z, y, self.num_classes) if self.cond == "concat" else z  # [N, z_dim (+ K)]
        h = self.linear(h).view(z.shape[0], self.ch0, 4, 4)
        return self.out(self.blocks(h, y))  # [N, C, res, res]


class SnganDiscriminator(nn.Module):
    """x [N, C, res, res] (+ y) -> logits [N], or [N, 1 + K] with cond acgan (see DiscriminatorHead)."""

    def __init__(self, net: SnganDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.d.arch", "sngan", tuple(LADDERS))
        self.cond = resolve_cond(net, num_classes, "model.d.cond", "sngan", D_CONDS, default="projection")
        self.num_classes = num_classes
        ladder = LADDERS[res]
        channels = [net.width * k for k in ladder.d]
        c_in = info.shape[0] + (num_classes if self.cond == "concat" else 0)
        blocks = [DownBlock(c_in, channels[0], down=True, first=True)]
        blocks += [DownBlock(a, b, down) for a, b, down in zip(channels, channels[1:], ladder.d_down[1:])]
        self.blocks = nn.Sequential(*blocks)
        self.head = DiscriminatorHead(channels[-1], num_classes, self.cond)
        glorot(self.head.linear)
        if self.head.embed is not None:
            glorot(self.head.embed)
        if net.spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        y = check_labels(y, self.num_classes)
        if self.cond == "concat":
            x = concat_label_maps(x, y, self.num_classes)  # [N, C + K, res, res]
        # Sum, not mean, pooling: as in the paper and its reference code.
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # [N, F]
        return self.head(h, y)  # [N] or [N, 1 + K]
