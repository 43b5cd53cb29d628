"""Network config sections: `model.g`, `model.d` and `model.nets.<player>`.

Each architecture declares, beside its nets in its family's folder, one dataclass per side
holding exactly the keys its net reads (docs/design.md, "Network config per architecture");
they build on `NetConfig` and the mixins here, one per key that several nets read. The registry
(bigtrain.families) hands the arch -> class map to the config loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from bigtrain.config import _check_choice, _check_positive

NORMS = ("batch", "none")
COND_CHOICES = ("auto", "concat", "cbn", "projection", "acgan")
SIDES = {"g": "generator", "d": "discriminator"}


@dataclass
class NetConfig:
    """A `model.g` / `model.d` section. `arch` and the side pick its class (the registry's archs), which
    declares exactly the keys that net reads (docs/design.md, "Network config per architecture")."""

    norms: ClassVar[tuple[str, ...]] = NORMS  # the values `norm` may take, in the classes that have it
    arch: str = "dcgan"  # an architecture of the registry (bigtrain.families): picks this section's class and keys
    width: int = 64  # dcgan: channels at res/2, doubled per halving; sngan: channel multiple; began: filters

    def validate(self, prefix: str) -> None:
        """Value checks of this class's keys, each error naming `prefix.key`."""
        for f in dataclasses.fields(self):
            key, value = f"{prefix}.{f.name}", getattr(self, f.name)
            if f.name in ("width", "depth", "h_dim", "mbstd_channels", "pack"):
                _check_positive(key, value)
            elif f.name == "mbstd_group":
                _check_positive(key, value, allow_zero=True)
            elif f.name == "norm":
                _check_choice(key, value, self.norms)
            elif f.name == "cond":
                _check_choice(key, value, COND_CHOICES)


# The keys some nets read, one mixin each. A class lists its mixins last key first, so that its
# fields keep the order arch, width, depth, norm, cond, spectral_norm, h_dim, mbstd_*, pack.


@dataclass
class _Depth:
    depth: int = 2  # hidden layers


@dataclass
class _Norm:
    norm: str = "batch"  # batch | none: batch norm in the hidden layers (D: real and fake forwarded apart, see README)


@dataclass
class _Cond:
    cond: str = "auto"  # class conditioning: auto (the arch's default) | concat | cbn (G) | projection | acgan (D)


@dataclass
class _SpectralNorm:
    spectral_norm: bool = False  # spectral normalisation of every weight layer (Miyato et al. 2018)


@dataclass
class _HDim:
    h_dim: int = 64  # BEGAN: size of the autoencoder's bottleneck embedding


@dataclass
class _Mbstd:
    mbstd_group: int = 0  # minibatch standard deviation over groups of this many samples (Karras et al. 2018); 0 = off
    mbstd_channels: int = 1  # feature groups of the minibatch-stddev statistic


@dataclass
class _Pack:
    pack: int = 1  # PacGAN packing, D scores m samples joined along channels (Lin et al. 2018); 1 = off


def net_keys(cls: type[NetConfig]) -> list[str]:
    """The keys a net section class declares, in order."""
    return [f.name for f in dataclasses.fields(cls)]
