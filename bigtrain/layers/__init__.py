"""Pieces shared by every architecture: class conditioning, D's output head, spectral norm.

Conditioning modes (`model.g.cond` / `model.d.cond`; "auto" picks the architecture's default):
- G `concat`: one-hot y joined to z (Mirza & Osindero 2014).
- G `cbn`: conditional batch norm, a per-class gain and bias after a BN without its own affine
  parameters (de Vries et al. 2017; Miyato & Koyama 2018).
- D `concat`: one-hot y joined to D's input (flat inputs) or as constant maps to the image channels.
- D `projection`: inner product of a class embedding with D's final features (Miyato & Koyama 2018).
- D `acgan`: an auxiliary classifier head; D returns [N, 1 + K] (Odena et al. 2017).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.netconfig import NetConfig

G_CONDS = ("concat", "cbn")
D_CONDS = ("concat", "projection", "acgan")


def check_labels(y: Optional[Tensor], num_classes: int) -> Optional[Tensor]:
    """Labels for a conditional net (required), or None for an unconditional one.

    An unconditional net drops `y`, because the loop passes along whatever labels the data has.
    """
    if num_classes == 0:
        return None
    if y is None:
        raise ValueError(f"this network is class-conditional ({num_classes} classes): pass labels y, int64 [N]")
    return y


def concat_one_hot(x: Tensor, y: Optional[Tensor], num_classes: int) -> Tensor:
    """Append one-hot labels to flat inputs, as in Mirza & Osindero's conditional GAN.

    x: [N, F], y: int64 [N] or None -> [N, F + num_classes] (or x itself when unconditional).
    """
    y = check_labels(y, num_classes)
    if y is None:
        return x
    # x's dtype, so the concatenation also works inside a bf16/fp16 autocast region.
    return torch.cat([x, F.one_hot(y, num_classes).to(x.dtype)], dim=1)


def concat_label_maps(x: Tensor, y: Optional[Tensor], num_classes: int) -> Tensor:
    """Append one-hot labels to images as constant feature maps.

    x: [N, C, H, W], y: int64 [N] or None -> [N, C + num_classes, H, W] (or x when unconditional).
    """
    y = check_labels(y, num_classes)
    if y is None:
        return x
    maps = F.one_hot(y, num_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
    return torch.cat([x, maps], dim=1)


def resolve_cond(
    net: NetConfig, num_classes: int, key: str, arch: str, allowed: Sequence[str], default: str
) -> Optional[str]:
    """The conditioning mode a net uses: None when unconditional, else `net.cond` ("auto" ->
    `default`) checked against the modes `arch` supports for this player; ConfigError naming `key`.
    """
    if num_classes == 0:
        return None
    cond = default if net.cond == "auto" else net.cond
    role = "G" if key.startswith("model.g") else "D"
    if cond not in allowed:
        raise ConfigError(key, f"{arch} {role} supports cond {', '.join(allowed)} (auto = {default}); got {cond!r}")
    if cond == "cbn" and net.norm != "batch":
        prefix = key.rsplit(".", 1)[0]
        raise ConfigError(key, f"cbn conditions batch norm, but {prefix}.norm is {net.norm!r}; set it to batch")
    return cond


def image_resolution(info: DataInfo, arch_key: str, arch: str, resolutions: Sequence[int]) -> int:
    """The square resolution of image data if `arch` supports it; ConfigError otherwise."""
    if info.kind != "image":
        raise ConfigError(
            arch_key, f"{arch} needs image data, got {info.kind} data of shape {tuple(info.shape)}; use mlp"
        )
    _, height, width = info.shape
    if height != width or height not in resolutions:
        raise ConfigError(
            "data.resolution",
            f"{arch} supports square resolutions {', '.join(map(str, resolutions))}; got {height}x{width}",
        )
    return height


class Conditional(nn.Module):
    """A module whose forward takes the labels too: forward(x, y)."""


class ConditionalBatchNorm2d(Conditional):
    """BatchNorm with a gain and bias per class: x [N, C, H, W], y int64 [N] -> [N, C, H, W].

    Plain tables rather than nn.Embedding, so neither weight initialisers nor spectral norm
    (which target embeddings) touch them; they start as the identity, like BN's affine parameters.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Parameter(torch.ones(num_classes, channels))
        self.bias = nn.Parameter(torch.zeros(num_classes, channels))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.bn(x) * self.gain[y][:, :, None, None] + self.bias[y][:, :, None, None]


def call_layer(layer: nn.Module, x: Tensor, y: Optional[Tensor]) -> Tensor:
    """layer(x, y) for a Conditional layer, layer(x) for any other."""
    return layer(x, y) if isinstance(layer, Conditional) else layer(x)


class CondSequential(nn.Sequential, Conditional):
    """nn.Sequential that hands the labels to the layers that take them."""

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        for layer in self:
            x = call_layer(layer, x, y)
        return x


def norm_layer(channels: int, norm: str, cond: Optional[str] = None, num_classes: int = 0) -> nn.Module:
    """A normalisation layer: conditional BN for cond "cbn", else BN or nothing (nn.Identity)."""
    if cond == "cbn":
        return ConditionalBatchNorm2d(channels, num_classes)
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class DiscriminatorHead(nn.Module):
    """D's last layer on its final features h [N, F] (+ y) -> logits [N], or [N, 1 + K] for acgan.

    With cond "acgan", column 0 is the adversarial logit and columns 1: the class logits.
    With "projection", the class enters as <embed(y), h> added to the logit (Miyato & Koyama 2018).
    "concat" and unconditional nets (cond None) end in a plain linear layer: y entered at the input.
    """

    def __init__(self, features: int, num_classes: int, cond: Optional[str]):
        super().__init__()
        self.num_classes = num_classes
        self.acgan = cond == "acgan"
        self.linear = nn.Linear(features, 1 + (num_classes if self.acgan else 0))
        self.embed = nn.Embedding(num_classes, features) if cond == "projection" else None

    def forward(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        out = self.linear(h)  # [N, 1] or [N, 1 + K]
        if self.acgan:
            return out
        logits = out.squeeze(1)  # [N]
        if self.embed is not None:
            logits = logits + (self.embed(check_labels(y, self.num_classes)) * h).sum(dim=1)
        return logits


class MinibatchStddev(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018, section 3): D's features get F more
    channels holding the standard deviation of each feature over a group of `group_size`
    samples, averaged over the feature's channels and positions, so D can see a lack of
    variety in a batch. Sample i belongs to group i mod (N / group_size), as in the official
    code. x [N, C, H, W] -> [N, C + F, H, W], or x [N, C] -> [N, C + F].

    It mixes the samples of one batch: the recipes forward real and fake apart through it.
    """

    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        flat = x.dim() == 2
        h = x[:, :, None, None] if flat else x  # [N, C, H, W]
        n, c, height, width = h.shape
        g, f = min(self.group_size, n), self.num_channels
        if n % g or c % f:
            raise ValueError(
                f"minibatch stddev: batch {n} must be a multiple of the group size {g}, and {c} channels of the {f} "
                "groups"
            )
        y = h.reshape(g, n // g, f, c // f, height, width).float()  # [G, M, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # [M, F, c, H, W]
        y = y.mean(dim=(2, 3, 4)).to(h.dtype)  # [M, F]
        y = y.reshape(1, n // g, f, 1, 1).expand(g, -1, -1, height, width).reshape(n, f, height, width)
        out = torch.cat([h, y], dim=1)  # [N, C + F, H, W]
        return out.flatten(1) if flat else out


def minibatch_stddev(net: NetConfig) -> list[nn.Module]:
    """The MinibatchStddev layer `model.d.mbstd_group` asks for ([] when off)."""
    return [MinibatchStddev(net.mbstd_group, net.mbstd_channels)] if net.mbstd_group else []


SPECTRAL_NORM_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Spectrally normalise every conv, linear and embedding weight of `net` (Miyato et al. 2018).

    Uses the parametrization API: one power iteration per training-mode forward, and u/v are
    cloned inside the forward, so two forwards before one backward stay correct. Call it after
    initialising the weights: the parametrization divides whatever weight it finds by its norm.
    """
    for module in list(net.modules()):
        if isinstance(module, SPECTRAL_NORM_LAYERS):
            spectral_norm(module)
    return net
