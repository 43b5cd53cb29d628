"""Shared fixtures: tiny data sets and configs written into a temp folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_images_npz(path: Path, n: int = 64, res: int = 8, channels: int = 1, classes: int = 4, seed: int = 0, layout: str = "nhwc") -> Path:
    """Random uint8 images with a class-dependent mean, so labels mean something."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 128, size=(n, res, res, channels)) + (y * (127 // max(classes - 1, 1)))[:, None, None, None]
    x = x.clip(0, 255).astype(np.uint8)
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    np.savez(path, x=x, y=y.astype(np.int64))
    return path


def tiny_config(tmp_path: Path, data_path: Path, **sections) -> dict:
    """A config for a run of a few seconds: mlp G/D on 8x8 images, logging every batch."""
    cfg = {
        "run": {"name": "tiny", "out_dir": str(tmp_path / "runs"), "seed": 1},
        "data": {"source": "npz", "path": str(data_path), "resolution": 8},
        "model": {"z_dim": 8, "num_classes": 0, "g": {"arch": "mlp", "width": 32}, "d": {"arch": "mlp", "width": 32}},
        "train": {"total_kimg": 0.128, "batch_size": 16},
        "ema": {"half_life_kimg": 0.05},
        "log": {"every_kimg": 0.016, "samples_every_kimg": 0.064, "progress_bar": False, "grid_rows": 2, "grid_cols": 4},
        "checkpoint": {"every_kimg": 0.064, "keep_last": 5},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m bigtrain ARGS` (optionally under a launcher) and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = (launcher or [sys.executable]) + ["-m", "bigtrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)


@pytest.fixture
def images_npz(tmp_path: Path) -> Path:
    return write_images_npz(tmp_path / "images.npz")


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A random-weights FID Inception file in the standard layout (no download in tests)."""
    import torch

    from bigtrain.eval.inception import InceptionV3

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(InceptionV3().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def sharp_weights(tmp_path_factory, weights):
    """The random Inception net with class logits that depend on the image: with random weights
    the pool features of every image are nearly the same vector, so every image gets the same
    class distribution and IS = 1 exactly. Here the logit weights are made orthogonal to that
    common vector and scaled up, so a wrong number can show."""
    import torch

    from bigtrain.eval.inception import InceptionV3

    net = InceptionV3()
    net.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        pool, _ = net.eval()(torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
        common = pool.mean(0) / pool.mean(0).norm()
        w = net.fc.weight
        w.sub_(torch.outer(w @ common, common)).mul_(1000)
    path = tmp_path_factory.mktemp("inception") / "sharp-inception.pth"
    torch.save(net.state_dict(), path)
    return path
