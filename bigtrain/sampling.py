"""Generating samples reproducibly: sample i depends only on (seed, i).

That makes distributed generation exact: rank r can produce indices r, r+W, r+2W, ... of N,
and the union over ranks equals what one process produces.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from bigtrain.seeding import generator


def truncate(z: torch.Tensor, gen: torch.Generator, truncation: float | None) -> torch.Tensor:
    """z with every value of magnitude above `truncation` redrawn from `gen` until none is (in place)."""
    if truncation is not None:
        out = z.abs() > truncation
        while out.any():
            z[out] = torch.randn(int(out.sum()), generator=gen)
            out = z.abs() > truncation
    return z


def latents(z_dim: int, indices: Sequence[int], seed: int, truncation: float | None = None) -> torch.Tensor:
    """z for each sample index, [N, z_dim] on CPU.

    With `truncation`, values whose magnitude exceeds it are redrawn (the truncation trick of
    BigGAN, Brock et al. 2019): psi trades variety for fidelity.
    """
    if truncation is not None and truncation <= 0:
        raise ValueError(f"truncation must be > 0, got {truncation}")
    rows = []
    for i in indices:
        gen = generator(seed, int(i))
        rows.append(truncate(torch.randn(z_dim, generator=gen), gen, truncation))
    return torch.stack(rows) if rows else torch.empty(0, z_dim)


def labels(num_classes: int, indices: Sequence[int], seed: int, class_idx: int | None = None) -> torch.Tensor | None:
    """Class label of each sample index (uniform over classes), or `class_idx` for all; None if unconditional."""
    if num_classes == 0:
        return None
    if class_idx is not None:
        if not 0 <= class_idx < num_classes:
            raise ValueError(f"class {class_idx} is out of range 0..{num_classes - 1}")
        return torch.full((len(indices),), class_idx, dtype=torch.int64)
    # a different stream from the latents' (seed, i): offset the seed's first part
    return torch.tensor(
        [int(torch.randint(num_classes, (1,), generator=generator(seed, int(i), 1))) for i in indices],
        dtype=torch.int64,
    )


@torch.no_grad()
def generate(
    G: nn.Module,
    *,
    z_dim: int,
    num_classes: int,
    indices: Sequence[int] | torch.Tensor,
    seed: int,
    truncation: float | None = None,
    class_idx: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples for `indices` from G (in eval mode): float images [N, C, H, W] in [-1, 1] on CPU
    (or vectors [N, D]) and their int64 labels (None when unconditional)."""
    indices = [int(i) for i in indices]
    z_all = latents(z_dim, indices, seed, truncation)
    y_all = labels(num_classes, indices, seed, class_idx)
    was_training = G.training
    G.eval()
    out = []
    try:
        for lo in range(0, len(indices), batch_size):
            z = z_all[lo : lo + batch_size].to(device)
            y = y_all[lo : lo + batch_size].to(device) if y_all is not None else None
            out.append(G(z, y).float().cpu())
    finally:
        G.train(was_training)
    return (torch.cat(out) if out else torch.empty(0)), y_all


STANDING_STREAM = 2  # the seed part of standing-statistics draws (latents: 0, labels: 1)


def batch_norms(G: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def standing_statistics(
    G: nn.Module,
    *,
    z_dim: int,
    num_classes: int,
    batches: int,
    batch_size: int,
    seed: int,
    truncation: float | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Re-estimate G's batch-norm running statistics from G's own samples, as BigGAN-PyTorch's
    `accumulate_standing_stats` does before sampling: every BN's statistics are reset and become
    the plain mean over `batches` training-mode batches of `batch_size` (momentum None), drawn
    from their own stream (seed, i, 2) with `truncation` and uniform labels. Only the BN layers
    run in training mode (spectral norm's power iteration does not move), each on this process
    alone (a cross-replica BN's all-reduce is off for it). Returns the number of BN layers;
    ValueError when G has none."""
    norms = batch_norms(G)
    if not norms:
        raise ValueError(f"{type(G).__name__} has no batch norm, so standing statistics change nothing")
    saved = [(m.momentum, getattr(m, "cross_replica", None)) for m in norms]
    G.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # the cumulative mean
        if hasattr(m, "cross_replica"):
            m.cross_replica = False
        m.train()
    try:
        for b in range(batches):
            gen = generator(seed, b, STANDING_STREAM)
            z = truncate(torch.randn(batch_size, z_dim, generator=gen), gen, truncation)
            y = torch.randint(num_classes, (batch_size,), generator=gen).to(device) if num_classes else None
            G(z.to(device), y)
    finally:
        for m, (momentum, cross) in zip(norms, saved):
            m.eval()
            m.momentum = momentum
            if cross is not None:
                m.cross_replica = cross
    return len(norms)


@torch.no_grad()
def interpolation(
    G: nn.Module,
    *,
    z_dim: int,
    num_classes: int,
    rows: int,
    steps: int,
    seed: int,
    kind: str,
    truncation: float | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """An interpolation grid, `rows` x `steps` images [rows * steps, C, H, W] in [-1, 1] on CPU.

    kind "z": row r goes linearly from the latent of sample 2r to that of 2r + 1, at the class of
    sample 2r. kind "class": the latent of sample 2r stays, and the class embedding goes from the
    class of sample 2r to that of 2r + 1 (needs a G with a class embedding: `G.embed(y)` and
    `G(z, class_embedding=...)`, as BigGAN's shared embedding)."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    if kind == "class" and (num_classes == 0 or not hasattr(G, "embed")):
        raise ValueError(
            f"class interpolation needs a class-conditional G with a class embedding (biggan's); {type(G).__name__} "
            "has none"
        )
    if kind not in ("z", "class"):
        raise ValueError(f"interpolate z or class, not {kind!r}")
    t = torch.linspace(0, 1, steps)[None, :, None]  # [1, S, 1]
    ends = latents(z_dim, range(2 * rows), seed, truncation).view(rows, 2, z_dim)  # [R, 2, z]
    y = labels(num_classes, range(2 * rows), seed)
    y = y.view(rows, 2) if y is not None else None  # [R, 2]
    G.eval()
    if kind == "z":
        z = torch.lerp(ends[:, :1], ends[:, 1:], t).reshape(rows * steps, z_dim)  # [R S, z]
        y_grid = y[:, :1].expand(rows, steps).reshape(-1) if y is not None else None
        return G(z.to(device), y_grid.to(device) if y_grid is not None else None).float().cpu()
    e = G.embed(y.to(device))  # [R, 2, E]
    e_grid = torch.lerp(e[:, :1], e[:, 1:], t.to(e)).reshape(rows * steps, -1)  # [R S, E]
    z = ends[:, 0:1].expand(rows, steps, z_dim).reshape(rows * steps, z_dim)
    return G(z.to(device), class_embedding=e_grid).float().cpu()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 with rounding and clamping (never wrap-around)."""
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def image_grid(images: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 image [rows*H, cols*W, C]; missing cells stay black."""
    n, c, h, w = images.shape
    grid = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    grid[: min(n, rows * cols)] = images[: rows * cols]
    grid = grid.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return grid.numpy()
