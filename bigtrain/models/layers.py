"""Pieces shared by every architecture: class conditioning of inputs."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def check_labels(y: Optional[Tensor], num_classes: int) -> Optional[Tensor]:
    """Labels for a conditional net (required), or None for an unconditional one.

    An unconditional net drops `y`, because the loop passes along whatever labels the data has.
    """
    if num_classes == 0:
        return None
    if y is None:
        raise ValueError(
            f"this network is class-conditional ({num_classes} classes): pass labels y, int64 [N]"
        )
    return y


def concat_one_hot(x: Tensor, y: Optional[Tensor], num_classes: int) -> Tensor:
    """Append one-hot labels to flat inputs, as in Mirza & Osindero's conditional GAN.

    x: [N, F], y: int64 [N] or None -> [N, F + num_classes] (or x itself when unconditional).
    """
    y = check_labels(y, num_classes)
    if y is None:
        return x
    # x's dtype, so the concatenation also works inside a bf16/fp16 autocast region.
    return torch.cat([x, F.one_hot(y, num_classes).to(x.dtype)], dim=1)
