"""BEGAN (Berthelot et al. 2017): an autoencoder D and the k_t balance (recipe.py), on the
autoencoder nets of nets.py."""

from bigtrain.families.base import Arch, Family
from bigtrain.families.began.nets import BeganDConfig, BeganDiscriminator, BeganGConfig, BeganGenerator
from bigtrain.families.began.recipe import BeganRecipe

FAMILY = Family(
    recipes={"began": BeganRecipe},
    archs={"began": Arch(BeganGConfig, BeganDConfig, BeganGenerator, BeganDiscriminator)},
)
