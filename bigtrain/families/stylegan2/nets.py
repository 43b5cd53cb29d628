"""StyleGAN2-ADA's networks (Karras et al. 2020), as NVlabs/stylegan2-ada-pytorch's training/networks.py
in plain PyTorch ops: the same module tree and parameter names (a reference state dict loads as is, but
for its `resample_filter` buffers, which the config sets here), the same counts and values (a harness
outside the repository compares them: equal in float32, rounding-level in float64), and every op
second-order differentiable (R1, path length).

G = mapping + synthesis. Mapping: z and the label embedding each normalised by their second moment,
joined, `map` FC layers (lrelu, lr multiplier 0.01) -> w, broadcast to num_ws, with `w_avg` tracked for
truncation. Synthesis: a learned 4x4 constant, then per resolution two modulated, demodulated 3x3 convs
(the first upsampling with the FIR filter), per-pixel noise times a learned strength (0 at start), and
a ToRGB added to the FIR-upsampled image ('skip'). D ('resnet'): FromRGB, per resolution two 3x3 convs
(the second FIR-downsampling) plus a 1x1 shortcut, then at 4x4 minibatch stddev, conv, FC, and an output
projected onto the label mapping's embedding of y (cmap) when conditional. Equalised learning rate:
weights stored N(0, 1) / lr_mult, scaled at runtime by lr_mult / sqrt(fan_in).

The reference's presets (train.py; z_dim = w_dim = 512, channel_max 512, conv_clamp 256, num_fp16_res 4):
  stylegan2 = paper1024: channel_base 32768, G map 8, D resnet, mbstd_group 4;  paper512: mbstd_group 8
  paper256: channel_base 16384, map 8, mbstd_group 8
  cifar: channel_base 32768, G map 2, D orig, mbstd_group 32 (D's label mapping keeps 8 layers)

Precision: on CUDA the top `num_fp16_res` resolutions run in float16 (bfloat16 inside a bf16 autocast),
with the reference's pre-normalisation of modulated weights; all else runs in the parameters' dtype (on
CPU everything). The nets manage their own precision: autocast is off inside them.

Departures: y is int64 class indices, one-hot inside (the reference takes one-hot c), and an
unconditional net refuses y; w_avg moves only with update_emas=True in training mode (the reference:
every training forward unless skip_w_avg_update); the FIR filters are non-persistent buffers; the nets
compute in their parameters' dtype (float64 after .double()) where the reference hard-codes float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import Tensor, nn

from bigtrain.config import _check_choice, _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.stylegan2.layers import (
    HALF,
    SQRT2,
    SQRT_HALF,
    Conv2dLayer,
    FullyConnectedLayer,
    bias_act,
    fp16_resolution,
    half_dtype,
    minibatch_stddev,
    modulated_conv2d,
    normalize_2nd_moment,
    one_hot,
)
from bigtrain.layers import image_resolution
from bigtrain.layers.resample import downsample2d, setup_filter, upsample2d
from bigtrain.netconfig import NetConfig

ARCHITECTURES = ("orig", "skip", "resnet")
NOISE_MODES = ("random", "const", "none")
RESOLUTIONS = tuple(2**k for k in range(2, 14))


@dataclass
class _Stylegan2Net(NetConfig):
    """The keys both nets read. `width` is no stylegan2 key (channel_base and channel_max set the
    channels), but every NetConfig declares it: it is refused unless left at its default."""

    arch: str = "stylegan2"  # this class's architecture
    channel_base: int = 32768  # channels at resolution r: min(channel_base // r, channel_max); paper256 16384
    channel_max: int = 512  # most channels of any layer
    num_fp16_res: int = 4  # the top N resolutions run in float16 on CUDA (bf16 under bf16 autocast); 0 = none
    conv_clamp: Optional[float] = 256.0  # clamp every conv's output to +-this (float16 overflow); 0 or null = off
    resample_filter: List[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])  # FIR taps of up/downsampling

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.width != NetConfig.width:
            reason = f"stylegan2 does not read width (channel_base and channel_max set its channels); got {self.width}"
            raise ConfigError(f"{prefix}.width", reason)
        for key in ("channel_base", "channel_max"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))
        _check_positive(f"{prefix}.num_fp16_res", self.num_fp16_res, allow_zero=True)
        if self.conv_clamp is not None:
            _check_positive(f"{prefix}.conv_clamp", self.conv_clamp, allow_zero=True)
        if not self.resample_filter or sum(self.resample_filter) == 0:
            raise ConfigError(f"{prefix}.resample_filter", f"needs taps of non-zero sum, got {self.resample_filter}")
        _check_choice(f"{prefix}.architecture", getattr(self, "architecture"), ARCHITECTURES)

    def clamp(self) -> Optional[float]:
        """conv_clamp, None when off."""
        return float(self.conv_clamp) if self.conv_clamp else None


@dataclass
class Stylegan2GConfig(_Stylegan2Net):
    architecture: str = "skip"  # orig | skip (a ToRGB per resolution, summed) | resnet
    w_dim: int = 512  # size of the intermediate latent w
    map: int = 8  # FC layers of the mapping network z -> w (train.py: 8; cifar 2)
    map_lr_mult: float = 0.01  # learning-rate multiplier of the mapping layers
    w_avg_beta: float = 0.995  # decay of the tracked average of w (truncation's centre) per update

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for key in ("w_dim", "map", "map_lr_mult"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))
        if not 0.0 <= self.w_avg_beta < 1.0:
            raise ConfigError(f"{prefix}.w_avg_beta", f"must be in [0, 1), got {self.w_avg_beta}")


@dataclass
class Stylegan2DConfig(_Stylegan2Net):
    architecture: str = "resnet"  # orig (cifar) | skip | resnet (a 1x1 residual shortcut per block)
    mbstd_group: int = 4  # minibatch stddev over groups of this many samples (paper256 8, cifar 32); 0 = no layer
    mbstd_channels: int = 1  # feature groups of the minibatch-stddev statistic, one map each
    cmap_dim: int = 0  # size of the label embedding projected onto D's output; 0 = channels at 4x4
    map: int = 8  # FC layers of the label mapping network (conditional D), lr multiplier 0.01, even for cifar


def _channels(net: _Stylegan2Net, resolution: int, side: str) -> dict[int, int]:
    """Channels per resolution 4 .. `resolution`: min(channel_base // r, channel_max)."""
    if net.channel_base < resolution:
        reason = f"gives no channels at {resolution}x{resolution}: it must be at least the resolution"
        raise ConfigError(f"model.{side}.channel_base", reason)
    return {2**k: min(net.channel_base // 2**k, net.channel_max) for k in range(2, resolution.bit_length())}


class MappingNetwork(nn.Module):
    """(z [N, z_dim], y int64 [N]) -> w [N, w_dim], or ws [N, num_ws, w_dim] when num_ws is set. The label
    enters one-hot through `embed`. D's label mapping is this with z_dim 0, no broadcast, no average."""

    def __init__(
        self,
        z_dim: int,
        classes: int,
        w_dim: int,
        num_ws: Optional[int],
        layers: int,
        lr_mult: float,
        w_avg_beta: Optional[float] = None,
    ):
        super().__init__()
        self.z_dim, self.num_classes, self.w_dim, self.num_ws, self.num_layers = z_dim, classes, w_dim, num_ws, layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim + (w_dim if classes else 0)] + [w_dim] * layers
        if classes:
            self.embed = FullyConnectedLayer(classes, w_dim)
        for i in range(layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], "lrelu", lr_mult))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: Optional[Tensor],
        y: Optional[Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        update_emas: bool = False,
    ) -> Tensor:
        """w, moved towards `w_avg` by 1 - `truncation_psi` (0: the average) in the first `truncation_cutoff`
        ws (all when None); with `update_emas`, in training mode, w_avg moves towards the batch's mean w."""
        weight = self.fc0.weight
        c = one_hot(y, self.num_classes, weight.dtype)
        with torch.autocast(weight.device.type, enabled=False):
            parts = []
            if self.z_dim:
                if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                    raise ValueError(f"z must be [N, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
                parts.append(normalize_2nd_moment(z.to(weight.dtype)))
            if c is not None:
                parts.append(normalize_2nd_moment(self.embed(c)))
            x = torch.cat(parts, dim=1)  # [N, z_dim + w_dim], or either
            for i in range(self.num_layers):
                x = getattr(self, f"fc{i}")(x)
        if update_emas and self.training and hasattr(self, "w_avg"):
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x


# ---- G ---------------------------------------------------------------------------------------------------
class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (upsampling when up = 2), + noise * strength, + bias, lrelu, clamp."""

    def __init__(self, in_ch: int, out_ch: int, resolution: int, up: int, net: Stylegan2GConfig):
        super().__init__()
        self.resolution, self.up, self.clamp = resolution, up, net.clamp()
        self.register_buffer("resample_filter", setup_filter(net.resample_filter), persistent=False)
        self.affine = FullyConnectedLayer(net.w_dim, in_ch, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        # [1], where the reference's is 0-d: DeepSpeed broadcasts every parameter viewed as bytes,
        # which a 0-d bf16 tensor refuses (a reference state dict loads after reshape(1))
        self.noise_strength = nn.Parameter(torch.zeros([1]))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str, fused: bool, gain: float = 1.0) -> Tensor:
        noise = None
        if noise_mode == "random":  # drawn in the parameters' dtype, as the reference's float32
            size = (x.shape[0], 1, self.resolution, self.resolution)
            noise = torch.randn(size, device=x.device, dtype=self.noise_strength.dtype) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, self.affine(w), noise, self.up, self.resample_filter, fused=fused)
        return bias_act(
            x, self.bias.to(x.dtype), "lrelu", SQRT2 * gain, None if self.clamp is None else self.clamp * gain
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv, not demodulated, + bias, clamp: features -> image channels."""

    def __init__(self, in_ch: int, out_ch: int, net: Stylegan2GConfig):
        super().__init__()
        self.clamp, self.weight_gain = net.clamp(), 1 / math.sqrt(in_ch)
        self.affine = FullyConnectedLayer(net.w_dim, in_ch, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: Tensor, w: Tensor, fused: bool) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.clamp)


class SynthesisBlock(nn.Module):
    """One resolution of G: const (4x4) or upsampling conv0, conv1, and a ToRGB added to the upsampled
    image ('skip', and the last block); 'resnet' adds an upsampling 1x1 shortcut around the convs."""

    def __init__(self, in_ch: int, out_ch: int, res: int, channels: int, last: bool, fp16: bool, net: Stylegan2GConfig):
        super().__init__()
        self.in_ch, self.architecture, self.use_fp16 = in_ch, net.architecture, fp16
        self.register_buffer("resample_filter", setup_filter(net.resample_filter), persistent=False)
        self.num_conv, self.num_torgb = (1 if in_ch == 0 else 2), int(last or net.architecture == "skip")
        if in_ch == 0:
            self.const = nn.Parameter(torch.randn(out_ch, res, res))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, res, 2, net)
        self.conv1 = SynthesisLayer(out_ch, out_ch, res, 1, net)
        if self.num_torgb:
            self.torgb = ToRGBLayer(out_ch, channels, net)
        if in_ch != 0 and net.architecture == "resnet":
            self.skip = Conv2dLayer(in_ch, out_ch, 1, bias=False, up=2, taps=net.resample_filter)

    def forward(
        self,
        x: Optional[Tensor],
        img: Optional[Tensor],
        ws: Tensor,
        half: Optional[torch.dtype],
        noise_mode: str,
        fused: Optional[bool],
    ) -> tuple[Tensor, Tensor]:
        """(features, image so far) of the previous block, ws [N, num_conv + num_torgb, w_dim] -> this block's."""
        full = self.conv1.weight.dtype
        dtype = half if self.use_fp16 and half is not None else full
        if fused is None:  # the reference's choice: per-sample weights only outside training, where they are cheaper
            fused = not self.training and (dtype not in HALF or ws.shape[0] == 1)
        w, mode = ws.unbind(dim=1), dict(noise_mode=noise_mode, fused=fused)
        if self.in_ch == 0:
            x = self.conv1(self.const.to(dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1), w[0], **mode)
        elif self.architecture == "resnet":
            x = x.to(dtype)
            y = self.skip(x, gain=SQRT_HALF)
            x = y + self.conv1(self.conv0(x, w[0], **mode), w[1], gain=SQRT_HALF, **mode)
        else:
            x = self.conv1(self.conv0(x.to(dtype), w[0], **mode), w[1], **mode)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, w[self.num_conv], fused).to(full)
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, C, res, res]: blocks 4x4 .. res, each reading the ws of its
    convs and the next one (its ToRGB's, which the next block's first conv shares)."""

    def __init__(self, net: Stylegan2GConfig, resolution: int, img_channels: int):
        super().__init__()
        self.w_dim, self.resolution = net.w_dim, resolution
        channels = _channels(net, resolution, "g")
        fp16_res = fp16_resolution(resolution, net.num_fp16_res)
        self.block_resolutions = list(channels)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch, last = channels[res // 2] if res > 4 else 0, res == resolution
            block = SynthesisBlock(in_ch, channels[res], res, img_channels, last, res >= fp16_res, net)
            self.num_ws += block.num_conv + (block.num_torgb if last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: Tensor, noise_mode: str = "random", fused_modconv: Optional[bool] = None) -> Tensor:
        """Per-layer ws (style mixing: rows of different w); noise_mode random | const (the noise_const
        buffers) | none; fused_modconv None = the reference's choice (fused outside training)."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode is one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
        half = half_dtype(ws.device)
        with torch.autocast(ws.device.type, enabled=False):
            ws = ws.to(self.b4.conv1.weight.dtype)
            x = img = None
            w_idx = 0
            for res in self.block_resolutions:
                block = getattr(self, f"b{res}")
                block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
                x, img = block(x, img, block_ws, half, noise_mode, fused_modconv)
                w_idx += block.num_conv
        return img


class Stylegan2Generator(nn.Module):
    """z [N, z_dim] (+ y int64 [N] when conditional) -> images [N, C, res, res]: synthesis(mapping(z, y))."""

    counted_parts = ("mapping",)  # `--dry-run` counts the mapping network too (the reference's tables do)

    def __init__(self, net: Stylegan2GConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        self.resolution = image_resolution(info, "model.g.arch", "stylegan2", RESOLUTIONS)
        self.z_dim, self.num_classes, self.w_dim, self.img_channels = z_dim, num_classes, net.w_dim, info.shape[0]
        self.synthesis = SynthesisNetwork(net, self.resolution, self.img_channels)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim, num_classes, net.w_dim, self.num_ws, net.map, net.map_lr_mult, net.w_avg_beta
        )

    def forward(
        self,
        z: Tensor,
        y: Optional[Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        noise_mode: str = "random",
        update_emas: bool = False,
        fused_modconv: Optional[bool] = None,
        mix_z: Optional[Tensor] = None,
        mix_cutoff: Optional[Tensor] = None,
        return_ws: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """See MappingNetwork.forward and SynthesisNetwork.forward. Style mixing: with `mix_z` [N, z_dim],
        the layers of sample i from `mix_cutoff[i]` on (num_ws: none) take the styles of mix_z (whose
        mapping moves no w_avg, as the reference's). `return_ws`: also the ws [N, num_ws, w_dim] the
        synthesis got (path length differentiates the images w.r.t. them)."""
        ws = self.mapping(z, y, truncation_psi, truncation_cutoff, update_emas=update_emas)
        if mix_z is not None:
            mixed = self.mapping(mix_z, y, truncation_psi, truncation_cutoff)
            later = torch.arange(self.num_ws, device=ws.device)[None, :] >= mix_cutoff[:, None]  # [N, num_ws]
            ws = torch.where(later[:, :, None], mixed, ws)
        img = self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return (img, ws) if return_ws else img


# ---- D ---------------------------------------------------------------------------------------------------
class DiscriminatorBlock(nn.Module):
    """One resolution of D: FromRGB (first block; every block in 'skip', which also downsamples the image),
    conv0, downsampling conv1; 'resnet' adds a downsampling 1x1 shortcut around the convs."""

    def __init__(self, in_ch: int, tmp_ch: int, out_ch: int, channels: int, fp16: bool, net: Stylegan2DConfig):
        super().__init__()
        self.in_ch, self.architecture, self.use_fp16, clamp = in_ch, net.architecture, fp16, net.clamp()
        self.register_buffer("resample_filter", setup_filter(net.resample_filter), persistent=False)
        if in_ch == 0 or net.architecture == "skip":
            self.fromrgb = Conv2dLayer(channels, tmp_ch, 1, "lrelu", clamp)
        self.conv0 = Conv2dLayer(tmp_ch, tmp_ch, 3, "lrelu", clamp)
        self.conv1 = Conv2dLayer(tmp_ch, out_ch, 3, "lrelu", clamp, down=2, taps=net.resample_filter)
        if net.architecture == "resnet":
            self.skip = Conv2dLayer(tmp_ch, out_ch, 1, bias=False, down=2, taps=net.resample_filter)

    def forward(self, x: Optional[Tensor], img: Tensor, half: Optional[torch.dtype]) -> tuple[Tensor, Optional[Tensor]]:
        dtype = half if self.use_fp16 and half is not None else self.conv0.weight.dtype
        x = None if x is None else x.to(dtype)
        if self.in_ch == 0 or self.architecture == "skip":
            img = img.to(dtype)
            y = self.fromrgb(img)
            x = y if x is None else x + y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            return self.skip(x, gain=SQRT_HALF) + self.conv1(self.conv0(x), gain=SQRT_HALF), img
        return self.conv1(self.conv0(x)), img


class DiscriminatorEpilogue(nn.Module):
    """D at 4x4, in full precision: (FromRGB, 'skip') -> minibatch stddev -> conv -> FC -> out [N, 1], or
    out [N, cmap_dim] projected onto the label embedding cmap, scaled by 1 / sqrt(cmap_dim)."""

    def __init__(self, in_ch: int, cmap_dim: int, channels: int, net: Stylegan2DConfig):
        super().__init__()
        self.cmap_dim, self.architecture, self.mbstd_group = cmap_dim, net.architecture, net.mbstd_group
        self.mbstd_channels = net.mbstd_channels if net.mbstd_group else 0
        if net.architecture == "skip":
            self.fromrgb = Conv2dLayer(channels, in_ch, 1, "lrelu")
        self.conv = Conv2dLayer(in_ch + self.mbstd_channels, in_ch, 3, "lrelu", net.clamp())
        self.fc = FullyConnectedLayer(in_ch * 16, in_ch, "lrelu")
        self.out = FullyConnectedLayer(in_ch, cmap_dim or 1)

    def forward(self, x: Tensor, img: Optional[Tensor], cmap: Optional[Tensor]) -> Tensor:
        x = x.to(self.conv.weight.dtype)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(x.dtype))
        if self.mbstd_channels:
            x = minibatch_stddev(x, self.mbstd_group, self.mbstd_channels)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x  # [N, 1]


class Stylegan2Discriminator(nn.Module):
    """x [N, C, res, res] (+ y int64 [N] when conditional) -> logits [N]."""

    def __init__(self, net: Stylegan2DConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        self.resolution = image_resolution(info, "model.d.arch", "stylegan2", RESOLUTIONS)
        self.num_classes, self.img_channels = num_classes, info.shape[0]
        ch = _channels(net, self.resolution, "d")
        fp16_res = fp16_resolution(self.resolution, net.num_fp16_res)
        self.block_resolutions = sorted(ch, reverse=True)[:-1]  # res .. 8
        for r in self.block_resolutions:
            in_ch = ch[r] if r < self.resolution else 0
            setattr(self, f"b{r}", DiscriminatorBlock(in_ch, ch[r], ch[r // 2], info.shape[0], r >= fp16_res, net))
        cmap_dim = (net.cmap_dim or ch[4]) if num_classes else 0
        if num_classes:  # lr multiplier 0.01: the reference's default, which no preset changes
            self.mapping = MappingNetwork(0, num_classes, cmap_dim, None, net.map, lr_mult=0.01)
        self.b4 = DiscriminatorEpilogue(ch[4], cmap_dim, self.img_channels, net)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        shape = (self.img_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"D takes images [N, {', '.join(map(str, shape))}], got {tuple(x.shape)}")
        cmap = self.mapping(None, y) if self.num_classes else one_hot(y, 0, x.dtype)
        half = half_dtype(x.device)
        with torch.autocast(x.device.type, enabled=False):
            h, img = None, x
            for res in self.block_resolutions:
                h, img = getattr(self, f"b{res}")(h, img, half)
            return self.b4(h, img, cmap).squeeze(1)  # [N]
