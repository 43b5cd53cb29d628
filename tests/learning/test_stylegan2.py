"""StyleGAN2-ADA learns the digits (issue 25), graded by the learning harness of tests/learning
(feature distance under half of its value at initialisation, all 10 digits present, KL of the class
histogram below 0.35; a collapsed or identity G fails it, tests/learning/test_families.py).

configs/stylegan2_digits.yaml made smaller for a CPU (SMALL: 16x16 digits, 64 channels, w 32),
conditional, all 1,797 digits, 6 kimg. Measured (2026-12-07, 2 quiet cores, 73 s of training):
distance 16.76 -> 1.30, 10/10 classes, KL 0.124 (smallest class 3%); along a run of the same
config, 8/10 classes at 2 kimg, KL 0.38 at 3 kimg, the criterion met from 4 kimg on.

Not here yet: the issue's "on 200 digits ADA beats noaug". Measured so far: with SMALL's D, 20 kimg
on 200 digits never made D overfit (E[sign(D(real))] about 0.5, p stayed under 0.004), and the two
modes ended alike (distance to the 1,597 unseen digits 0.360 with ADA, 0.343 without); with 4x D's
channels D overfits within 2 kimg (0.67-0.72). With that D and stylegan2.ada_kimg=20, 12 kimg (7-12
img/s a mode here): ADA's p rose to 0.077 and held E[sign] at 0.54-0.58 while noaug's sat at
0.62-0.68; distance to the unseen digits at 3 / 6 / 9 / 12 kimg: ADA 1.728 / 1.281 / 0.648 / 0.437,
noaug 1.358 / 1.324 / 0.819 / 0.430. Ahead at 6 and 9 kimg, level at 12: no consistent win at this
scale, so no test claims one (the paper's gap shows over hundreds of kimg).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from bigtrain.engine.loop import Trainer
from bigtrain.families import load_config
from tests.conftest import REPO
from tests.learning.harness import Features, coverage, digits, frechet, generated, learned, real_images

CONFIG = REPO / "configs" / "stylegan2_digits.yaml"
COMMON = ["log.progress_bar=false", "checkpoint.every_kimg=1000", "log.samples_every_kimg=1000", "log.every_kimg=2"]
SMALL = [
    "data.resolution=16",
    "model.z_dim=32",
    "model.g.w_dim=32",
    "model.g.channel_base=1024",
    "model.g.channel_max=64",
    "model.d.channel_base=1024",
    "model.d.channel_max=64",
    "ema.half_life_kimg=1",
]


def _distance(x: torch.Tensor, real: torch.Tensor) -> float:
    feats = Features()
    return frechet(feats(real), feats(x))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 1 minute of training on 2 quiet cores
def test_stylegan2_learns_every_digit(tmp_path: Path):
    data = digits(tmp_path)
    over = [f"run.out_dir={tmp_path / 'runs'}", "run.name=all", f"data.path={data}", *COMMON, *SMALL, "train.total_kimg=6"]
    trainer = Trainer(load_config(CONFIG, over))
    real = real_images(data, 16)[:600]
    before = _distance(generated(trainer, 600), real)
    start = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - start
    trainer.backend.close()
    x = generated(trainer, 600)
    ok, why = learned(before, _distance(x, real), coverage(x))
    print(f"stylegan2 digits: {why}, {seconds:.0f} s")
    assert ok, why
