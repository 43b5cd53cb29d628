"""Every classic GAN family learns the digits in a short CPU run (issue 6).

Each run is at most ~60 s on a 2-core CPU; the distance between generated and real digits
must fall clearly (to less than half) below its value at initialisation.
"""
import pytest

from tests.learning.harness import train_and_measure

MLP_8 = ["data.resolution=8", "model.z_dim=32", "model.g.arch=mlp", "model.d.arch=mlp", "model.g.width=256", "model.d.width=256"]
DCGAN_16 = ["data.resolution=16", "model.z_dim=32", "model.g.arch=dcgan", "model.d.arch=dcgan", "model.g.width=16", "model.d.width=16"]

FAMILIES = {
    "gan_mlp_nonsaturating": MLP_8 + ["loss.type=nonsaturating", "train.total_kimg=12", "train.batch_size=64", "optim.g.lr=0.0005", "optim.d.lr=0.0005"],
    "gan_mlp_minimax": MLP_8 + ["loss.type=minimax", "train.total_kimg=12", "train.batch_size=64", "optim.g.lr=0.0005", "optim.d.lr=0.0005"],
    "dcgan": DCGAN_16 + ["loss.type=nonsaturating", "train.total_kimg=6", "train.batch_size=64"],
    "lsgan": DCGAN_16 + ["loss.type=lsgan", "train.total_kimg=6", "train.batch_size=64"],
    "hinge": DCGAN_16 + ["loss.type=hinge", "train.total_kimg=6", "train.batch_size=64"],
    "wgan_clip": DCGAN_16 + ["loss.type=wgan", "loss.clip_d_weights=0.01", "train.d_steps=5", "optim.g.type=rmsprop", "optim.d.type=rmsprop", "optim.g.lr=0.0005", "optim.d.lr=0.0005", "train.total_kimg=3", "train.batch_size=64"],
    "wgan_gp": DCGAN_16 + ["loss.type=wgan", "loss.gp_weight=10", "train.d_steps=5", "optim.g.lr=0.0003", "optim.d.lr=0.0003", "optim.g.betas=[0.0,0.9]", "optim.d.betas=[0.0,0.9]", "train.total_kimg=3", "train.batch_size=64"],
    "r1_lazy": DCGAN_16 + ["loss.type=nonsaturating", "loss.r1_gamma=1", "loss.r1_interval=4", "train.total_kimg=6", "train.batch_size=64"],
    "began": ["data.resolution=16", "model.z_dim=32", "model.g.arch=began", "model.d.arch=began", "model.g.width=16", "model.d.width=16", "model.g.h_dim=32", "model.d.h_dim=32", "loss.type=began", "loss.began_lambda_k=0.01", "optim.g.lr=0.0005", "optim.d.lr=0.0005", "train.total_kimg=3", "train.batch_size=32"],
    "sngan_hinge": ["data.resolution=32", "model.z_dim=32", "model.g.arch=sngan", "model.d.arch=sngan", "model.g.width=4", "model.d.width=8", "model.d.spectral_norm=true", "model.d.norm=none", "loss.type=hinge", "optim.g.betas=[0.0,0.9]", "optim.d.betas=[0.0,0.9]", "train.total_kimg=1.5", "train.batch_size=32"],
    "cgan_mlp_concat": MLP_8 + ["model.num_classes=10", "model.g.cond=concat", "model.d.cond=concat", "train.total_kimg=20", "train.batch_size=64", "optim.g.lr=0.0005", "optim.d.lr=0.0005"],
    "diffaugment": DCGAN_16 + ["loss.type=nonsaturating", "augment.policy=translation,cutout", "train.total_kimg=6", "train.batch_size=64"],
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_learns_digits(tmp_path, name):
    before, after, _ = train_and_measure(tmp_path, FAMILIES[name])
    print(f"{name}: distance {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, f"{name}: distance {before:.3f} -> {after:.3f}"


CONDITIONAL = {
    "dcgan_projection": DCGAN_16 + ["model.num_classes=10", "model.d.cond=projection", "train.total_kimg=20", "train.batch_size=64"],
    "acgan": DCGAN_16 + ["model.num_classes=10", "model.d.cond=acgan", "train.total_kimg=12", "train.batch_size=64"],
}


@pytest.fixture(scope="module")
def digit_classifier():
    """A classifier of 8x8 digits trained here on the real data (about 97% accurate)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x = digits.images.reshape(len(digits.images), -1) / 16.0
    return LogisticRegression(max_iter=2000).fit(x, digits.target)


@pytest.mark.parametrize("name", list(CONDITIONAL))
def test_conditional_model_draws_the_requested_class(tmp_path, name, digit_classifier):
    import torch.nn.functional as F

    from tests.learning.harness import generated

    before, after, trainer = train_and_measure(tmp_path, CONDITIONAL[name])
    assert after < 0.5 * before, f"{name}: distance {before:.3f} -> {after:.3f}"
    hits = 0
    for digit in range(10):
        x = generated(trainer, 30, class_idx=digit)
        x8 = F.adaptive_avg_pool2d(x, 8) if x.shape[-1] != 8 else x  # [30, 1, 8, 8]
        pixels = ((x8 + 1) / 2).clamp(0, 1).flatten(1).numpy()
        hits += int((digit_classifier.predict(pixels) == digit).sum())
    accuracy = hits / 300
    print(f"{name}: distance {before:.3f} -> {after:.3f}, requested class recognised {accuracy:.0%}")
    assert accuracy > 0.6, f"{name}: only {accuracy:.0%} of samples show the requested digit (chance: 10%)"
