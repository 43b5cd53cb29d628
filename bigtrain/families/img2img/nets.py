"""Image-to-image nets of CycleGAN (Zhu et al. 2017) and Pix2Pix (Isola et al. 2017), laid out as
junyanz/pytorch-CycleGAN-and-pix2pix's `models/networks.py` ("the reference"; issue 14).

They take no z and no labels: G(x [N, C, H, W] in [-1, 1]) -> y [N, C, H, W] in [-1, 1];
D(x) -> a logit per patch [N, 1, h, w]. Arch `cyclegan`: the ResNet G (7x7 conv, two stride-2
convs, `blocks` residual blocks at 4x width, two stride-2 transposed convs, 7x7 conv, tanh;
reflection padding) and the PatchGAN D (`layers` stride-2 4x4 convs, the first without norm, a
stride-1 one, a 1-channel 4x4 conv; LeakyReLU 0.2; 3 layers see 70x70 patches). Arch `pix2pix`:
the U-Net G (`downs` stride-2 4x4 convs down to the bottleneck, transposed convs back up, each
level's encoder output joined to the decoder's input along channels; LeakyReLU 0.2 down, ReLU
up, tanh) and the same PatchGAN on (input, output) joined along channels, 2C channels (the
recipe joins them). Channels double at each halving from `width`, up to 8x width.

`norm`: instance (no affine parameters, no running statistics: every sample is normalised by
its own statistics, in train and eval mode alike), batch (affine, running statistics; a D with it
must see real and fake in separate forwards, docs/design.md, "No D statistic mixes real and fake")
or none. A conv followed by batch norm has no bias (its shift would be the BN's); every other
conv has one. The reference's rule is "bias iff instance norm": the same for instance and batch
(so the counts match), but with none it drops the biases too; here they stay (nothing follows
to shift the features). The reference's init ('normal', gain 0.02): conv weights N(0, 0.02),
BN gains N(1, 0.02), biases 0.

Parameter counts at the reference settings (3 channels, width 64): ResNet-9 G (instance)
11,378,179; PatchGAN D (instance) 2,764,737; U-Net-256 G (batch) 54,413,955; Pix2Pix D (batch,
6 channels) 2,768,705.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bigtrain.config import _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.netconfig import NetConfig


@dataclass
class _Img2imgNet(NetConfig):
    """The keys every image-to-image net reads (bigtrain/families/img2img/nets.py; the defaults are
    junyanz/pytorch-CycleGAN-and-pix2pix's). `norm` may also be instance norm (without affine
    parameters, statistics per sample); a conv followed by batch norm has no bias."""

    norms: ClassVar[tuple[str, ...]] = ("instance", "batch", "none")
    arch: str = "cyclegan"  # this class's architecture
    width: int = 64  # first conv's channels (the reference's ngf / ndf), doubled per halving up to 8x
    norm: str = "instance"  # instance | batch | none

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for key, allow_zero in (("blocks", True), ("downs", False), ("layers", False)):
            if hasattr(self, key):
                _check_positive(f"{prefix}.{key}", getattr(self, key), allow_zero)


@dataclass
class CycleganGConfig(_Img2imgNet):
    """CycleGAN's G: the ResNet generator (the reference's resnet_9blocks)."""

    blocks: int = 9  # residual blocks at 1/4 of the resolution
    dropout: bool = False  # dropout 0.5 inside each residual block (the reference: off for CycleGAN)


@dataclass
class CycleganDConfig(_Img2imgNet):
    """CycleGAN's D: the 70x70 PatchGAN (the reference's basic D)."""

    layers: int = 3  # stride-2 convs (the reference's n_layers_D; 3: 70x70 patches, a 30x30 map at 256 px)


@dataclass
class Pix2pixGConfig(_Img2imgNet):
    """Pix2Pix's G: the U-Net (the reference's unet_256 at downs 8)."""

    arch: str = "pix2pix"  # this class's architecture
    norm: str = "batch"  # instance | batch | none (the reference's pix2pix: batch)
    downs: int = 8  # halvings down to the bottleneck (num_downs): the image side must be a multiple of 2**downs
    dropout: bool = True  # dropout 0.5 on the up-path's downs - 5 levels above the bottleneck (as the reference)


@dataclass
class Pix2pixDConfig(_Img2imgNet):
    """Pix2Pix's D: the PatchGAN on (input, output) joined along channels."""

    arch: str = "pix2pix"  # this class's architecture
    norm: str = "batch"  # instance | batch | none (the reference's pix2pix: batch)
    layers: int = 3  # stride-2 convs (the reference's n_layers_D; 3: 70x70 patches, a 30x30 map at 256 px)


def norm_2d(channels: int, norm: str) -> nn.Module:
    """`norm`'s layer: instance (per sample, no affine, no running statistics), batch, or none."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


def reference_init(net: nn.Module, std: float = 0.02) -> None:
    """The reference's `init_weights` with init_type 'normal', init_gain 0.02."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, std)
            nn.init.zeros_(module.bias)


def _image(info: DataInfo, num_classes: int, net: NetConfig, side: str) -> tuple[int, int, int]:
    """(C, H, W) of the image data; ConfigError for other data or class-conditional models."""
    role = {"g": "G", "d": "D"}[side]
    if info.kind != "image":
        raise ConfigError(
            f"model.{side}.arch", f"{net.arch} maps images to images, got {info.kind} data of shape {tuple(info.shape)}"
        )
    if num_classes:
        raise ConfigError(
            "model.num_classes",
            f"the {net.arch} {role} takes no labels (image-to-image); set model.num_classes=0, got {num_classes}",
        )
    c, h, w = info.shape
    return c, h, w


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, [dropout 0.5], pad, conv3x3, norm)(x), reflection padding.
    x [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, channels: int, norm: str, dropout: bool):
        super().__init__()
        bias = norm != "batch"
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_2d(channels, norm),
            nn.ReLU(),
            *([nn.Dropout(0.5)] if dropout else []),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_2d(channels, norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's G (Johnson et al.'s style-transfer net): x [N, C, H, W] -> [N, C, H, W] in
    [-1, 1]; H and W multiples of 4, at least 8."""

    def __init__(self, net: CycleganGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        c, h, w = _image(info, num_classes, net, "g")
        if h % 4 or w % 4 or min(h, w) < 8:
            raise ConfigError(
                "data.resolution",
                f"the {net.arch} G halves the image twice and pads it by reflection: the sides must be multiples of 4, "
                f"at least 8; got {h}x{w}",
            )
        bias, k = net.norm != "batch", net.width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(c, k, 7, bias=bias), norm_2d(k, net.norm), nn.ReLU()]
        for m in (1, 2):  # down: k -> 2k -> 4k channels
            layers += [nn.Conv2d(k * m, k * m * 2, 3, 2, 1, bias=bias), norm_2d(k * m * 2, net.norm), nn.ReLU()]
        layers += [ResnetBlock(4 * k, net.norm, net.dropout) for _ in range(net.blocks)]
        for m in (4, 2):  # up: 4k -> 2k -> k channels
            layers += [
                nn.ConvTranspose2d(k * m, k * m // 2, 3, 2, 1, output_padding=1, bias=bias),
                norm_2d(k * m // 2, net.norm),
                nn.ReLU(),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(k, c, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        reference_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class UnetGenerator(nn.Module):
    """Pix2Pix's G: x [N, C, H, W] -> [N, C, H, W] in [-1, 1]; H and W multiples of 2**downs.

    Level i (0 = the outermost) halves the resolution on the way down and doubles it on the way
    up; its encoder output has width * min(2**i, 8) channels. Down: conv4x4 stride 2, preceded
    by LeakyReLU 0.2 and followed by norm except at level 0 (no activation, no norm) and at the
    bottleneck (no norm). Up: ReLU, transposed conv4x4 stride 2, norm (level 0: no norm, a bias,
    tanh), dropout 0.5 at the levels 4 .. downs - 2 with `dropout`; above the bottleneck a
    level's up-path reads [its encoder output, the up-path output below] joined along channels.
    For downs >= 5 this is the reference's UnetGenerator (num_downs); smaller downs continue its
    channel rule (the reference builds at least 5 levels).
    """

    def __init__(self, net: Pix2pixGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        c, h, w = _image(info, num_classes, net, "g")
        if h % 2**net.downs or w % 2**net.downs:
            raise ConfigError(
                "data.resolution",
                f"the {net.arch} G halves the image {net.downs} times (model.g.downs): the sides must be multiples of "
                f"{2**net.downs}; got {h}x{w}",
            )
        bias, n = net.norm != "batch", net.downs
        enc = [net.width * min(2**i, 8) for i in range(n)]
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(n):
            conv = nn.Conv2d(enc[i - 1] if i else c, enc[i], 4, 2, 1, bias=bias)
            norm = [norm_2d(enc[i], net.norm)] if 0 < i < n - 1 else []
            self.down.append(nn.Sequential(*([nn.LeakyReLU(0.2)] if i else []), conv, *norm))
            c_in = enc[i] if i == n - 1 else 2 * enc[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, c, 4, 2, 1), nn.Tanh()))
            else:
                dropout = [nn.Dropout(0.5)] if net.dropout and 4 <= i < n - 1 else []
                self.up.append(
                    nn.Sequential(
                        nn.ReLU(),
                        nn.ConvTranspose2d(c_in, enc[i - 1], 4, 2, 1, bias=bias),
                        norm_2d(enc[i - 1], net.norm),
                        *dropout,
                    )
                )
        reference_init(self)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        h = x
        for down in self.down:
            h = down(h)
            skips.append(h)
        h = self.up[-1](h)  # the bottleneck's up-path
        for skip, up in zip(reversed(skips[:-1]), reversed(self.up[:-1])):
            h = up(torch.cat([skip, h], dim=1))
        return h


def patch_map_side(side: int, layers: int) -> int:
    """The side of the PatchGAN's logit map for an input side: `layers` stride-2 4x4 convs
    (padding 1), then two stride-1 ones (each takes 1 off)."""
    for _ in range(layers):
        side //= 2
    return side - 2


class PatchDiscriminator(nn.Module):
    """CycleGAN's 70x70 PatchGAN (with layers 3): x [N, C, H, W] -> logits [N, 1, h, w], one per
    overlapping patch (h = H / 2**layers - 2 for H a multiple of 2**layers: 30 at 256 px)."""

    inputs = 1  # images joined along channels that D sees

    def __init__(self, net: CycleganDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        c, h, w = _image(info, num_classes, net, "d")
        if min(patch_map_side(h, net.layers), patch_map_side(w, net.layers)) < 1:
            least = 3 * 2**net.layers
            raise ConfigError(
                "data.resolution",
                f"the {net.arch} D with {net.layers} layers (model.d.layers) needs sides of at least {least}; got "
                f"{h}x{w}",
            )
        bias, k = net.norm != "batch", net.width
        widths = [k * min(2**i, 8) for i in range(net.layers + 1)]
        layers = [nn.Conv2d(c * self.inputs, k, 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, net.layers + 1):
            stride = 2 if i < net.layers else 1
            layers += [
                nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1, bias=bias),
                norm_2d(widths[i], net.norm),
                nn.LeakyReLU(0.2),
            ]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)
        reference_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PairPatchDiscriminator(PatchDiscriminator):
    """Pix2Pix's conditional PatchGAN: (input, output) joined along channels, x [N, 2C, H, W]
    -> logits [N, 1, h, w]."""

    inputs = 2  # its net section: a Pix2pixDConfig
