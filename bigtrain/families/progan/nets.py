"""Progressive GAN networks (Karras et al. 2018, "Progressive Growing of GANs for Improved
Quality, Stability, and Variation"), after the official G_paper / D_paper
(tkarras/progressive_growing_of_gans, networks.py).

Every layer of every resolution up to the data's is built up front. The level of detail `lod`
(a float buffer on each net, set with `set_lod`, 0 = full resolution, log2(res) - 2 = 4x4) picks
which of them a forward uses: the nets work at the CURRENT resolution
2 ** (log2(res) - floor(lod)), not upsampled to the full one as in the official graph. While a
new level fades in (fractional lod, t = lod - floor(lod), alpha = 1 - t):

    G: out = lerp(upsample2x(toRGB_prev(h_prev)), toRGB_new(block_new(h_prev)), alpha)
    D: h   = lerp(fromRGB_prev(avgpool2x(x)),     block_new(fromRGB_new(x)),    alpha)

which is the official `lerp(new, prev, lod_in - lod)` (alpha = 0 at the start of a fade, just
after the resolution doubled; 1 when the new level is fully in). Real images get the matching
crossfade with `blend_reals` (the official process_reals "FadeLOD" step). Parameters of the
levels above the current one, and the previous level's toRGB / fromRGB outside a fade, take no
part in the forward (the recipe runs DDP with find_unused_parameters).

Equalised learning rate: weights are drawn N(0, 1) and scaled at every forward by the He
constant gain / sqrt(fan_in), gain sqrt(2), except G's first dense layer (sqrt(2) / 4, the
official override matching the original Theano code), toRGB (1) and D's output layer (1).
Biases start at 0 and are not scaled.

Upsampling is nearest-neighbour then a 3x3 conv, downsampling a 3x3 conv then 2x2 average
pooling. The official code fuses each pair into one strided (transposed) 4x4 conv by default
(fused_scale=True); that is the same function with the same parameters, so the counts agree.

G's output is linear (no tanh), as in the paper; its images are not confined to [-1, 1].
Unconditional only: the official nets' label inputs/outputs (label_size) are not built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config import _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.layers import MinibatchStddev, check_labels
from bigtrain.netconfig import NetConfig


@dataclass
class _ProganNet(NetConfig):
    """The keys both progan nets read. `width` is no progan key (fmap_* set the channels), but
    every NetConfig declares it: it is refused unless left at its default."""

    arch: str = "progan"  # this class's architecture
    fmap_base: int = 8192  # channels at stage s (resolution 2**(s+1)): min(fmap_base / 2**(s * fmap_decay), fmap_max)
    fmap_decay: float = 1.0  # log2 of the channel reduction per doubling of the resolution
    fmap_max: int = 512  # most channels of any layer

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.width != NetConfig.width:
            raise ConfigError(
                f"{prefix}.width",
                f"progan does not read width (fmap_base, fmap_decay and fmap_max set its channels); got {self.width}",
            )
        _check_positive(f"{prefix}.fmap_base", self.fmap_base)
        _check_positive(f"{prefix}.fmap_decay", self.fmap_decay, allow_zero=True)
        _check_positive(f"{prefix}.fmap_max", self.fmap_max)


@dataclass
class ProganGConfig(_ProganNet):
    arch: str = "progan"  # this class's architecture


@dataclass
class ProganDConfig(_ProganNet):
    arch: str = "progan"  # this class's architecture
    mbstd_group: int = 4  # minibatch stddev over groups of this many samples, one feature map (official); 0 or 1 = off


SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2
PIXEL_NORM_EPS = 1e-8


def num_features(stage: int, fmap_base: int, fmap_decay: float, fmap_max: int) -> int:
    """Channels at `stage` (official nf): stage log2(r) - 1 is resolution r's."""
    return min(int(fmap_base / 2.0 ** (stage * fmap_decay)), fmap_max)


def pixel_norm(x: Tensor, eps: float = PIXEL_NORM_EPS) -> Tensor:
    """Each feature vector (dim 1) scaled to unit root-mean-square: x / sqrt(mean(x^2) + eps)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling of [N, C, H, W]."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: Tensor) -> Tensor:
    """2x2 average pooling (the official box-filter downscale2d) of [N, C, H, W]."""
    return F.avg_pool2d(x, 2)


def lerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    return a + (b - a) * t


def blend_reals(x: Tensor, lod: Union[float, Tensor]) -> Tensor:
    """Real images [N, C, H, W] at the current resolution, crossfaded like the official
    process_reals FadeLOD step: lerp(x, upsample2x(avgpool2x(x)), lod - floor(lod)), so they
    carry only the detail the fading-in level can produce (x itself at a whole lod)."""
    t = float(lod) - math.floor(float(lod))
    if t == 0.0:
        return x
    return lerp(x, upsample2x(downsample2x(x)), t)


class PixelNorm(nn.Module):
    """pixel_norm as a layer (G, after every conv and on the latent)."""

    def forward(self, x: Tensor) -> Tensor:
        return pixel_norm(x)


class EqualizedLinear(nn.Module):
    """x [N, in] -> [N, out] with weight N(0, 1) * gain / sqrt(in) at runtime, bias 0 at start."""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.gain, self.scale = gain, gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """Stride-1 'same' k x k conv with weight N(0, 1) * gain / sqrt(in * k * k) at runtime."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.gain, self.scale = gain, gain / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


class _GInput(nn.Module):
    """G at 4x4: pixel-normalised z -> dense to [nf, 4, 4] -> conv 3x3, each + bias, lrelu, pixel norm.

    The dense layer's bias is one per channel, added after the reshape, as the official
    apply_bias on the [N, nf, 4, 4] tensor (nf biases, not nf * 16)."""

    def __init__(self, z_dim: int, channels: int):
        super().__init__()
        self.dense = EqualizedLinear(z_dim, channels * 16, gain=SQRT2 / 4, bias=False)
        self.dense_bias = nn.Parameter(torch.zeros(channels))
        self.conv = EqualizedConv2d(channels, channels, 3)
        self.channels = channels

    def forward(self, z: Tensor) -> Tensor:
        h = self.dense(pixel_norm(z)).view(-1, self.channels, 4, 4) + self.dense_bias[None, :, None, None]
        h = pixel_norm(_act(h))
        return pixel_norm(_act(self.conv(h)))


class _GBlock(nn.Module):
    """G's level at 8x8 and up: upsample2x -> two 3x3 convs, each + bias, lrelu, pixel norm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)

    def forward(self, h: Tensor) -> Tensor:
        h = pixel_norm(_act(self.conv0(upsample2x(h))))
        return pixel_norm(_act(self.conv1(h)))


class _DBlock(nn.Module):
    """D's level at 8x8 and up: two 3x3 convs (+ bias, lrelu), the second to the next level's
    channels, then avgpool2x."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3)

    def forward(self, h: Tensor) -> Tensor:
        h = _act(self.conv0(h))
        return downsample2x(_act(self.conv1(h)))


class _DOutput(nn.Module):
    """D at 4x4: minibatch stddev (+1 map) -> conv 3x3 -> dense to nf(0) -> dense (gain 1) to 1 logit.

    The official last dense layer has 1 + label_size outputs; unconditional, that is 1 (its
    count, nf(0) + 1 parameters, is what the official totals hold)."""

    def __init__(self, channels: int, hidden: int, mbstd_group: int):
        super().__init__()
        # official: the layer is there when mbstd_group_size > 1 (a group of one has no spread)
        self.stddev = MinibatchStddev(mbstd_group, 1) if mbstd_group > 1 else None
        self.conv = EqualizedConv2d(channels + (1 if self.stddev else 0), channels, 3)
        self.dense0 = EqualizedLinear(channels * 16, hidden)
        self.dense1 = EqualizedLinear(hidden, 1, gain=1.0)

    def forward(self, h: Tensor) -> Tensor:
        if self.stddev is not None:
            h = self.stddev(h)
        h = _act(self.conv(h))
        h = _act(self.dense0(h.flatten(1)))
        return self.dense1(h).squeeze(1)  # [N]


def progan_resolution(info: DataInfo, side: str, num_classes: int) -> int:
    """The data's square power-of-2 resolution (>= 4); ConfigError otherwise, or when conditional."""
    if info.kind != "image":
        raise ConfigError(
            f"model.{side}.arch", f"progan needs image data, got {info.kind} data of shape {tuple(info.shape)}; use mlp"
        )
    if num_classes:
        raise ConfigError(
            "model.num_classes", f"progan is unconditional here; got {num_classes} classes (set model.num_classes: 0)"
        )
    _, height, width = info.shape
    if height != width or height < 4 or height & (height - 1):
        raise ConfigError(
            "data.resolution", f"progan needs square images of a power-of-2 resolution >= 4; got {height}x{width}"
        )
    return height


class _Progressive(nn.Module):
    """The lod state both nets share: a float buffer (saved, copied to the EMA like any buffer)
    and the level it selects."""

    def _init_lod(
        self, info: DataInfo, net: Union[ProganGConfig, ProganDConfig], side: str, num_classes: int
    ) -> list[int]:
        resolution = progan_resolution(info, side, num_classes)
        self.num_classes = num_classes
        self.resolution = resolution
        self.resolution_log2 = resolution.bit_length() - 1
        self.max_lod = self.resolution_log2 - 2  # lod at 4x4
        self.register_buffer("lod", torch.zeros(()))  # 0: full resolution, like the official variable's start
        self._lod_key: Optional[tuple] = None
        self._lod_value = 0.0
        channels = [num_features(s, net.fmap_base, net.fmap_decay, net.fmap_max) for s in range(self.resolution_log2)]
        if min(channels) < 1:
            stage = channels.index(min(channels))
            raise ConfigError(
                f"model.{side}.fmap_base",
                f"gives {channels[stage]} channels at {2 ** (stage + 1)}x{2 ** (stage + 1)} (fmap_base "
                f"{net.fmap_base}, fmap_decay {net.fmap_decay}); raise fmap_base or lower fmap_decay",
            )
        return channels  # channels[s] = nf(s), s = 0 .. log2(res) - 1

    def set_lod(self, lod: float) -> None:
        """Level of detail, 0 (full resolution) .. log2(res) - 2 (4x4); fractional while fading."""
        lod = float(lod)
        if not 0.0 <= lod <= self.max_lod:
            raise ValueError(f"lod must be in [0, {self.max_lod}] for resolution {self.resolution}, got {lod}")
        with torch.no_grad():
            self.lod.fill_(lod)
        self._lod_value, self._lod_key = lod, self._buffer_key()

    def _buffer_key(self) -> Optional[tuple]:
        # the storage and in-place version counter: any copy_ / fill_ / replacement changes it
        # (an inference-mode tensor keeps no counter: then the buffer is read every time)
        return None if self.lod.is_inference() else (self.lod.data_ptr(), self.lod._version)

    def current_lod(self) -> float:
        """The lod buffer's value. Read from the buffer (one host read) only when it changed other
        than through set_lod (load_state_dict, an EMA copy, a move to another device)."""
        key = self._buffer_key()
        if key is None or key != self._lod_key:
            self._lod_value, self._lod_key = float(self.lod), key
        return self._lod_value

    def level(self) -> tuple[int, float]:
        """(index of the current level: 0 = 4x4 .. log2(res) - 2, fade alpha in (0, 1]; 1 = no fade)."""
        lod = min(max(self.current_lod(), 0.0), float(self.max_lod))
        whole = math.floor(lod)
        return self.max_lod - whole, 1.0 - (lod - whole)

    @property
    def current_resolution(self) -> int:
        return 2 ** (self.resolution_log2 - math.floor(self.current_lod()))


class ProganGenerator(_Progressive):
    """z [N, z_dim] (+ y, ignored: unconditional) -> images [N, C, r, r] at the current
    resolution r = 2 ** (log2(res) - floor(lod)); linear output."""

    def __init__(self, net: ProganGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        nf = self._init_lod(info, net, "g", num_classes)
        # level k (0 = 4x4) works at 2 ** (k + 2) with nf(k + 1) channels
        levels = range(self.max_lod + 1)
        self.blocks = nn.ModuleList([_GInput(z_dim, nf[1])] + [_GBlock(nf[k], nf[k + 1]) for k in levels[1:]])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(nf[k + 1], info.shape[0], 1, gain=1.0) for k in levels])

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        check_labels(y, self.num_classes)
        top, alpha = self.level()
        h = self.blocks[0](z)
        for k in range(1, top):
            h = self.blocks[k](h)
        if top == 0:
            return self.to_rgb[0](h)
        new = self.to_rgb[top](self.blocks[top](h))
        if alpha == 1.0:
            return new
        return lerp(upsample2x(self.to_rgb[top - 1](h)), new, alpha)


class ProganDiscriminator(_Progressive):
    """x [N, C, r, r] at the current resolution (+ y, ignored: unconditional) -> logits [N]."""

    def __init__(self, net: ProganDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        nf = self._init_lod(info, net, "d", num_classes)
        levels = range(self.max_lod + 1)
        self.from_rgb = nn.ModuleList([EqualizedConv2d(info.shape[0], nf[k + 1], 1) for k in levels])
        # blocks[k] takes level k's nf(k + 1) channels at 2 ** (k + 2) to level k - 1's nf(k)
        self.blocks = nn.ModuleList(
            [_DOutput(nf[1], nf[0], net.mbstd_group)] + [_DBlock(nf[k + 1], nf[k]) for k in levels[1:]]
        )

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        check_labels(y, self.num_classes)
        top, alpha = self.level()
        if x.shape[-1] != 2 ** (top + 2) or x.shape[-2] != 2 ** (top + 2):
            raise ValueError(
                f"progan D at lod {self.current_lod():g} takes {2 ** (top + 2)}x{2 ** (top + 2)} images, got "
                f"{tuple(x.shape[-2:])}"
            )
        h = _act(self.from_rgb[top](x))
        if top > 0:
            h = self.blocks[top](h)
            if alpha != 1.0:
                h = lerp(_act(self.from_rgb[top - 1](downsample2x(x))), h, alpha)
            for k in range(top - 1, 0, -1):
                h = self.blocks[k](h)
        return self.blocks[0](h)
