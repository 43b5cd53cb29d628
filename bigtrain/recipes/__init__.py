"""Model families as recipes: `RECIPES` maps the config key `recipe` to a Recipe class.

See bigtrain/recipes/base.py for what a recipe declares and docs/design.md for how to add one.
"""
from __future__ import annotations

from bigtrain.config import SIDES, Config
from bigtrain.errors import ConfigError
from bigtrain.data import DataInfo
from bigtrain.recipes.base import Recipe
from bigtrain.recipes.began import BeganRecipe
from bigtrain.recipes.biggan import BigganRecipe
from bigtrain.recipes.gan import GanRecipe
from bigtrain.recipes.gman import GmanRecipe
from bigtrain.recipes.img2img import CycleganRecipe, Pix2pixRecipe
from bigtrain.recipes.madgan import MadganRecipe
from bigtrain.recipes.progan import ProganRecipe

RECIPES: dict[str, type[Recipe]] = {
    "gan": GanRecipe,
    "began": BeganRecipe,
    "gman": GmanRecipe,
    "madgan": MadganRecipe,
    "progan": ProganRecipe,
    "biggan": BigganRecipe,
    "cyclegan": CycleganRecipe,
    "pix2pix": Pix2pixRecipe,
}


def recipe_class(cfg: Config) -> type[Recipe]:
    """The recipe `cfg` asks for; `loss.type: began` under the default recipe means BEGAN
    (configs written before recipes existed select it that way)."""
    if cfg.recipe == "gan" and cfg.loss.type == "began":
        return BeganRecipe
    return RECIPES[cfg.recipe]


def build_recipe(cfg: Config, info: DataInfo, world_size: int = 1) -> Recipe:
    """The recipe for `cfg` on data described by `info`, trained by `world_size` processes,
    with its config checks done."""
    recipe = recipe_class(cfg)(cfg, info)
    recipe.world_size = world_size
    names = {spec.name.lower() for spec in recipe.players()} | set(recipe.optim_groups())
    for section, keys in (("optim", cfg.optim), ("backend.configs", cfg.backend.configs), ("schedule.lr", cfg.schedule.lr)):
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
