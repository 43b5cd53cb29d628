"""Multilayer-perceptron G and D in the style of Goodfellow et al. 2014.

They work on images and on vectors alike, and contain no batch statistics on purpose: the
distributed tests rely on an mlp whose gradients are the same whether a batch is processed whole
or in accumulated micro-batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor, nn

from bigtrain.data import DataInfo
from bigtrain.layers import (
    D_CONDS,
    DiscriminatorHead,
    apply_spectral_norm,
    check_labels,
    concat_one_hot,
    minibatch_stddev,
    resolve_cond,
)
from bigtrain.netconfig import NetConfig, _Cond, _Depth, _Mbstd, _Pack, _SpectralNorm


@dataclass
class MlpGConfig(_SpectralNorm, _Cond, _Depth, NetConfig):
    arch: str = "mlp"  # this class's architecture


@dataclass
class MlpDConfig(_Pack, _Mbstd, _SpectralNorm, _Cond, _Depth, NetConfig):
    arch: str = "mlp"  # this class's architecture


def hidden_layers(in_features: int, width: int, depth: int, activation: Callable[[], nn.Module]) -> list[nn.Module]:
    """`depth` Linear layers of `width` units, each followed by `activation()`: [N, in] -> [N, width]."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), activation()]
    return layers


def perceptron(
    in_features: int, width: int, depth: int, out_features: int, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    """`depth` hidden layers (see hidden_layers), then a linear output layer: [N, in] -> [N, out]."""
    return nn.Sequential(*hidden_layers(in_features, width, depth, activation), nn.Linear(width, out_features))


class MlpGenerator(nn.Module):
    """z [N, z_dim] (+ one-hot y) -> images [N, C, H, W] in [-1, 1], or vectors [N, D]."""

    def __init__(self, net: MlpGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        # No batch norm here, so concat is the only way in for the labels.
        resolve_cond(net, num_classes, "model.g.cond", "mlp", ("concat",), default="concat")
        self.num_classes = num_classes
        self.out_shape = tuple(info.shape)
        self.net = perceptron(z_dim + num_classes, net.width, net.depth, math.prod(info.shape), nn.ReLU)
        # Real images are scaled to [-1, 1]; vectors are unbounded, so their output stays linear.
        self.out = nn.Tanh() if info.kind == "image" else nn.Identity()
        if net.spectral_norm:
            apply_spectral_norm(self)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        x = self.net(concat_one_hot(z, y, self.num_classes))  # [N, prod(shape)]
        return self.out(x.view(z.shape[0], *self.out_shape))


class MlpDiscriminator(nn.Module):
    """x [N, C, H, W] or [N, D] (+ y) -> logits [N], or [N, 1 + K] with cond acgan."""

    def __init__(self, net: MlpDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        self.cond = resolve_cond(net, num_classes, "model.d.cond", "mlp", D_CONDS, default="concat")
        self.num_classes = num_classes
        in_features = math.prod(info.shape) + (num_classes if self.cond == "concat" else 0)
        stddev = minibatch_stddev(net)
        self.features = nn.Sequential(
            *hidden_layers(in_features, net.width, net.depth, lambda: nn.LeakyReLU(0.2)), *stddev
        )
        self.head = DiscriminatorHead(net.width + (net.mbstd_channels if stddev else 0), num_classes, self.cond)
        if net.spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        y = check_labels(y, self.num_classes)
        h = x.flatten(1)  # [N, prod(shape)]
        if self.cond == "concat":
            h = concat_one_hot(h, y, self.num_classes)  # [N, prod(shape) + K]
        return self.head(self.features(h), y)  # [N] or [N, 1 + K]
