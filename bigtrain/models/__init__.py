"""Architectures: `MODELS` maps `model.g.arch` / `model.d.arch` names to builders.

Every builder has the signature `builder(net, z_dim, num_classes, info) -> nn.Module`.
G(z [N, z_dim], y int64 [N] | None) -> images [N, C, H, W] in [-1, 1] or vectors [N, D];
D(x, y | None) -> logits [N]; with `model.d.cond: acgan`, [N, 1 + num_classes] (column 0 the
adversarial logit, columns 1: the class logits); began's autoencoder D -> per-sample
reconstruction errors [N]. Nets are class-conditional when num_classes > 0, and then need y;
`model.{g,d}.cond` picks how y enters (see layers.py).
Models are plain nn.Modules: the engine decides devices and distribution.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from torch import nn

from bigtrain.config import ModelConfig, NetConfig
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.models.began import BeganDiscriminator, BeganGenerator
from bigtrain.models.dcgan import DcganDiscriminator, DcganGenerator
from bigtrain.models.mlp import MlpDiscriminator, MlpGenerator
from bigtrain.models.sngan import SnganDiscriminator, SnganGenerator

Builder = Callable[[NetConfig, int, int, DataInfo], nn.Module]


class Arch(NamedTuple):
    G: Builder  # generator builder
    D: Builder  # discriminator builder


MODELS: dict[str, Arch] = {
    "mlp": Arch(G=MlpGenerator, D=MlpDiscriminator),
    "dcgan": Arch(G=DcganGenerator, D=DcganDiscriminator),
    "sngan": Arch(G=SnganGenerator, D=SnganDiscriminator),
    "began": Arch(G=BeganGenerator, D=BeganDiscriminator),
}


def _arch(name: str, key: str) -> Arch:
    if name not in MODELS:
        raise ConfigError(key, f"unknown architecture {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_generator(model_cfg: ModelConfig, info: DataInfo) -> nn.Module:
    """G for `model.g`; ConfigError naming `model.g.arch` for an unknown architecture."""
    return _arch(model_cfg.g.arch, "model.g.arch").G(model_cfg.g, model_cfg.z_dim, model_cfg.num_classes, info)


def build_discriminator(model_cfg: ModelConfig, info: DataInfo) -> nn.Module:
    """D for `model.d`; ConfigError naming `model.d.arch` for an unknown architecture."""
    return _arch(model_cfg.d.arch, "model.d.arch").D(model_cfg.d, model_cfg.z_dim, model_cfg.num_classes, info)
