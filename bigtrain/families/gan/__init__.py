"""The classic two-player family: G and D with the losses of bigtrain.losses, gradient
penalties, AC-GAN, DiffAugment and PacGAN packing (recipe.py), on the perceptron, DCGAN, SNGAN
and PacGAN-grid nets of this folder. GAN, DCGAN, CGAN, LSGAN, WGAN(-GP), hinge, SNGAN and
PacGAN are configs of it."""

from bigtrain.families.base import Arch, Family
from bigtrain.families.gan.dcgan import DcganDConfig, DcganDiscriminator, DcganGConfig, DcganGenerator
from bigtrain.families.gan.grid import GridDConfig, GridGConfig, grid_discriminator, grid_generator
from bigtrain.families.gan.mlp import MlpDConfig, MlpDiscriminator, MlpGConfig, MlpGenerator
from bigtrain.families.gan.recipe import GanRecipe
from bigtrain.families.gan.sngan import SnganDConfig, SnganDiscriminator, SnganGConfig, SnganGenerator

FAMILY = Family(
    recipes={"gan": GanRecipe},
    archs={
        "mlp": Arch(MlpGConfig, MlpDConfig, MlpGenerator, MlpDiscriminator),
        "dcgan": Arch(DcganGConfig, DcganDConfig, DcganGenerator, DcganDiscriminator),
        "sngan": Arch(SnganGConfig, SnganDConfig, SnganGenerator, SnganDiscriminator),
        "grid": Arch(GridGConfig, GridDConfig, grid_generator, grid_discriminator),
    },
)
