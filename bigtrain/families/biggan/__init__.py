"""BigGAN (Brock et al. 2019): orthogonal regularisation on the classic recipe (recipe.py), the
BigGAN nets (nets.py) and BigGAN-deep's (deep.py)."""

from bigtrain.families.base import Arch, Family
from bigtrain.families.biggan.deep import (
    BigganDeepDConfig,
    BigganDeepDiscriminator,
    BigganDeepGConfig,
    BigganDeepGenerator,
)
from bigtrain.families.biggan.nets import BigganDConfig, BigganDiscriminator, BigganGConfig, BigganGenerator
from bigtrain.families.biggan.recipe import BigganRecipe

FAMILY = Family(
    recipes={"biggan": BigganRecipe},
    archs={
        "biggan": Arch(BigganGConfig, BigganDConfig, BigganGenerator, BigganDiscriminator),
        "biggan_deep": Arch(BigganDeepGConfig, BigganDeepDConfig, BigganDeepGenerator, BigganDeepDiscriminator),
    },
)
