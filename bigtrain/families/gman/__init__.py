"""GMAN (Durugkar et al. 2017): one G against K discriminators (recipe.py), on any classic net."""

from bigtrain.families.base import Family
from bigtrain.families.gman.recipe import GmanRecipe

FAMILY = Family(recipes={"gman": GmanRecipe})
