"""The sections the classic recipe reads, and every recipe built on it (progan, biggan, gman,
madgan, began): `loss` (the adversarial loss and its regularisers) and `augment` (DiffAugment on
D's inputs). A recipe that does not declare them (image-to-image) has no such keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from bigtrain.config import _check_choice, _check_positive
from bigtrain.errors import ConfigError

AUGMENTS = ("color", "translation", "cutout")


@dataclass
class LossConfig:
    type: str = "nonsaturating"  # key of bigtrain.losses.LOSSES
    lsgan_abc: list[float] = field(default_factory=lambda: [0.0, 1.0, 1.0])  # LSGAN targets a (fake), b (real), c (G's)
    gp_weight: float = 0.0  # WGAN-GP gradient penalty on real/fake interpolates (lambda; 10 in the paper); 0 = off
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * |grad D(real)|^2 (Mescheder et al. 2018); 0 = off
    r1_interval: int = 1  # lazy R1: a separate D_reg phase every k iterations, weighted by k
    dragan_weight: float = 0.0  # DRAGAN penalty around perturbed real data (lambda; 10 in the paper); 0 = off
    clip_d_weights: float = 0.0  # WGAN weight clipping: D's parameters into [-c, c] after each D step; 0 = off
    acgan_weight: float = 1.0  # weight of the auxiliary classifier's cross-entropy (D cond: acgan)

    def __post_init__(self) -> None:
        if len(self.lsgan_abc) != 3:
            raise ConfigError("loss.lsgan_abc", f"needs three values a, b, c; got {list(self.lsgan_abc)}")
        for name in ("gp_weight", "r1_gamma", "dragan_weight", "clip_d_weights", "acgan_weight"):
            _check_positive(f"loss.{name}", getattr(self, name), allow_zero=True)
        _check_positive("loss.r1_interval", self.r1_interval)


@dataclass
class AugmentConfig:
    policy: str = ""  # DiffAugment (Zhao et al. 2020) ops for D's inputs, comma-separated: color,translation,cutout

    def __post_init__(self) -> None:
        for op in filter(None, (p.strip() for p in self.policy.split(","))):
            _check_choice("augment.policy", op, AUGMENTS)


CLASSIC_SECTIONS: dict[str, type] = {"loss": LossConfig, "augment": AugmentConfig}
