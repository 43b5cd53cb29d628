"""Progressive growing (Karras et al. 2018): the growth schedule (growth.py), the recipe
(recipe.py) and the progan nets with every level built up front (nets.py)."""

from bigtrain.families.base import Arch, Family
from bigtrain.families.progan.nets import ProganDConfig, ProganDiscriminator, ProganGConfig, ProganGenerator
from bigtrain.families.progan.recipe import ProganRecipe

FAMILY = Family(
    recipes={"progan": ProganRecipe},
    archs={"progan": Arch(ProganGConfig, ProganDConfig, ProganGenerator, ProganDiscriminator)},
)
