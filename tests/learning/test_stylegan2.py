"""StyleGAN2-ADA learns the digits (issue 25), graded by the learning harness of tests/learning
(feature distance under half of its value at initialisation, all 10 digits present, KL of the class
histogram below 0.35; a collapsed or identity G fails it, tests/learning/test_families.py).

configs/stylegan2_digits.yaml made smaller for a CPU (SMALL: 16x16 digits, 64 channels, w 32),
conditional, all 1,797 digits, 6 kimg. Measured (2026-12-07, 2 quiet cores, 73 s of training):
distance 16.76 -> 1.30, 10/10 classes, KL 0.124 (smallest class 3%); along a run of the same
config, 8/10 classes at 2 kimg, KL 0.38 at 3 kimg, the criterion met from 4 kimg on.

On few images ADA beats noaug (the paper's claim; test_ada_beats_noaug_on_50_digits, its
measurements in its docstring). Measured first on 200 digits: with SMALL's D, 20 kimg never made D
overfit (E[sign(D(real))] about 0.5, p stayed under 0.004) and the modes ended alike (distance to
the 1,597 unseen digits 0.360 with ADA, 0.343 without); with 4x D's channels and
stylegan2.ada_kimg=20, 12 kimg: ADA 1.728 / 1.281 / 0.648 / 0.437 at 3 / 6 / 9 / 12 kimg, noaug
1.358 / 1.324 / 0.819 / 0.430: no consistent win at 200 digits in a CPU-sized run, so the test
uses 50.
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


ADA_RUN = [*SMALL, "model.d.channel_base=4096", "model.d.channel_max=256", "stylegan2.ada_kimg=10",
           "train.total_kimg=12", "checkpoint.every_kimg=1", "checkpoint.keep_last=100", "log.every_kimg=1",
           "log.samples_every_kimg=1000", "log.progress_bar=false"]
GRADED_KIMG = (8, 9, 10, 11, 12)  # the checkpoints whose distances are averaged


@pytest.mark.slow
@pytest.mark.timeout(5400)  # the two runs in parallel: ~25-45 min on 2 cores
def test_ada_beats_noaug_on_50_digits(tmp_path: Path):
    """Issue 25: on few images ADA beats noaug (Karras et al. 2020), measured on the harness's
    distance to the digits the runs never saw. 50 digits (the first 50 of a fixed permutation of
    scikit-learn's 1,797), SMALL's G with 4x D's channels (so D overfits early), ada_kimg 10 (p
    adapts in a CPU-sized run; the reference's 500 is for Mimg runs), 12 kimg a mode through
    `bigtrain train`, both modes at once (one thread each); graded: the mean distance of G_ema's
    600 samples to 1,747 unseen digits over the checkpoints at 8-12 kimg, and ADA's p > 0.

    Measured (2026-12-07, the same settings run to 16 kimg, in-process, on the shared machine):
    distance at 8 / 9 / 10 / 11 / 12 kimg ADA 1.254 / 0.899 / 0.647 / 0.556 / 0.486 (mean 0.768,
    p 0.05-0.08), noaug 1.176 / 1.357 / 0.991 / 0.704 / 0.594 (mean 0.964); ADA ahead at every
    checkpoint from 9 to 16 kimg (16 kimg: 0.464 against 0.514). This test's own run (2026-12-07,
    through the CLI, 1,551 s on the 2-core machine shared with a CI run): ADA 1.258 / 0.913 /
    0.683 / 0.604 / 0.555 (mean 0.803, p 0.04-0.09), noaug 1.297 / 1.247 / 0.859 / 0.665 / 0.636
    (mean 0.941): ADA ahead at all five. (The two runs' numbers differ: the calibration trained
    in-process after drawing samples from G, the test through the CLI; not looked into further.) One seed, margins of 0.14-0.2: the test asserts only the
    order of the means."""
    import os
    import subprocess
    import sys

    import numpy as np

    full = digits(tmp_path)
    data = np.load(full)
    order = np.random.default_rng(0).permutation(len(data["y"]))
    few, rest = order[:50], order[50:]
    subset = tmp_path / "few.npz"
    np.savez(subset, x=data["x"][few], y=data["y"][few])
    unseen = real_images(full, 16)[torch.from_numpy(rest)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs = {}
    for mode in ("ada", "noaug"):
        over = [f"run.out_dir={tmp_path / 'runs'}", f"run.name={mode}", f"data.path={subset}",
                f"stylegan2.augment={mode}", *ADA_RUN]
        log = open(tmp_path / f"{mode}.log", "w")
        runs[mode] = subprocess.Popen([sys.executable, "-m", "bigtrain", "train", str(CONFIG), *over], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=REPO)
    for mode, proc in runs.items():
        assert proc.wait() == 0, (tmp_path / f"{mode}.log").read_text()[-3000:]
    feats = Features()
    reference = feats(unseen)
    grader = Trainer(load_config(CONFIG, [f"run.out_dir={tmp_path / 'grader'}", f"data.path={subset}", *ADA_RUN]))
    means, ps = {}, {}
    for mode in runs:
        distances = []
        for step in sorted((tmp_path / "runs" / mode / "checkpoints").glob("step-*")):
            state = torch.load(step / "trainer.pt", map_location="cpu", weights_only=False)
            if round(state["counters"]["nimg"] / 1000) in GRADED_KIMG:
                grader.emas["G"].load_state_dict(state["G_ema"])
                distances.append(frechet(reference, feats(generated(grader, 600))))
                ps.setdefault(mode, []).append(float(state["recipe"]["p"]))
        assert len(distances) == len(GRADED_KIMG), (mode, len(distances))
        means[mode] = sum(distances) / len(distances)
        print(f"{mode}: distances {[round(d, 3) for d in distances]}, mean {means[mode]:.3f}, p {ps[mode]}")
    assert max(ps["noaug"]) == 0.0 and max(ps["ada"]) > 0.0
    assert means["ada"] < means["noaug"], means
