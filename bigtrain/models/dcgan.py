"""DCGAN (Radford et al. 2015), with a projection discriminator (Miyato & Koyama 2018) when
class-conditional.

G: z -> 4x4 feature map with width * res/8 channels -> stride-2 transposed convs halving the
channels and doubling the resolution -> C channels at res x res, tanh. For res 32 the ladder is
width*4 -> width*2 -> width -> C. D mirrors it with stride-2 convs from C up to width * res/8
channels at 4x4, then one linear layer (a 4x4 valid conv) to a logit.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from bigtrain.config import NetConfig
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.models.layers import check_labels, concat_one_hot

RESOLUTIONS = (16, 32, 64, 128)
INIT_STD = 0.02  # the DCGAN paper's N(0, 0.02) initialisation


def image_resolution(info: DataInfo, arch_key: str) -> int:
    """The square, power-of-two resolution DCGAN supports; ConfigError otherwise."""
    if info.kind != "image":
        raise ConfigError(
            arch_key, f"dcgan needs image data, got {info.kind} data of shape {tuple(info.shape)}; use mlp"
        )
    _, height, width = info.shape
    if height != width or height not in RESOLUTIONS:
        raise ConfigError(
            "data.resolution",
            f"dcgan supports square resolutions {', '.join(map(str, RESOLUTIONS))}; got {height}x{width}",
        )
    return height


def ladder(width: int, resolution: int) -> list[int]:
    """Channels of the feature maps at 4x4, 8x8, ..., resolution/2: width * res/8 halving to width."""
    steps = resolution.bit_length() - 3  # stride-2 layers between 4x4 and the full resolution
    return [width * 2 ** (steps - 1 - i) for i in range(steps)]


def conv_block(conv: nn.Module, channels: int, batch_norm: bool, activation: nn.Module) -> list[nn.Module]:
    """conv -> BatchNorm (optional) -> activation."""
    return [conv, nn.BatchNorm2d(channels), activation] if batch_norm else [conv, activation]


def init_dcgan(module: nn.Module) -> None:
    """Weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0 (DCGAN paper, section 4)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, INIT_STD)
    bias = getattr(module, "bias", None)
    if isinstance(bias, Tensor):
        nn.init.zeros_(bias)


class DcganGenerator(nn.Module):
    """z [N, z_dim] (+ one-hot y) -> images [N, C, res, res] in [-1, 1]."""

    def __init__(self, net: NetConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.g.arch")
        batch_norm = net.norm == "batch"
        channels = ladder(net.width, res)
        self.num_classes = num_classes
        # A bias right before BatchNorm is cancelled by its mean subtraction, so only plain layers get one.
        layers = conv_block(
            nn.ConvTranspose2d(z_dim + num_classes, channels[0], 4, 1, 0, bias=not batch_norm),
            channels[0], batch_norm, nn.ReLU(),
        )  # -> [N, channels[0], 4, 4]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += conv_block(
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), c_out, batch_norm, nn.ReLU()
            )  # doubles H, W
        layers += [nn.ConvTranspose2d(channels[-1], info.shape[0], 4, 2, 1), nn.Tanh()]  # -> [N, C, res, res]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = concat_one_hot(z, y, self.num_classes)  # [N, z_dim (+ K)]
        return self.net(h[:, :, None, None])


class DcganDiscriminator(nn.Module):
    """x [N, C, res, res] (+ y for the projection term) -> logits [N]."""

    def __init__(self, net: NetConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.d.arch")
        batch_norm = net.norm == "batch"
        channels = ladder(net.width, res)[::-1]  # [width at res/2, ..., width * res/8 at 4x4]
        self.num_classes = num_classes
        # The input layer has no BatchNorm: normalising raw images destabilises DCGAN training.
        layers = conv_block(nn.Conv2d(info.shape[0], channels[0], 4, 2, 1), channels[0], False, nn.LeakyReLU(0.2))
        for c_in, c_out in zip(channels, channels[1:]):
            layers += conv_block(
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), c_out, batch_norm, nn.LeakyReLU(0.2)
            )  # halves H, W
        self.features = nn.Sequential(*layers, nn.Flatten())  # -> [N, channels[-1] * 4 * 4]
        feature_size = channels[-1] * 4 * 4
        # A linear layer on the flattened 4x4 map is the paper's final 4x4 valid conv; keeping the map
        # flat lets the projection term below use the same features.
        self.head = nn.Linear(feature_size, 1)
        self.embed = nn.Embedding(num_classes, feature_size) if num_classes else None
        self.apply(init_dcgan)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = self.features(x)  # [N, F]
        logits = self.head(h).squeeze(1)  # [N]
        y = check_labels(y, self.num_classes)
        if self.embed is not None and y is not None:
            # Projection discriminator: the class enters as an inner product with the features.
            logits = logits + (self.embed(y) * h).sum(dim=1)
        return logits
