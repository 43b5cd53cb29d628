"""`bigtrain make-toy grid25 OUT.npz`: the 2-D grid of 25 Gaussians of VEEGAN / PacGAN; and
`bigtrain make-toy digits-translation OUT_DIR`: an image-to-image task with a known answer.

The modes are {-4, -2, 0, 2, 4}^2 with isotropic std 0.05, in the order of PacGAN's
`synthetic_data_experiments/2DGrid_GAN&PacGAN/config.py` (`itertools.product`, first
coordinate outermost). As in ALI's `GaussianMixtureDistribution.sample` (which PacGAN uses
with flat priors), each sample picks its mode independently and uniformly, so the modes are
equally likely but their counts vary binomially. PacGAN trains on 100,000 such samples.

The npz holds float32 `x` [N, 2] and no `y`, which bigtrain's npz source reads as unlabelled
vector data (bigtrain/data/npz.py).
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import numpy as np

from bigtrain.errors import BigtrainError

GRID25_MODES = np.array(list(itertools.product(range(-4, 5, 2), repeat=2)), dtype=np.float32)  # [25, 2]
GRID25_STD = 0.05
PACGAN_TRAIN_SIZE = 100_000  # "num_sample" of PacGAN's 2DGrid config
TOY_DATASETS = ("grid25", "digits-translation")
DIGITS_TEST = 297  # digits-translation: the last 297 of scikit-learn's 1,797 digits are held out


def grid25(n: int, seed: int, std: float = GRID25_STD) -> np.ndarray:
    """n samples [n, 2] float32 of the 25-Gaussian grid; a pure function of (n, seed, std)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(GRID25_MODES), size=n)
    noise = rng.standard_normal((n, 2))
    return (GRID25_MODES[labels] + std * noise).astype(np.float32)


def write_grid25_npz(path: str | Path, n: int, seed: int) -> Path:
    """Write grid25(n, seed) as `x` into an npz at `path`, via a temporary file and a rename.

    The rename is atomic on one file system, so a reader (or a crash) never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # A file object, not a name: np.savez would append ".npz" to a name without it.
        with open(tmp, "wb") as f:
            np.savez(f, x=grid25(n, seed))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_digits_translation(out_dir: str | Path) -> dict[str, Path]:
    """scikit-learn's digits (8x8, grey) as a translation task whose answer is known: domain B is
    domain A colour-inverted (b = 255 - a). Written into `out_dir` (missing or empty):
    - trainA.npz / trainB.npz: unpaired (A: the even-indexed training digits, B: the odd-indexed
      ones inverted, so no image of B is the inversion of an image of A); for CycleGAN;
    - testA.npz / testB.npz: the held-out digits and their inversions (aligned);
    - train_pairs.npz / test_pairs.npz: side-by-side A|B pairs [N, 8, 16, 1], for Pix2Pix.
    """
    from bigtrain.demo import write_digits_npz

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BigtrainError(f"make-toy: {out} exists and is not an empty folder; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    digits = write_digits_npz(out / ".digits.npz")
    x = np.load(digits)["x"]  # uint8 [1797, 8, 8, 1]
    digits.unlink()
    train, test = x[:-DIGITS_TEST], x[-DIGITS_TEST:]
    files = {
        "trainA": train[0::2],
        "trainB": 255 - train[1::2],
        "testA": test,
        "testB": 255 - test,
        "train_pairs": np.concatenate([train, 255 - train], axis=2),
        "test_pairs": np.concatenate([test, 255 - test], axis=2),
    }
    paths = {}
    for name, array in files.items():
        paths[name] = out / f"{name}.npz"
        with open(paths[name], "wb") as f:
            np.savez(f, x=array)
    return paths


def add_make_toy_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `bigtrain make-toy`."""
    parser.add_argument(
        "dataset",
        choices=TOY_DATASETS,
        help="grid25: 25 Gaussians on {-4,-2,0,2,4}^2, std 0.05 (VEEGAN / PacGAN); "
        "digits-translation: scikit-learn's digits -> their colour inversions (unpaired trainA/trainB, paired A|B, "
        "held-out tests)",
    )
    parser.add_argument(
        "out", help="output .npz file (grid25; must not exist) or folder (digits-translation; missing or empty)"
    )
    parser.add_argument(
        "--num",
        type=int,
        default=PACGAN_TRAIN_SIZE,
        help=f"number of samples (default {PACGAN_TRAIN_SIZE}, PacGAN's training-set size)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")


def run_make_toy(args: argparse.Namespace) -> int:
    """`bigtrain make-toy`: refuse an existing output, write the npz, print a summary. Exit code."""
    if args.dataset not in TOY_DATASETS:
        raise BigtrainError(f"make-toy: unknown data set {args.dataset!r} (choose from: {', '.join(TOY_DATASETS)})")
    if args.num <= 0:
        raise BigtrainError(f"make-toy: --num must be > 0, got {args.num}")
    out = Path(args.out)
    if args.dataset == "digits-translation":
        paths = write_digits_translation(out)
        print(f"wrote {', '.join(p.name for p in paths.values())} to {out}: domain B = domain A colour-inverted")
        return 0
    if out.exists():
        raise BigtrainError(f"make-toy: {out} already exists; remove it or choose another path")
    write_grid25_npz(out, args.num, args.seed)
    print(f"wrote {args.num} {args.dataset} samples (seed {args.seed}) to {out}: x float32 [{args.num}, 2]")
    return 0
