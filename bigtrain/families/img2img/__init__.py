"""Image-to-image: CycleGAN (Zhu et al. 2017) and Pix2Pix (Isola et al. 2017), their recipes
(recipe.py) and the reference's ResNet/U-Net generators and PatchGAN discriminators (nets.py)."""

from bigtrain.families.base import Arch, Family
from bigtrain.families.img2img.nets import (
    CycleganDConfig,
    CycleganGConfig,
    PairPatchDiscriminator,
    PatchDiscriminator,
    Pix2pixDConfig,
    Pix2pixGConfig,
    ResnetGenerator,
    UnetGenerator,
)
from bigtrain.families.img2img.recipe import CycleganRecipe, Pix2pixRecipe

FAMILY = Family(
    recipes={"cyclegan": CycleganRecipe, "pix2pix": Pix2pixRecipe},
    archs={
        "cyclegan": Arch(CycleganGConfig, CycleganDConfig, ResnetGenerator, PatchDiscriminator, maps="image"),
        "pix2pix": Arch(Pix2pixGConfig, Pix2pixDConfig, UnetGenerator, PairPatchDiscriminator, maps="image"),
    },
)
