"""Seeds derived from several integers, so every stream has its own reproducible generator."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from (run seed, rank, worker, position, ...) by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(p) & 0xFFFF_FFFF_FFFF_FFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `derive_seed(*parts)`."""
    return torch.Generator().manual_seed(derive_seed(*parts))
