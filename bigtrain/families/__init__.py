"""Model families: `FAMILIES` is the one explicit dict of the families bigtrain ships, name ->
Family (its recipes and architectures; bigtrain/families/base.py). A family is one folder here
plus one line below; a family of another package plugs in through the `bigtrain.families` entry
point group, whose entries name a Family object (docs/design.md, "Adding a family").

`registry()` joins both into the Registry that the config loader, the CLI and the engine are
handed; `load_config`, `config_from_dict` and `build_recipe` are the usual ways in.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Optional

from torch import nn

from bigtrain import config_merge
from bigtrain.config import Config
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families import began, biggan, gan, gman, img2img, madgan, progan, stylegan2
from bigtrain.families.base import Family, Recipe
from bigtrain.families.base import net_for as _net_for
from bigtrain.families.registry import Registry
from bigtrain.netconfig import SIDES

FAMILIES: dict[str, Family] = {
    "gan": gan.FAMILY,
    "began": began.FAMILY,
    "gman": gman.FAMILY,
    "madgan": madgan.FAMILY,
    "progan": progan.FAMILY,
    "biggan": biggan.FAMILY,
    "img2img": img2img.FAMILY,
    "stylegan2": stylegan2.FAMILY,
}
ENTRY_POINT_GROUP = "bigtrain.families"  # [project.entry-points."bigtrain.families"] name = "package.module:FAMILY"


def registry() -> Registry:
    """FAMILIES and every family installed under the `bigtrain.families` entry point group."""
    families = dict(FAMILIES)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in families:
            raise ConfigError(
                "recipe",
                f"the {ENTRY_POINT_GROUP} entry point {entry.name!r} ({entry.value}) names a family bigtrain already "
                "has",
            )
        family = entry.load()
        if not isinstance(family, Family):
            raise ConfigError(
                "recipe",
                f"the {ENTRY_POINT_GROUP} entry point {entry.name!r} ({entry.value}) is no "
                "bigtrain.families.base.Family",
            )
        families[entry.name] = family
    return Registry(families)


def load_config(
    path: Optional[str | Path] = None, overrides: Optional[list[str]] = None, reg: Optional[Registry] = None
) -> Config:
    """Defaults <- YAML file <- overrides, validated against the registry's schema for the recipe
    (bigtrain.config.load_config)."""
    return config_merge.load_config(path, overrides, reg or registry())


def config_from_dict(data: dict, reg: Optional[Registry] = None) -> Config:
    """A saved config (a checkpoint's) validated against the registry's schema."""
    return config_merge.config_from_dict(data, reg or registry())


def recipe_class(cfg: Config, reg: Optional[Registry] = None) -> type[Recipe]:
    return (reg or registry()).recipe_class(cfg)


def build_recipe(cfg: Config, info: DataInfo, world_size: int = 1, reg: Optional[Registry] = None) -> Recipe:
    """The recipe for `cfg` on data described by `info`, trained by `world_size` processes,
    with its config checks done."""
    reg = reg or registry()
    recipe = reg.recipe_class(cfg).create(cfg, info, archs=reg.archs, world_size=world_size)
    names = {spec.name.lower() for spec in recipe.players()} | set(recipe.optim_groups())
    for section, keys in (
        ("optim", cfg.optim),
        ("backend.configs", cfg.backend.configs),
        ("schedule.lr", cfg.schedule.lr),
    ):
        for key in keys:
            if key not in names:
                raise_unknown_player(f"{section}.{key}", sorted(names))
    players = sorted(spec.name.lower() for spec in recipe.players())
    for key in cfg.model.nets:
        if key in SIDES and key in players:  # players G and D are model.g and model.d themselves
            raise ConfigError(f"model.nets.{key}", f"player {key.upper()}'s network is model.{key}; set its keys there")
        if key not in players:
            raise_unknown_player(f"model.nets.{key}", players)
    return recipe


def raise_unknown_player(key: str, names: list[str]) -> None:
    raise ConfigError(key, f"this recipe has no player {key.rsplit('.', 1)[-1]!r}; its players are {', '.join(names)}")


def build_generator(model: Any, info: DataInfo, net: Any = None, reg: Optional[Registry] = None) -> nn.Module:
    """G of `model.g` (or of `net`, a player's own section), outside any recipe (tests, tools)."""
    net = net or model.g
    return (reg or registry()).archs[net.arch].g(net, model.z_dim, model.num_classes, info)


def build_discriminator(model: Any, info: DataInfo, net: Any = None, reg: Optional[Registry] = None) -> nn.Module:
    """D of `model.d` (or of `net`), outside any recipe."""
    net = net or model.d
    return (reg or registry()).archs[net.arch].d(net, model.z_dim, model.num_classes, info)


def net_for(model: Any, player: str, side: str, reg: Optional[Registry] = None) -> Any:
    """Player `player`'s network section (bigtrain.families.base.net_for) on the registry's archs."""
    return _net_for(model, player, side, (reg or registry()).archs)
