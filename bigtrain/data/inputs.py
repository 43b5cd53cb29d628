"""Whole image sets read in order, for what translates images rather than training on a stream:
`bigtrain translate --in`, the image-to-image recipes' evaluation inputs and sample grids.

An `.npz` (x uint8 N,H,W,C or N,C,H,W), an image folder (flat, sorted by name), or make-shards
output (a dataset.json or brace pattern; one pass over every shard in order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bigtrain.data.images import FolderReader, to_hwc, with_channels
from bigtrain.data.transforms import resize_images, split_pair
from bigtrain.errors import DataError


def read_images(
    path: str | Path, resolution: int, *, channels: int, paired: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """Every image of `path` as uint8 [N, C, resolution, resolution] (C = channels, 2 x channels
    when `paired`: side-by-side A|B images split as in training), with a name per image."""
    text = str(path)
    p = Path(text)
    if text.endswith(".json") or ".tar" in text:
        return _read_shards(text, resolution, channels, paired)
    if p.is_file() and p.suffix == ".npz":
        from bigtrain.data.npz import load_npz

        x, _ = load_npz(p, resolution, paired=paired)
        if x.dtype != torch.uint8:
            raise DataError(f"{p}: holds vectors, not images")
        names = [f"{i:06d}" for i in range(len(x))]
    elif p.is_dir():
        reader = FolderReader(p)
        names = [f.relative_to(p).with_suffix("").as_posix() for f in reader.files]
        images = [to_hwc(with_channels(reader.load(i)[0], channels)) for i in range(len(reader))]
        parts = []
        for a in images:
            t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]  # [1, C, H, W]
            if paired:
                try:
                    t = split_pair(t)
                except ValueError as exc:
                    raise DataError(f"{reader.files[len(parts)]}: {exc}") from None
            parts.append(resize_images(t, resolution))
        x = torch.cat(parts)
    elif p.exists():
        raise DataError(f"{p}: not an image folder, an .npz file or make-shards output")
    else:
        raise DataError(f"{p}: no such file or folder")
    want = channels * (2 if paired else 1)
    if x.shape[1] != want:
        raise DataError(
            f"{path}: images have {x.shape[1] // (2 if paired else 1)} channels, the model reads {channels}"
        )
    if len(x) == 0:
        raise DataError(f"{path}: holds no images")
    return x, names


def _read_shards(path: str, resolution: int, channels: int, paired: bool) -> tuple[torch.Tensor, list[str]]:
    from bigtrain.config import DataConfig
    from bigtrain.data.shards import ShardSource

    source = ShardSource(
        DataConfig(source="shards", path=path, resolution=resolution, paired=paired, shuffle_buffer=0),
        micro_batch=1,
        rank=0,
        world_size=1,
        seed=0,
    )
    samples = list(source.samples(resampled=False))
    if not samples:
        raise DataError(f"{path}: holds no images")
    return torch.stack([s.image for s in samples]), [s.key for s in samples]
