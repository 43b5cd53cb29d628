"""The distributed engines behind the players: `build_backend` picks the one `backend.kind`
names. This package holds the ONLY imports of accelerate, deepspeed and torch.distributed in
bigtrain (tests/unit/test_boundaries.py); one module each: the interface (base.py), Accelerate
(accelerate.py), the DeepSpeed engine (deepspeed.py), its JSON (deepspeed_config.py) and its
files (deepspeed_files.py)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from bigtrain.config import BackendConfig, TrainConfig
from bigtrain.engine.backends.base import Agreement, Backend, split_batch
from bigtrain.errors import ConfigError

__all__ = ["Agreement", "Backend", "build_backend", "process_group", "split_batch"]


def build_backend(backend_cfg: BackendConfig, train_cfg: TrainConfig) -> Backend:
    """The backend named by `backend.kind`."""
    if backend_cfg.kind == "deepspeed":
        from bigtrain.engine.backends.deepspeed import DeepSpeedBackend

        return DeepSpeedBackend(backend_cfg, train_cfg)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ConfigError(
            "backend.kind",
            "is accelerate but accelerate launch was given a DeepSpeed config; set backend.kind=deepspeed",
        )
    from bigtrain.engine.backends.accelerate import AccelerateBackend

    return AccelerateBackend(backend_cfg, train_cfg)


@contextlib.contextmanager
def process_group() -> Iterator[tuple[int, int, int]]:
    """(rank, world size, local rank); joins the process group torchrun describes, if any."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size(), local_rank
        return
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield 0, 1, 0
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), local_rank
    finally:
        dist.destroy_process_group()
