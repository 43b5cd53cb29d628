"""Improved precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et
al. 2020), on the same Inception pool features as FID (as StudioGAN reports them).

Each real (fake) sample gets a radius: the distance to its k-th nearest neighbour among the
other real (fake) samples. Then, with d(f, r) the distance of fake f to real r:
    precision  fraction of fakes inside some real's k_pr ball:   any_r d(f, r) < radius_r
    recall     fraction of reals inside some fake's k_pr ball:   any_f d(f, r) < radius_f
    density    mean over fakes of #{r: d(f, r) < radius_r} / k_dc   (k_dc radii)
    coverage   fraction of reals whose nearest fake is inside their own k_dc ball
This is the `prdc` package's definition (its `compute_prdc` with nearest_k = k; the radius is the
(k + 1)-th smallest distance of a row that includes the sample itself), with one k for precision
and recall (the paper's 3) and another for density and coverage (the paper's 5).

Exact radii without an N x N matrix (squared distances in float64; for float32 features, as
Inception's are, each distance is then rounded to float32 as scikit-learn does for `prdc`):
distances are computed a block of rows at a time (`block_rows` rows against all columns, sized
from `max_block_bytes`), and every statistic above is reduced per block (a running any / count /
min over the blocks), so peak memory is O(block_rows x N), not O(N^2): at 50k x 50k a block is
0.13 GB, where the matrix would be 20 GB (10 GB in float32). The float64 copies of the features
(0.8 GB each at 50k x 2048) come on top.

`bigtrain.eval.metrics.PRDC` is the torchmetrics wrapper: every rank adds its share of fake
features, and compute gathers them (torchmetrics' cat reduction) and scores them against the
full reference features each rank holds, so every rank returns the same numbers, as FID does.
This module imports no torchmetrics, so the CLI's parser can read the defaults cheaply.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

PR_K = 3  # Kynkaanniemi et al. 2019
DC_K = 5  # Naeem et al. 2020
NAMES = ("precision", "recall", "density", "coverage")
MAX_BLOCK_BYTES = 128 * 2**20  # one float64 block of distances (the peak holds about two)


def block_rows(num_columns: int, max_block_bytes: int = MAX_BLOCK_BYTES) -> int:
    """Rows per distance block so that a float64 block [rows, num_columns] fits the budget."""
    return max(1, max_block_bytes // (8 * max(num_columns, 1)))


def _distances(a: Tensor, b: Tensor, b_sq: Tensor, dtype: torch.dtype) -> Tensor:
    """Euclidean distances [len(a), len(b)]: |a|^2 + |b|^2 - 2 a.b in float64 (a, b float64), in
    place in the one block the product allocates, then in `dtype`: for float32 features the
    squared distance is rounded to float32 before its root, as scikit-learn computes distances of
    float32 arrays for the prdc package, so that near-ties compare alike."""
    d2 = (a @ b.T).mul_(-2.0)
    d2.add_(torch.einsum("ij,ij->i", a, a)[:, None]).add_(b_sq[None, :])
    return d2.to(dtype).clamp_(min=0.0).sqrt_()


def _precision_of(*features: Tensor) -> torch.dtype:
    """float32 when every feature set is float32 (Inception's), float64 otherwise."""
    return torch.float32 if all(f.dtype == torch.float32 for f in features) else torch.float64


def knn_radii(
    features: Tensor, ks: tuple[int, ...], max_block_bytes: int = MAX_BLOCK_BYTES, dtype: Optional[torch.dtype] = None
) -> dict[int, Tensor]:
    """{k: distance of every sample to its k-th nearest other sample} [N] each, in `dtype`
    (default: as `_precision_of` the features says)."""
    dtype = dtype or _precision_of(features)
    x = features.double()
    if len(x) <= max(ks):
        raise ValueError(f"k-NN radii with k = {max(ks)} need more than {max(ks)} samples, got {len(x)}")
    sq = torch.einsum("ij,ij->i", x, x)
    rows = block_rows(len(x), max_block_bytes)
    radii: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, len(x), rows):
        block = _distances(x[start : start + rows], x, sq, dtype)  # [rows, N]
        nearest = block.topk(max(ks) + 1, dim=1, largest=False).values  # [rows, k+1], itself first
        for k in ks:
            radii[k].append(nearest[:, k])
        del block  # before the next block is made: one block alive at a time
    return {k: torch.cat(v) for k, v in radii.items()}


def compute_prdc(
    real: Tensor, fake: Tensor, *, pr_k: int = PR_K, dc_k: int = DC_K, max_block_bytes: int = MAX_BLOCK_BYTES
) -> dict[str, float]:
    """Precision, recall (k = pr_k), density and coverage (k = dc_k) of fake features [M, D]
    against real features [N, D], computed in float64 blocks (see the module docstring)."""
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] with one D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    ks = tuple(sorted({pr_k, dc_k}))
    dtype = _precision_of(real, fake)
    r, f = real.double(), fake.double()  # one float64 copy each, shared with knn_radii
    real_r, fake_r = knn_radii(r, ks, max_block_bytes, dtype), knn_radii(f, ks, max_block_bytes, dtype)
    real_sq = torch.einsum("ij,ij->i", r, r)
    precise = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    density_hits = torch.zeros(len(f), dtype=torch.float64, device=f.device)
    recalled = torch.zeros(len(r), dtype=torch.bool, device=r.device)
    nearest_fake = torch.full((len(r),), float("inf"), dtype=dtype, device=r.device)
    rows = block_rows(len(r), max_block_bytes)
    for start in range(0, len(f), rows):
        d = _distances(f[start : start + rows], r, real_sq, dtype)  # [rows of fakes, N reals]
        precise[start : start + rows] = (d < real_r[pr_k][None, :]).any(1)
        density_hits[start : start + rows] = (d < real_r[dc_k][None, :]).sum(1)
        recalled |= (d < fake_r[pr_k][start : start + rows, None]).any(0)
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
        del d  # before the next block is made: one block alive at a time
    return {
        "precision": precise.double().mean().item(),
        "recall": recalled.double().mean().item(),
        "density": (density_hits.mean() / dc_k).item(),
        "coverage": (nearest_fake < real_r[dc_k]).double().mean().item(),
    }
