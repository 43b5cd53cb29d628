"""Intra-class FID (StudioGAN's `-ifid`): the FID of each class's samples against the reference
statistics of that class, and their mean, for class-conditional generators.

Per-class reference statistics are a folder that `bigtrain ref-stats DATA OUT_DIR --per-class`
writes in one pass over labelled data:
    all.npz           the statistics of every image (an ordinary reference file, for FID/KID/PRDC)
    class-0000.npz    the statistics of class 0's images, ... one ordinary file per class
Each file is a standard statistics file (bigtrain.eval.ref_stats), so `bigtrain fid SAMPLES
OUT_DIR/class-0003.npz` scores one class by hand, and intra-FID is the mean of those numbers.
Memory: the pass holds one 2048 x 2048 float64 sum per class (32 MB each: 320 MB for 10 classes,
32 GB for ImageNet's 1000).

Evaluation: class c gets `num // C` samples, sample i drawn from (seed, i) with class c, as
`bigtrain sample --class c --num n --seed s` draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

import bigtrain
from bigtrain.data.npz import load_npz
from bigtrain.errors import BigtrainError, DataError
from bigtrain.eval.images import ImageSet
from bigtrain.eval.metrics import fid_stats, new_fid
from bigtrain.eval.protocol import side
from bigtrain.eval.ref_stats import RefStats, load_ref_stats, save_ref_stats

ALL_FILE = "all.npz"
CLASS_FILE = "class-{:04d}.npz"


def is_class_stats_dir(path: str | Path) -> bool:
    """True for a folder written by `ref-stats --per-class`."""
    return Path(path).is_dir() and (Path(path) / CLASS_FILE.format(0)).is_file()


def class_stats_paths(folder: str | Path, num_classes: int) -> list[Path]:
    """The per-class files of `folder` for classes 0 .. num_classes - 1; DataError naming what is
    missing or extra."""
    folder = Path(folder)
    if not is_class_stats_dir(folder):
        raise DataError(
            f"{folder}: intra_fid needs per-class reference statistics: make them with "
            "`bigtrain ref-stats DATA OUT_DIR --per-class` and pass OUT_DIR as --ref-stats"
        )
    found = sorted(folder.glob("class-*.npz"))
    expected = [folder / CLASS_FILE.format(c) for c in range(num_classes)]
    if found != expected:
        raise DataError(
            f"{folder}: holds statistics of {len(found)} classes ({found[0].name} .. {found[-1].name}); "
            f"the generator has {num_classes} classes"
        )
    return expected


def reference_file(path: str | Path) -> Path:
    """The whole-set statistics of a reference: the file itself, or a per-class folder's all.npz."""
    return Path(path) / ALL_FILE if is_class_stats_dir(path) else Path(path)


def samples_per_class(num: int, num_classes: int) -> int:
    """`num` samples split evenly over the classes; BigtrainError when a class would get < 2."""
    n = num // num_classes
    if n < 2:
        raise BigtrainError(f"intra_fid: --num {num} gives {n} samples per class for {num_classes} classes; need >= 2")
    return n


def intra_fid(fid_of_class: Callable[[int, RefStats], dict], folder: str | Path, num_classes: int) -> dict:
    """{"intra_fid": mean, "intra_fid_per_class": [FID of class c]} and the first class's result
    (its protocol) as "first"; `fid_of_class(c, reference)` evaluates class c (collective)."""
    values, first = [], None
    for c, path in enumerate(class_stats_paths(folder, num_classes)):
        result = fid_of_class(c, load_ref_stats(path))
        first = first or result
        values.append(result["fid"])
    return {"intra_fid": float(np.mean(values)), "intra_fid_per_class": values, "first": first}


@torch.no_grad()
def compute_class_ref_stats(
    images: ImageSet,
    inception: torch.nn.Module,
    *,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    max_images: Optional[int] = None,
    keep_features: bool = False,
    split: Optional[str] = None,
) -> tuple[RefStats, list[RefStats]]:
    """Statistics of every image and of each class, in one pass; labels from the npz's `y`."""
    if images.kind != "npz":
        raise DataError(f"{images.path}: --per-class reads labels from an .npz with 'y'; this is a {images.kind}")
    _, labels = load_npz(images.path)
    if labels is None:
        raise DataError(f"{images.path}: --per-class needs labels, and this npz has no 'y'")
    labels = labels.long()
    if labels.min() < 0:
        raise DataError(f"{images.path}: 'y' holds negative labels")
    num_classes = int(labels.max()) + 1
    every = new_fid(inception.num_features, device)
    per_class = [new_fid(inception.num_features, device) for _ in range(num_classes)]
    kept, seen = [], 0
    for batch in images.batches(batch_size, max_images):
        pool, _ = inception(batch.to(device))
        y = labels[seen : seen + len(batch)].to(pool.device)
        seen += len(batch)
        every.update(pool, real=True)
        for c in y.unique().tolist():
            per_class[c].update(pool[y == c], real=True)
        if keep_features:
            kept.append(pool.float().cpu())
    empty = [c for c, fid in enumerate(per_class) if int(fid.real_features_num_samples) < 2]
    if empty:
        raise DataError(f"{images.path}: classes {empty[:5]} have fewer than 2 images (of {seen} read)")

    def stats(fid, **fields) -> RefStats:
        mu, sigma, n = fid_stats(fid, real=True)
        meta = side(
            images.path, images.kind, inception.protocol(), num_images=n, image_resolution=images.image_resolution,
            resize_filter=images.resize_filter, split=split, made_by=f"bigtrain {bigtrain.__version__}", **fields,
        )  # fmt: skip
        return RefStats("", mu, sigma, None, meta)

    whole = stats(every, classes=num_classes)
    if keep_features:
        whole.features = torch.cat(kept).numpy()
    return whole, [stats(fid, class_idx=c) for c, fid in enumerate(per_class)]


def save_class_ref_stats(whole: RefStats, classes: list[RefStats], out: str | Path) -> None:
    """Write the folder (all.npz + one file per class); refuses a folder that is not empty."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty folder; refusing to overwrite it")
    save_ref_stats(whole, out / ALL_FILE)
    for c, stats in enumerate(classes):
        save_ref_stats(stats, out / CLASS_FILE.format(c))
