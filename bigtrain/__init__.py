"""bigtrain: distributed, large-batch GAN training."""

__version__ = "0.1.0"
