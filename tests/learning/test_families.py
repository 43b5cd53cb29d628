"""Every classic GAN family learns the digits in a short CPU run (issue 6).

Each run takes 10-60 s of one CPU core (about 5 min CPU for this file). `learned` is the
criterion: the distance between generated and real digits must fall clearly (to less than
half) below its value at initialisation, and the samples must cover the digits (all 10
classes, a near-uniform class histogram). The cheap tests at the end show that a collapsed G
passes the distance alone but fails the criterion, and that real digits pass it.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from bigtrain import sampling
from tests.learning.harness import MAX_KL, NUM_DIGITS, coverage, digit_classifier, distance, generated, learned, make_trainer, pixels8, real_images, train_and_measure

MLP_8 = ["data.resolution=8", "model.z_dim=32", "model.g.arch=mlp", "model.d.arch=mlp", "model.g.width=256", "model.d.width=256"]
DCGAN_16 = ["data.resolution=16", "model.z_dim=32", "model.g.arch=dcgan", "model.d.arch=dcgan", "model.g.width=16", "model.d.width=16"]

FAMILIES = {
    "gan_mlp_nonsaturating": MLP_8 + ["loss.type=nonsaturating", "train.total_kimg=96", "train.batch_size=64", "optim.g.lr=0.001", "optim.d.lr=0.001"],
    "gan_mlp_minimax": MLP_8 + ["loss.type=minimax", "train.total_kimg=108", "train.batch_size=64", "optim.g.lr=0.001", "optim.d.lr=0.001"],
    "dcgan": DCGAN_16 + ["loss.type=nonsaturating", "train.total_kimg=72", "train.batch_size=64"],
    "lsgan": DCGAN_16 + ["loss.type=lsgan", "train.total_kimg=84", "train.batch_size=64"],
    "hinge": DCGAN_16 + ["loss.type=hinge", "train.total_kimg=84", "train.batch_size=64"],
    "wgan_clip": DCGAN_16 + ["loss.type=wgan", "loss.clip_d_weights=0.01", "train.d_steps=5", "optim.g.type=rmsprop", "optim.d.type=rmsprop", "optim.g.lr=0.0005", "optim.d.lr=0.0005", "train.total_kimg=24", "train.batch_size=64"],
    "wgan_gp": DCGAN_16 + ["loss.type=wgan", "loss.gp_weight=10", "train.d_steps=5", "optim.g.lr=0.0003", "optim.d.lr=0.0003", "optim.g.betas=[0.0,0.9]", "optim.d.betas=[0.0,0.9]", "train.total_kimg=24", "train.batch_size=64"],
    "r1_lazy": DCGAN_16 + ["loss.type=nonsaturating", "loss.r1_gamma=1", "loss.r1_interval=4", "train.total_kimg=60", "train.batch_size=64"],
    "began": ["data.resolution=16", "model.z_dim=32", "model.g.arch=began", "model.d.arch=began", "model.g.width=16", "model.d.width=16", "model.g.h_dim=32", "model.d.h_dim=32", "loss.type=began", "loss.began_lambda_k=0.01", "optim.g.lr=0.0005", "optim.d.lr=0.0005", "train.total_kimg=3", "train.batch_size=32"],
    "sngan_hinge": ["data.resolution=32", "model.z_dim=32", "model.g.arch=sngan", "model.d.arch=sngan", "model.g.width=4", "model.d.width=8", "model.d.spectral_norm=true", "model.d.norm=none", "loss.type=hinge", "optim.g.betas=[0.0,0.9]", "optim.d.betas=[0.0,0.9]", "optim.g.lr=0.002", "optim.d.lr=0.002", "train.total_kimg=9", "train.batch_size=64"],
    "cgan_mlp_concat": MLP_8 + ["model.num_classes=10", "model.g.cond=concat", "model.d.cond=concat", "train.total_kimg=140", "train.batch_size=64", "optim.g.lr=0.0005", "optim.d.lr=0.0005"],
    "diffaugment": DCGAN_16 + ["loss.type=nonsaturating", "augment.policy=translation,cutout", "train.total_kimg=96", "train.batch_size=64", "optim.g.lr=0.0004", "optim.d.lr=0.0004"],
}


# BEGAN's samples collapse in any run this short: at 3 kimg (below) mostly 4s and 5s (6 classes
# present, KL 1.02), by 6-15 kimg mostly 1s, with began_gamma 0.5-1.0, began_lambda_k 0.001-0.01,
# lr 1e-4-1e-3, batch 32/64, h_dim 64 or width 32 alike. Its distance falls (19.1 -> 5.2), so the
# distance-only test passed it. Strict: a BEGAN that learns fails this mark, to be taken off.
BEGAN_COLLAPSES = pytest.mark.xfail(raises=AssertionError, strict=True, reason="BEGAN mode-collapses in a short CPU run (coverage: 6/10 classes, KL 1.02)")


# With the coverage check the runs are long enough to cover every digit (20-70 s each): the
# default run keeps an unconditional and a conditional one (the default run's 15-minute budget);
# the rest, cgan_mlp_concat and wgan_clip among them, run with `pytest -m slow`.
DEFAULT_RUN = {"gan_mlp_nonsaturating", "acgan"}


def _marks(name: str) -> list:
    return ([BEGAN_COLLAPSES] if name == "began" else []) + ([] if name in DEFAULT_RUN else [pytest.mark.slow])


@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name)) for name in FAMILIES])
def test_family_learns_digits(tmp_path, name):
    before, after, trainer = train_and_measure(tmp_path, FAMILIES[name])
    ok, why = learned(before, after, coverage(generated(trainer, 600)))
    print(f"{name}: {why}")
    assert ok, f"{name}: {why}"


CONDITIONAL = {
    "dcgan_projection": DCGAN_16 + ["model.num_classes=10", "model.d.cond=projection", "train.total_kimg=50", "train.batch_size=64"],
    "acgan": DCGAN_16 + ["model.num_classes=10", "model.d.cond=acgan", "train.total_kimg=30", "train.batch_size=64"],
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name)) for name in CONDITIONAL])
def test_conditional_model_draws_the_requested_class(tmp_path, name):
    before, after, trainer = train_and_measure(tmp_path, CONDITIONAL[name])
    ok, why = learned(before, after, coverage(generated(trainer, 600)))  # labels drawn uniformly
    assert ok, f"{name}: {why}"
    hits = 0
    for digit in range(10):
        x = generated(trainer, 30, class_idx=digit)
        hits += int((digit_classifier().predict(pixels8(x)) == digit).sum())
    accuracy = hits / 300
    print(f"{name}: {why}; requested class recognised {accuracy:.0%}")
    assert accuracy > 0.6, f"{name}: only {accuracy:.0%} of samples show the requested digit (chance: 10%)"


# ---- the criterion catches a collapsed G (cheap: no training; ~8 s in all, most of it building 14 trainers)


class CopyG(torch.nn.Module):
    """A deliberately collapsed G: it ignores z except to pick one of `images` (uniformly, by the
    quantile of z's first coordinate) and draws that real training image exactly."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.register_buffer("images", images)

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        pick = (torch.special.ndtr(z[:, 0]) * len(self.images)).long().clamp(max=len(self.images) - 1)
        return self.images[pick]


def collapsed_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Which real digits each collapsed G copies."""
    return {
        "one_image": np.array([0]),  # every z -> the first digit (a 0)
        "two_images": np.array([0, 1]),  # the first two digits (a 0 and a 1), half the z each
        "five_classes": np.flatnonzero(labels < 5)[:600],  # 600 distinct real 0-4s: variety, but half the modes dropped
    }


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> dict[str, tuple]:
    """name -> (trainer, distance at initialisation) of every family and conditional model (~0.3 s each)."""
    out = {}
    for name, overrides in {**FAMILIES, **CONDITIONAL}.items():
        trainer = make_trainer(tmp_path_factory.mktemp(name), overrides)
        out[name] = (trainer, distance(trainer, generated(trainer, 600)))
    return out


def copy_samples(trainer, indices: np.ndarray, n: int = 600) -> torch.Tensor:
    real = real_images(Path(trainer.cfg.data.path), trainer.cfg.data.resolution)
    x, _ = sampling.generate(CopyG(real[torch.from_numpy(indices)]), z_dim=trainer.cfg.model.z_dim, num_classes=0, indices=range(n), seed=99)
    return x


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # sqrtm of one image's zero covariance
@pytest.mark.parametrize("kind", ["one_image", "two_images", "five_classes"])
def test_collapsed_generator_fails_the_criterion(untrained, kind):
    for name, (trainer, before) in untrained.items():
        labels = np.load(trainer.cfg.data.path)["y"]
        x = copy_samples(trainer, collapsed_indices(labels)[kind])
        after, cov = distance(trainer, x), coverage(x)
        # the old check alone passes it (one image: 3.29, two: 2.25, five classes: 0.22; at
        # initialisation 16.4-20.1): the distance does not see the collapse ...
        assert after < 0.5 * before, f"{name}/{kind}: distance {before:.3f} -> {after:.3f}"
        # ... the coverage does
        ok, why = learned(before, after, cov)
        assert not ok, f"{name}/{kind}: a collapsed G passes: {why}"
        # both parts of it: one class: KL log(10) = 2.30, two: log(5) = 1.61, five: log(2) = 0.69
        assert cov.present < NUM_DIGITS and cov.kl > MAX_KL, f"{name}/{kind}: {cov}"
    print(f"{kind}: {why}")


def test_real_digits_pass_the_criterion(untrained):
    for name, (trainer, before) in untrained.items():
        real = real_images(Path(trainer.cfg.data.path), trainer.cfg.data.resolution)
        x = real[600:1200]  # not the 600 the distance compares with
        ok, why = learned(before, distance(trainer, x), coverage(x))
        assert ok, f"{name}: real digits fail: {why}"
    print(f"real digits: {why}")

