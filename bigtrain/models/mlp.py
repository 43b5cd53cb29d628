"""Multilayer-perceptron G and D in the style of Goodfellow et al. 2014.

They work on images and on vectors alike, and contain no batch statistics on purpose: the
distributed tests rely on an mlp whose gradients are the same whether a batch is processed whole
or in accumulated micro-batches.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from torch import Tensor, nn

from bigtrain.config import NetConfig
from bigtrain.data import DataInfo
from bigtrain.models.layers import concat_one_hot


def perceptron(
    in_features: int, width: int, depth: int, out_features: int, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    """`depth` hidden Linear layers of `width` units, each followed by `activation()`, then a
    linear output layer: [N, in_features] -> [N, out_features]."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), activation()]
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MlpGenerator(nn.Module):
    """z [N, z_dim] (+ one-hot y) -> images [N, C, H, W] in [-1, 1], or vectors [N, D]."""

    def __init__(self, net: NetConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        self.num_classes = num_classes
        self.out_shape = tuple(info.shape)
        self.net = perceptron(z_dim + num_classes, net.width, net.depth, math.prod(info.shape), nn.ReLU)
        # Real images are scaled to [-1, 1]; vectors are unbounded, so their output stays linear.
        self.out = nn.Tanh() if info.kind == "image" else nn.Identity()

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        x = self.net(concat_one_hot(z, y, self.num_classes))  # [N, prod(shape)]
        return self.out(x.view(z.shape[0], *self.out_shape))


class MlpDiscriminator(nn.Module):
    """x [N, C, H, W] or [N, D] (+ one-hot y) -> logits [N]."""

    def __init__(self, net: NetConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        self.num_classes = num_classes
        self.net = perceptron(
            math.prod(info.shape) + num_classes, net.width, net.depth, 1, lambda: nn.LeakyReLU(0.2)
        )

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = concat_one_hot(x.flatten(1), y, self.num_classes)  # [N, prod(shape) (+ K)]
        return self.net(h).squeeze(1)

