"""MAD-GAN (Ghosh et al. 2018): K generator heads on a shared trunk, D with K + 1 classes
(recipe.py), on the perceptron nets."""

from bigtrain.families.base import Family
from bigtrain.families.madgan.recipe import MadganRecipe

FAMILY = Family(recipes={"madgan": MadganRecipe})
