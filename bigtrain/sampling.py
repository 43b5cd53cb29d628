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
        z = torch.randn(z_dim, generator=gen)
        if truncation is not None:
            out = z.abs() > truncation
            while out.any():
                z[out] = torch.randn(int(out.sum()), generator=gen)
                out = z.abs() > truncation
        rows.append(z)
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
