"""Reference statistics files: Inception feature mean and covariance of a data set.

The layout is the one pytorch-fid, TTUR and StudioGAN write and read: an `.npz` with `mu`
(float64 [2048]) and `sigma` (float64 [2048, 2048], covariance with the n - 1 denominator).
So their files work here and ours work there. bigtrain adds, as extra keys other tools ignore:
    meta      a JSON string: the protocol record (bigtrain.eval.protocol) of the data set
    features  float32 [N, 2048] pool features, only with `--features` (needed for KID)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import bigtrain
from bigtrain.errors import DataError
from bigtrain.eval.images import ImageSet
from bigtrain.eval.metrics import fid_stats, new_fid
from bigtrain.eval.protocol import side, unknown_side
from bigtrain.eval.provenance import code_version, data_sha256


@dataclass
class RefStats:
    path: str  # where it was read from or will be written to
    mu: np.ndarray  # float64 [D]
    sigma: np.ndarray  # float64 [D, D]
    features: Optional[np.ndarray]  # float32 [N, D], or None
    meta: dict  # protocol side record

    @property
    def num_images(self) -> Optional[int]:
        return self.meta.get("num_images")


def is_stats_file(path: str | Path) -> bool:
    """True for an .npz holding `mu` and `sigma` (ours or another tool's)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            return "mu" in f.files and "sigma" in f.files
    except Exception:  # unreadable: let the data reader report it
        return False


def load_ref_stats(path: str | Path) -> RefStats:
    """Read and check a statistics file; DataError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"reference statistics not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zip, header and pickle errors: not a usable npz
        raise DataError(f"{path}: cannot read statistics npz ({exc})") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise DataError(f"{path}: not a statistics file (needs 'mu' and 'sigma'; found {', '.join(arrays) or 'none'})")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise DataError(f"{path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} are not a mean and its covariance")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: 'mu' or 'sigma' holds NaN or inf")
    features = arrays.get("features")
    if features is not None and (features.ndim != 2 or features.shape[1] != len(mu)):
        raise DataError(f"{path}: 'features' {features.shape} does not match 'mu' {mu.shape}")
    meta = unknown_side(str(path))
    if "meta" in arrays:
        try:
            meta.update(json.loads(str(arrays["meta"])))
        except json.JSONDecodeError:
            raise DataError(f"{path}: 'meta' is not valid JSON") from None
        meta["source_stats"] = str(path)
    return RefStats(str(path), mu, sigma, features, meta)


def save_ref_stats(stats: RefStats, out: str | Path) -> None:
    """Write atomically; an existing file is never overwritten."""
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "meta": np.array(json.dumps(stats.meta))}
    if stats.features is not None:
        arrays["features"] = stats.features.astype(np.float32)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


@torch.no_grad()
def compute_ref_stats(
    images: ImageSet,
    inception: torch.nn.Module,
    *,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    max_images: Optional[int] = None,
    keep_features: bool = False,
    split: Optional[str] = None,
) -> RefStats:
    """mu and sigma of the pool features of every image of `images` (one pass)."""
    fid = new_fid(inception.num_features, device)
    kept = []
    for batch in images.batches(batch_size, max_images):
        pool, _ = inception(batch.to(device))
        fid.update(pool, real=True)
        if keep_features:
            kept.append(pool.float().cpu())
    mu, sigma, n = fid_stats(fid, real=True)
    meta = side(
        images.path,
        images.kind,
        inception.protocol(),
        num_images=n,
        image_resolution=images.image_resolution,
        resize_filter=images.resize_filter,
        split=split,
        xflip=False,  # bigtrain reads each image once, never mirrored
        content_sha256=data_sha256(images.path),
        code_version=code_version(),
        made_by=f"bigtrain {bigtrain.__version__}",
    )
    features = torch.cat(kept).numpy() if keep_features else None
    return RefStats("", mu, sigma, features, meta)
