"""BEGAN (Berthelot et al. 2017): an autoencoder discriminator scored by its reconstruction error.

With n = `width` filters and L = log2(res / 8) + 1 stages:
- decoder (G, and D's second half, each with its own weights): Linear -> 8x8 x n, then L stages
  of [conv3x3, ELU, conv3x3, ELU] with a 2x nearest upsample between stages, conv3x3 to C. The
  paper's decoder ends linearly; here a tanh follows, so G's outputs lie in [-1, 1] like those of
  every bigtrain G (and D reconstructs images in the range they come in).
- encoder (D's first half): conv3x3 C -> n, ELU, then L stages of [conv3x3, ELU, conv3x3, ELU]
  at n, 2n, ..., L*n filters, each but the last followed by a stride-2 conv3x3 to the next
  stage's width (the paper's "sub-sampling with stride 2"), flatten, Linear to `h_dim`.
The papers leave initialisation open; these nets keep PyTorch's defaults. BEGAN is unconditional.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.layers import apply_spectral_norm, image_resolution
from bigtrain.netconfig import NetConfig, _HDim, _SpectralNorm


@dataclass
class BeganGConfig(_SpectralNorm, _HDim, NetConfig):
    """G takes z (model.z_dim), not the bottleneck: it accepts `h_dim` but does not read it, so a
    config may give both began nets one h_dim (docs/design.md, "Network config per architecture")."""

    arch: str = "began"  # this class's architecture


@dataclass
class BeganDConfig(_SpectralNorm, _HDim, NetConfig):
    arch: str = "began"  # this class's architecture


RESOLUTIONS = (16, 32, 64, 128)
BASE = 8  # side of the smallest feature map


def conv_elu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.ELU()]


def num_stages(res: int) -> int:
    return (res // BASE).bit_length()  # 16 -> 2, 32 -> 3, 64 -> 4, 128 -> 5


def check_unconditional(num_classes: int) -> None:
    if num_classes:
        raise ConfigError("model.num_classes", "began is unconditional; set it to 0")


class BeganDecoder(nn.Module):
    """h [N, in_features] -> images [N, C, res, res] in [-1, 1]."""

    def __init__(self, in_features: int, n: int, res: int, channels: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(in_features, BASE * BASE * n)
        layers: list[nn.Module] = []
        for stage in range(num_stages(res)):
            if stage:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))  # doubles H, W
            layers += conv_elu(n, n) + conv_elu(n, n)
        layers += [nn.Conv2d(n, channels, 3, 1, 1), nn.Tanh()]
        self.convs = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        x = self.linear(h).view(h.shape[0], self.n, BASE, BASE)  # [N, n, 8, 8]
        return self.convs(x)  # [N, C, res, res]


class BeganEncoder(nn.Module):
    """images [N, C, res, res] -> embeddings [N, h_dim]."""

    def __init__(self, channels: int, n: int, res: int, h_dim: int):
        super().__init__()
        stages = num_stages(res)
        layers = conv_elu(channels, n)
        for stage in range(1, stages + 1):
            layers += conv_elu(stage * n, stage * n) + conv_elu(stage * n, stage * n)
            if stage < stages:
                layers += conv_elu(stage * n, (stage + 1) * n, stride=2)  # halves H, W
        self.convs = nn.Sequential(*layers, nn.Flatten())  # -> [N, stages * n * 8 * 8]
        self.linear = nn.Linear(stages * n * BASE * BASE, h_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x))


class BeganGenerator(nn.Module):
    """z [N, z_dim] -> images [N, C, res, res] in [-1, 1] (y is ignored: unconditional)."""

    def __init__(self, net: BeganGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        check_unconditional(num_classes)
        res = image_resolution(info, "model.g.arch", "began", RESOLUTIONS)
        self.decoder = BeganDecoder(z_dim, net.width, res, info.shape[0])
        if net.spectral_norm:
            apply_spectral_norm(self)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.decoder(z)


class BeganDiscriminator(nn.Module):
    """Autoencoder D: x [N, C, res, res] -> per-sample L1 reconstruction errors [N].

    The error is mean |D.reconstruct(x) - x| over C, H, W; lower means "looks real" to D,
    the opposite sign of a logit. The BEGAN objective (k_t control) lives in the losses.
    """

    def __init__(self, net: BeganDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        check_unconditional(num_classes)
        res = image_resolution(info, "model.d.arch", "began", RESOLUTIONS)
        self.encoder = BeganEncoder(info.shape[0], net.width, res, net.h_dim)
        self.decoder = BeganDecoder(net.h_dim, net.width, res, info.shape[0])
        if net.spectral_norm:
            apply_spectral_norm(self)

    def reconstruct(self, x: Tensor) -> Tensor:
        """x [N, C, res, res] -> its reconstruction through the bottleneck, same shape."""
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return (self.reconstruct(x) - x).abs().mean(dim=(1, 2, 3))  # [N]
