"""A forward run twice alike: the random state replayed and the running statistics put back
(Pix2Pix's d_first order runs G in the D phase and again in the G phase, bigtrain/families/img2img/recipe.py)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor, nn


def random_state(device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
    """torch's CPU random state and, on a GPU, that device's."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def replayed(state: tuple[Tensor, Optional[Tensor]], device: torch.device) -> Iterator[None]:
    """Runs the block from `state` (random_state's), then goes on from where the random state was."""
    cpu, gpu = state
    with torch.random.fork_rng(devices=[device] if gpu is not None else []):
        torch.set_rng_state(cpu)
        if gpu is not None:
            torch.cuda.set_rng_state(gpu, device)
        yield


@contextmanager
def running_statistics_kept(net: nn.Module) -> Iterator[None]:
    """Puts the normalisation layers' running statistics back as they were after the block."""
    kept = [
        (buffer, buffer.clone())
        for module in net.modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]
    yield
    with torch.no_grad():
        for buffer, value in kept:
            buffer.copy_(value)
