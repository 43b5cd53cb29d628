"""DCGAN (Radford et al. 2015). Class-conditional G: one-hot y joined to z (default) or
conditional batch norm; D: projection (default, Miyato & Koyama 2018), one-hot label maps joined
to the image, or an auxiliary classifier (see layers.py).

G: z -> 4x4 feature map with width * res/8 channels -> stride-2 transposed convs halving the
channels and doubling the resolution -> C channels at res x res, tanh. For res 32 the ladder is
width*4 -> width*2 -> width -> C. D mirrors it with stride-2 convs from C up to width * res/8
channels at 4x4, then one linear layer (a 4x4 valid conv) to a logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from bigtrain.data import DataInfo
from bigtrain.layers import (
    D_CONDS,
    G_CONDS,
    CondSequential,
    DiscriminatorHead,
    apply_spectral_norm,
    check_labels,
    concat_label_maps,
    concat_one_hot,
    image_resolution,
    minibatch_stddev,
    norm_layer,
    resolve_cond,
)
from bigtrain.netconfig import NetConfig, _Cond, _Mbstd, _Norm, _Pack, _SpectralNorm


@dataclass
class DcganGConfig(_SpectralNorm, _Cond, _Norm, NetConfig):
    pass


@dataclass
class DcganDConfig(_Pack, _Mbstd, _SpectralNorm, _Cond, _Norm, NetConfig):
    norm: str = "none"  # D: batch | none, none by default


RESOLUTIONS = (16, 32, 64, 128)
INIT_STD = 0.02  # the DCGAN paper's N(0, 0.02) initialisation


def ladder(width: int, resolution: int) -> list[int]:
    """Channels of the feature maps at 4x4, 8x8, ..., resolution/2: width * res/8 halving to width."""
    steps = resolution.bit_length() - 3  # stride-2 layers between 4x4 and the full resolution
    return [width * 2 ** (steps - 1 - i) for i in range(steps)]


def conv_block(conv: nn.Module, norm: nn.Module, activation: nn.Module) -> list[nn.Module]:
    """conv -> normalisation (nn.Identity for none) -> activation."""
    return [conv, activation] if isinstance(norm, nn.Identity) else [conv, norm, activation]


def init_dcgan(module: nn.Module) -> None:
    """Weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0 (DCGAN paper, section 4)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:  # conditional BN keeps its own gains
        nn.init.normal_(module.weight, 1.0, INIT_STD)
    bias = getattr(module, "bias", None)
    if isinstance(bias, Tensor):
        nn.init.zeros_(bias)


class DcganGenerator(nn.Module):
    """z [N, z_dim] (+ y) -> images [N, C, res, res] in [-1, 1]."""

    def __init__(self, net: DcganGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.g.arch", "dcgan", RESOLUTIONS)
        self.cond = resolve_cond(net, num_classes, "model.g.cond", "dcgan", G_CONDS, default="concat")
        self.num_classes = num_classes
        channels = ladder(net.width, res)
        z_in = z_dim + (num_classes if self.cond == "concat" else 0)
        batch_norm = net.norm == "batch"

        def norm(c: int) -> nn.Module:
            return norm_layer(c, net.norm, self.cond, num_classes)

        # A bias right before BatchNorm is cancelled by its mean subtraction, so only plain layers get one.
        layers = conv_block(
            nn.ConvTranspose2d(z_in, channels[0], 4, 1, 0, bias=not batch_norm), norm(channels[0]), nn.ReLU()
        )  # -> [N, channels[0], 4, 4]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += conv_block(
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), norm(c_out), nn.ReLU()
            )  # doubles H, W
        layers += [nn.ConvTranspose2d(channels[-1], info.shape[0], 4, 2, 1), nn.Tanh()]  # -> [N, C, res, res]
        self.net = CondSequential(*layers)
        self.apply(init_dcgan)
        if net.spectral_norm:
            apply_spectral_norm(self)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        y = check_labels(y, self.num_classes)
        h = concat_one_hot(z, y, self.num_classes) if self.cond == "concat" else z  # [N, z_dim (+ K)]
        return self.net(h[:, :, None, None], y)


class DcganDiscriminator(nn.Module):
    """x [N, C, res, res] (+ y) -> logits [N], or [N, 1 + K] with cond acgan (see DiscriminatorHead)."""

    def __init__(self, net: DcganDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.d.arch", "dcgan", RESOLUTIONS)
        self.cond = resolve_cond(net, num_classes, "model.d.cond", "dcgan", D_CONDS, default="projection")
        self.num_classes = num_classes
        batch_norm = net.norm == "batch"
        channels = ladder(net.width, res)[::-1]  # [width at res/2, ..., width * res/8 at 4x4]
        c_in = info.shape[0] + (num_classes if self.cond == "concat" else 0)
        # The input layer has no BatchNorm: normalising raw images destabilises DCGAN training.
        layers = conv_block(nn.Conv2d(c_in, channels[0], 4, 2, 1), nn.Identity(), nn.LeakyReLU(0.2))
        for c_in, c_out in zip(channels, channels[1:]):
            layers += conv_block(
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), norm_layer(c_out, net.norm), nn.LeakyReLU(0.2)
            )  # halves H, W
        stddev = minibatch_stddev(net)  # + mbstd_channels maps at 4x4 when on
        self.features = nn.Sequential(*layers, *stddev, nn.Flatten())  # -> [N, (channels[-1] + F) * 4 * 4]
        # A linear layer on the flattened 4x4 map is the paper's final 4x4 valid conv; keeping the map
        # flat lets the projection term use the same features.
        extra = net.mbstd_channels if stddev else 0
        self.head = DiscriminatorHead((channels[-1] + extra) * 4 * 4, num_classes, self.cond)
        self.apply(init_dcgan)
        if net.spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        y = check_labels(y, self.num_classes)
        if self.cond == "concat":
            x = concat_label_maps(x, y, self.num_classes)  # [N, C + K, res, res]
        return self.head(self.features(x), y)  # [N] or [N, 1 + K]
