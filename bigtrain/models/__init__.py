"""Architectures: `MODELS` maps `model.g.arch` / `model.d.arch` names to builders.

Every builder has the signature `builder(net, z_dim, num_classes, info) -> nn.Module`.
G(z [N, z_dim], y int64 [N] | None) -> images [N, C, H, W] in [-1, 1] or vectors [N, D];
D(x, y | None) -> logits [N]; with `model.d.cond: acgan`, [N, 1 + num_classes] (column 0 the
adversarial logit, columns 1: the class logits); began's autoencoder D -> per-sample
reconstruction errors [N]. Nets are class-conditional when num_classes > 0, and then need y;
`model.{g,d}.cond` picks how y enters (see layers.py). A builder's `net` is the section class
bigtrain.config.NET_CONFIGS has for its arch and side: it holds exactly the keys the net reads.
The image-to-image archs (cyclegan, pix2pix: models/img2img.py) are the exception: G(x) -> y maps
images to images and D(x) -> a patch logit map [N, 1, h, w] (pix2pix's D reads input and
output joined along channels); they take no labels.
Models are plain nn.Modules: the engine decides devices and distribution.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from torch import nn

from bigtrain.config import GridDConfig, GridGConfig, ModelConfig, NetConfig
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.models.biggan import BigganDiscriminator, BigganGenerator
from bigtrain.models.biggan_deep import BigganDeepDiscriminator, BigganDeepGenerator
from bigtrain.models.began import BeganDiscriminator, BeganGenerator
from bigtrain.models.dcgan import DcganDiscriminator, DcganGenerator
from bigtrain.models.grid import GridDiscriminator, GridGenerator
from bigtrain.models.img2img import PairPatchDiscriminator, PatchDiscriminator, ResnetGenerator, UnetGenerator
from bigtrain.models.mlp import MlpDiscriminator, MlpGenerator
from bigtrain.models.progan import ProganDiscriminator, ProganGenerator
from bigtrain.models.sngan import SnganDiscriminator, SnganGenerator

Builder = Callable[[NetConfig, int, int, DataInfo], nn.Module]


class Arch(NamedTuple):
    G: Builder  # generator builder
    D: Builder  # discriminator builder


def _vector_data(info: DataInfo, key: str, num_classes: int) -> None:
    if info.kind != "vector" or num_classes:
        raise ConfigError(key, "grid is PacGAN's net for unconditional vector data (e.g. `bigtrain make-toy grid25`); use mlp, dcgan, ...")


def _grid_generator(net: GridGConfig, z_dim: int, num_classes: int, info: DataInfo) -> nn.Module:
    """PacGAN's 2-D grid G (BN-ReLU perceptron); width and depth from model.g, BN if norm: batch."""
    _vector_data(info, "model.g.arch", num_classes)
    return GridGenerator(z_dim, info.shape[0], net.width, net.depth, batch_norm=net.norm == "batch")


def _grid_discriminator(net: GridDConfig, z_dim: int, num_classes: int, info: DataInfo) -> nn.Module:
    """PacGAN's 2-D grid D (maxout perceptron); width and depth from model.d."""
    _vector_data(info, "model.d.arch", num_classes)
    return GridDiscriminator(info.shape[0], net.width, net.depth)


MODELS: dict[str, Arch] = {
    "mlp": Arch(G=MlpGenerator, D=MlpDiscriminator),
    "dcgan": Arch(G=DcganGenerator, D=DcganDiscriminator),
    "sngan": Arch(G=SnganGenerator, D=SnganDiscriminator),
    "began": Arch(G=BeganGenerator, D=BeganDiscriminator),
    "grid": Arch(G=_grid_generator, D=_grid_discriminator),
    "progan": Arch(G=ProganGenerator, D=ProganDiscriminator),
    "biggan": Arch(G=BigganGenerator, D=BigganDiscriminator),
    "biggan_deep": Arch(G=BigganDeepGenerator, D=BigganDeepDiscriminator),
    "cyclegan": Arch(G=ResnetGenerator, D=PatchDiscriminator),  # image-to-image (img2img.py): G(x) -> y, D(x) -> [N, 1, h, w]
    "pix2pix": Arch(G=UnetGenerator, D=PairPatchDiscriminator),  # D sees (input, output) joined: 2C channels
}


def build_generator(model_cfg: ModelConfig, info: DataInfo, net: Optional[NetConfig] = None) -> nn.Module:
    """G for `net` (a player's own section, config.net_for), by default `model.g`."""
    net = net or model_cfg.g
    return MODELS[net.arch].G(net, model_cfg.z_dim, model_cfg.num_classes, info)


def build_discriminator(model_cfg: ModelConfig, info: DataInfo, net: Optional[NetConfig] = None) -> nn.Module:
    """D for `net` (a player's own section, config.net_for), by default `model.d`."""
    net = net or model_cfg.d
    return MODELS[net.arch].D(net, model_cfg.z_dim, model_cfg.num_classes, info)
