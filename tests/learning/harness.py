"""Short real training runs on scikit-learn's digits, and a distance that says whether G learned.

The distance is the Frechet distance between Gaussian fits of features from a small conv net
with fixed random weights (plus 4x4 average-pooled pixels) of real and generated digits: at
initialisation G's noise is far from the digits; after learning it is much closer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from bigtrain.config import load_config
from bigtrain.demo import write_digits_npz
from bigtrain import sampling
from bigtrain.engine.loop import Trainer


def digits(tmp_path: Path) -> Path:
    return write_digits_npz(tmp_path / "digits.npz")


def real_images(path: Path, res: int) -> torch.Tensor:
    """The digits as floats in [-1, 1], [N, 1, res, res]."""
    x = torch.from_numpy(np.load(path)["x"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False) if res != 8 else x


class Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1234)
        self.w1 = torch.randn(16, 1, 3, 3, generator=gen) / 3
        self.w2 = torch.randn(32, 16, 3, 3, generator=gen) / 12

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(16, 16), mode="bilinear", align_corners=False)  # [N, 1, 16, 16]
        h = F.relu(F.conv2d(x, self.w1, stride=2, padding=1))
        h = F.relu(F.conv2d(h, self.w2, stride=2, padding=1))  # [N, 32, 4, 4]
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3)), F.avg_pool2d(x, 4).flatten(1)], dim=1).double()


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


def generated(trainer: Trainer, n: int, class_idx: int | None = None, seed: int = 99) -> torch.Tensor:
    G = trainer.emas["G"].module if "G" in trainer.emas else trainer.players["G"].net
    x, _ = sampling.generate(G, z_dim=trainer.cfg.model.z_dim, num_classes=trainer.cfg.model.num_classes, indices=range(n), seed=seed, class_idx=class_idx)
    return x


def train_and_measure(tmp_path: Path, overrides: list[str], n: int = 600) -> tuple[float, float, Trainer]:
    """(distance at initialisation, distance after training, trainer)."""
    data = digits(tmp_path)
    cfg = load_config(None, [f"run.out_dir={tmp_path / 'runs'}", f"data.path={data}", "log.progress_bar=false", "checkpoint.every_kimg=1000", "log.samples_every_kimg=1000", "log.every_kimg=5", *overrides])
    trainer = Trainer(cfg)
    feats = Features()
    real = feats(real_images(data, cfg.data.resolution)[:n] if cfg.data.resolution != 8 else real_images(data, 8)[:n])
    before = frechet(real, feats(generated(trainer, n)))
    trainer.train()
    after = frechet(real, feats(generated(trainer, n)))
    return before, after, trainer
