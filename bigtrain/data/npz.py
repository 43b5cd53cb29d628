"""In-memory data from one `.npz` file: images (uint8) or float vectors, optional labels."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from bigtrain.config import DataConfig
from bigtrain.data import Batch, DataInfo
from bigtrain.data.transforms import crop, crop_offsets, resize_images, split_pair
from bigtrain.errors import ConfigError, DataError
from bigtrain.seeding import generator


def load_npz(
    path: str | Path, resolution: int | None = None, paired: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read `x` (and `y`) from an npz file; images come back as uint8 [N, C, H, W].

    `x` may be uint8 images N,H,W,C or N,C,H,W with 1 or 3 channels, or float vectors N,D.
    `paired`: the images are side-by-side A|B pairs, returned as [N, 2C, H, W/2] (split_pair).
    Images are resized to `resolution` when it is given and differs.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive:
                raise DataError(f"{path}: no array named 'x' (found: {', '.join(archive.files) or 'none'})")
            x = archive["x"]
            y = archive["y"] if "y" in archive else None
    except DataError:
        raise
    except Exception as exc:  # zip, header and dtype errors all mean an unreadable file
        raise DataError(f"{path}: cannot read npz file ({exc})") from None
    x_t = _images_or_vectors(x, path)
    if paired:
        if x_t.dtype != torch.uint8:
            raise DataError(
                f"{path}: data.paired needs side-by-side A|B images, got vectors of shape {tuple(x_t.shape)}"
            )
        try:
            x_t = split_pair(x_t)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
    if x_t.dtype == torch.uint8 and resolution is not None:
        x_t = resize_images(x_t, resolution)
    y_t = None
    if y is not None:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: 'y' must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: 'y' has negative labels")
        y_t = torch.from_numpy(y.astype(np.int64))
    return x_t, y_t


def _images_or_vectors(x: np.ndarray, path: Path) -> torch.Tensor:
    if x.ndim == 2 and np.issubdtype(x.dtype, np.floating):
        return torch.from_numpy(x.astype(np.float32))
    if x.ndim == 4 and x.dtype == np.uint8:
        if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
            return torch.from_numpy(np.ascontiguousarray(x))  # already N,C,H,W
        if x.shape[-1] in (1, 3):
            return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    raise DataError(
        f"{path}: 'x' must be uint8 images N,H,W,C or N,C,H,W with 1 or 3 channels, "
        f"or float vectors N,D; got {x.dtype} {x.shape}"
    )


class NpzSource:
    """Seeded infinite stream of micro-batches from an in-memory array.

    The stream of one rank is the concatenation of per-epoch permutations, each drawn from a
    generator seeded by (seed, rank, epoch); with `xflip`, each epoch also draws which samples
    are mirrored, and with `data.load_size` > `data.resolution` where each sample is cropped. So sample k of the
    stream is a pure function of (seed, rank, k), and resuming
    needs only the number of samples served.
    """

    def __init__(self, cfg: DataConfig, *, micro_batch: int, rank: int, seed: int):
        if not Path(cfg.path).is_file():
            raise ConfigError("data.path", f"data file not found: {cfg.path}")
        self.size = cfg.resolution
        self.x, self.y = load_npz(cfg.path, cfg.load_size or cfg.resolution, paired=cfg.paired)
        self.cropped = self.x.dtype == torch.uint8 and self.x.shape[-1] > cfg.resolution
        if len(self.x) == 0:
            raise DataError(f"{cfg.path}: contains no samples")
        self.micro_batch = micro_batch
        self.rank = rank
        self.seed = seed
        self.xflip = cfg.xflip and self.x.dtype == torch.uint8
        num_classes = int(self.y.max()) + 1 if self.y is not None else 0
        kind = "image" if self.x.dtype == torch.uint8 else "vector"
        shape = (self.x.shape[1], self.size, self.size) if self.cropped else tuple(self.x.shape[1:])
        counts = tuple(torch.bincount(self.y, minlength=num_classes).tolist()) if self.y is not None else ()
        self.info = DataInfo(kind, shape, num_classes, counts)

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        gen = generator(self.seed, self.rank, epoch)
        order = torch.randperm(len(self.x), generator=gen)
        flips = torch.rand(len(self.x), generator=gen) < 0.5 if self.xflip else None
        corners = (
            crop_offsets(len(self.x), self.x.shape[-1], self.size, gen) if self.cropped else None
        )  # [N, 2], drawn last: older streams unchanged
        return order, flips, corners

    def batches(self, start: int = 0, size: Optional[int] = None) -> Iterator[Batch]:
        n = len(self.x)
        pos = start  # samples already served
        epoch, offset = divmod(pos, n)
        order, flips, corners = self._epoch(epoch)
        while True:
            idx_parts, flip_parts, corner_parts = [], [], []
            need = size or self.micro_batch
            while need:
                take = min(need, n - offset)
                idx_parts.append(order[offset : offset + take])
                if flips is not None:
                    flip_parts.append(flips[offset : offset + take])
                if corners is not None:
                    corner_parts.append(corners[offset : offset + take])
                offset += take
                need -= take
                if offset == n:
                    epoch, offset = epoch + 1, 0
                    order, flips, corners = self._epoch(epoch)
            idx = torch.cat(idx_parts)
            x = self.x[idx]
            if corner_parts:
                x = crop(x, torch.cat(corner_parts), self.size)
            if flip_parts:
                flip = torch.cat(flip_parts)
                x[flip] = x[flip].flip(-1)  # [B, C, H, W]: mirror the width axis
            yield x, (self.y[idx] if self.y is not None else None)

    def stats(self) -> dict[str, float]:
        return {}

    def restore_stats(self, stats: dict[str, float]) -> None:
        pass
