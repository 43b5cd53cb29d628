"""StyleGAN2-ADA (Karras et al. 2020, NVlabs/stylegan2-ada-pytorch): the mapping and synthesis
networks and the resnet/orig discriminator (nets.py), the adaptive augmentation pipe
(augment.py) and the recipe with its lazy regularisers and ADA (recipe.py)."""

from bigtrain.families.base import Arch, Family
from bigtrain.families.stylegan2.nets import (
    Stylegan2DConfig,
    Stylegan2Discriminator,
    Stylegan2GConfig,
    Stylegan2Generator,
)
from bigtrain.families.stylegan2.recipe import Stylegan2Recipe

FAMILY = Family(
    recipes={"stylegan2": Stylegan2Recipe},
    archs={"stylegan2": Arch(Stylegan2GConfig, Stylegan2DConfig, Stylegan2Generator, Stylegan2Discriminator)},
)
