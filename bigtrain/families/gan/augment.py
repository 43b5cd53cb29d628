"""DiffAugment (Zhao et al. 2020): differentiable augmentation of D's inputs, real and fake alike.

`augment.policy` lists ops, comma-separated, applied in that order:
- color: per sample, brightness + U[-0.5, 0.5), saturation x U[0, 2), contrast x U[0.5, 1.5)
- translation: per sample, shift by up to 1/8 of the height/width, filling with zeros
- cutout: per sample, zero a random square of half the height/width (clipped at the borders)
Every op is differentiable in x, so G's gradient passes through. Random numbers come from
torch's global RNG on x's device, which the trainer saves in checkpoints.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bigtrain.errors import ConfigError

TRANSLATION_RATIO = 1 / 8  # largest shift, as a fraction of the image side (the paper's value)
CUTOUT_RATIO = 1 / 2  # side of the cutout square, as a fraction of the image side


def _uniform(x: Tensor, low: float, high: float) -> Tensor:
    """One draw from U[low, high) per sample, shaped [N, 1, 1, 1] to broadcast over an image."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * (high - low) + low


def color(x: Tensor) -> Tensor:
    """Random brightness, saturation and contrast: [N, C, H, W] -> same shape."""
    x = x + _uniform(x, -0.5, 0.5)
    gray = x.mean(dim=1, keepdim=True)  # [N, 1, H, W]
    x = (x - gray) * _uniform(x, 0.0, 2.0) + gray
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
    return (x - mean) * _uniform(x, 0.5, 1.5) + mean


def _randint(x: Tensor, low: int, high: int) -> Tensor:
    """One integer from [low, high) per sample, shaped [N, 1, 1] to broadcast over rows/columns."""
    return torch.randint(low, high, (x.shape[0], 1, 1), device=x.device)


def translation(x: Tensor) -> Tensor:
    """Shift each image by its own (dy, dx), up to 1/8 of its height/width, zero-filled: same shape."""
    n, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy, dx = _randint(x, -sy, sy + 1), _randint(x, -sx, sx + 1)
    # Output pixel (i, j) reads input (i - dy, j - dx); the padding turns reads outside into zeros.
    padded = F.pad(x, [sx, sx, sy, sy])  # [N, C, H + 2sy, W + 2sx]
    rows = torch.arange(h, device=x.device)[None, :, None] - dy + sy  # [N, H, 1]
    cols = torch.arange(w, device=x.device)[None, None, :] - dx + sx  # [N, 1, W]
    batch = torch.arange(n, device=x.device)[:, None, None]  # [N, 1, 1]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]


def cutout(x: Tensor) -> Tensor:
    """Zero a half-height x half-width square at a random centre per image (clipped at the borders)."""
    _, _, h, w = x.shape
    size_y, size_x = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    # Centres anywhere in the image (as in the paper's code), so squares may stick out at the edges.
    top = _randint(x, 0, h + 1 - size_y % 2) - size_y // 2  # [N, 1, 1]
    left = _randint(x, 0, w + 1 - size_x % 2) - size_x // 2
    rows = torch.arange(h, device=x.device)[None, :, None]  # [1, H, 1]
    cols = torch.arange(w, device=x.device)[None, None, :]  # [1, 1, W]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)  # [N, H, W]
    return x * (~inside).to(x.dtype)[:, None]


OPS: dict[str, Callable[[Tensor], Tensor]] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> list[Callable[[Tensor], Tensor]]:
    """'color,translation' -> the ops in order; ConfigError naming `augment.policy` for an unknown op."""
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPS]
    if unknown:
        raise ConfigError("augment.policy", f"unknown op {unknown[0]!r}; choose from {', '.join(OPS)}")
    return [OPS[name] for name in names]


def diff_augment(x: Tensor, policy: str) -> Tensor:
    """Apply the ops of `policy` (comma-separated, in order) to images x [N, C, H, W].

    An empty policy returns x itself. Each op draws fresh randomness per sample.
    """
    ops = parse_policy(policy)
    if ops and x.dim() != 4:
        raise ConfigError("augment.policy", f"DiffAugment needs images [N, C, H, W], got shape {tuple(x.shape)}")
    for op in ops:
        x = op(x)
    return x
