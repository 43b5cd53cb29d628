"""One pass over every image of a data set, exactly once, for statistics.

Training sources (`bigtrain.data`) stream shuffled batches forever; reference statistics need the
opposite: each image once, in a fixed order. Three kinds of input are read here:
- `.npz` with `x` (uint8 N,H,W,C or N,C,H,W, 1 or 3 channels), e.g. a `bigtrain sample` output;
- a folder of images (bigtrain.data.images.IMAGE_EXTENSIONS; searched recursively, sorted by path);
- WebDataset shards on a local disk: a `.tar` file, a brace pattern (`data-{000..009}.tar`), a
  folder of `.tar` files, or a make-shards `dataset.json` (the shards it lists).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from braceexpand import braceexpand

from bigtrain.data.images import IMAGE_EXTENSIONS, decode_image, decode_raw
from bigtrain.data.npz import load_npz
from bigtrain.data.transforms import resize_images
from bigtrain.errors import DataError


@dataclass
class ImageSet:
    """Where the images come from; `batches` fills in what is only known after the pass."""

    path: str
    kind: str  # npz | folder | shards
    resolution: Optional[int] = None  # resize to this first (None: as stored)
    num_images: int = 0  # after a full pass
    image_resolution: Optional[list[int]] = None  # [H, W] as given to Inception, after a pass
    resize_filter: str = "none"  # none | area | bilinear, as bigtrain.data.transforms.resize_images chose

    def batches(self, batch_size: int, max_images: Optional[int] = None) -> Iterator[torch.Tensor]:
        """uint8 [B, C, H, W] batches of every image once (the first `max_images` if given)."""
        self.num_images = 0
        for batch in _batched(self._images(), batch_size, self.path, self._resize):
            if max_images is not None:
                batch = batch[: max_images - self.num_images]
            self.num_images += len(batch)
            yield batch
            if max_images is not None and self.num_images >= max_images:
                return
        if self.num_images == 0:
            raise DataError(f"{self.path}: contains no images")

    def _resize(self, batch: torch.Tensor) -> torch.Tensor:
        size = list(batch.shape[-2:])
        if self.resolution is not None and size != [self.resolution] * 2:
            down = size[0] >= self.resolution and size[1] >= self.resolution
            self.resize_filter = "area" if down else "bilinear"
            batch = resize_images(batch, self.resolution)
        if self.image_resolution is None:
            self.image_resolution = list(batch.shape[-2:])
        return batch

    def _images(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, uint8 [C, H, W]) or (name, uint8 [B, C, H, W]) chunks."""
        if self.kind == "npz":
            x, _ = load_npz(self.path)
            if x.dtype != torch.uint8:
                raise DataError(f"{self.path}: 'x' holds vectors, not images")
            yield self.path, x
        elif self.kind == "folder":
            files = sorted(p for p in Path(self.path).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            for f in files:
                with open(f, "rb") as fh:
                    yield str(f), _decode(fh.read(), str(f))
        else:
            yield from read_shard_images(shard_paths(self.path))


def open_images(path: str | Path, resolution: Optional[int] = None) -> ImageSet:
    """An ImageSet for a data set path of any kind above; DataError if it is none of them."""
    text = str(path)
    p = Path(text)
    if p.suffix == ".npz":
        if not p.is_file():
            raise DataError(f"data file not found: {p}")
        return ImageSet(text, "npz", resolution)
    if p.is_dir() and not any(p.glob("*.tar")):
        return ImageSet(text, "folder", resolution)
    shard_paths(text)  # fails early with a clear message
    return ImageSet(text, "shards", resolution)


def shard_paths(path: str) -> list[str]:
    """The `.tar` files a shard specification names, all existing; DataError otherwise.

    A make-shards `dataset.json` lists its shards under "shards" (names relative to it).
    """
    p = Path(path)
    if p.name == "dataset.json":
        try:
            listed = json.loads(p.read_text()).get("shards")
        except (OSError, ValueError, AttributeError) as exc:
            raise DataError(f"{p}: cannot read dataset.json ({exc})") from None
        if not isinstance(listed, list) or not listed:
            raise DataError(f"{p}: not a make-shards dataset.json (no 'shards' list)")
        paths = [str(p.parent / shard["name"]) for shard in listed]
    elif p.is_dir():
        paths = sorted(str(f) for f in p.glob("*.tar"))
    else:
        paths = list(braceexpand(path)) if "{" in path else [path]
    if not paths:
        raise DataError(f"{path}: no .tar shards found")
    missing = [q for q in paths if not Path(q).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: not found (not an .npz file, an image folder or shards)")
    return paths


def read_shard_images(paths: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(member name, uint8 [C, H, W]) of every image member of the shards, in order.

    A WebDataset sample is the group of members sharing a key; each sample holds one image.
    """
    for path in paths:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and Path(member.name).suffix.lower() in (*IMAGE_EXTENSIONS, RAW_EXTENSION):
                        name = f"{path}:{member.name}"
                        yield name, _decode(tar.extractfile(member).read(), name)
        except tarfile.TarError as exc:
            raise DataError(f"{path}: corrupt shard ({exc})") from None


RAW_EXTENSION = ".npy"  # make-shards --format raw: uint8 [H, W, C] pixels, no codec


def _decode(data: bytes, name: str) -> torch.Tensor:
    try:
        if name.lower().endswith(RAW_EXTENSION):
            array = decode_raw(data)
            array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
        else:
            array = decode_image(data, 3)  # grey images become RGB with equal planes, as Inception wants
    except Exception as exc:  # PIL raises many types for bad files
        raise DataError(f"{name}: cannot decode image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # [3, H, W]


def _batched(
    chunks: Iterator[tuple[str, torch.Tensor]],
    batch_size: int,
    source: str,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[torch.Tensor]:
    """Regroup single images and whole arrays into batches of `batch_size` (the last may be
    short), applying `transform` to pieces of at most one batch (so a large array is never
    copied whole)."""
    buffer: list[torch.Tensor] = []
    count = 0
    size = None
    for name, chunk in chunks:
        chunk = chunk if chunk.dim() == 4 else chunk[None]
        for start in range(0, len(chunk), batch_size):
            piece = transform(chunk[start : start + batch_size])
            if size is None:
                size = piece.shape[1:]
            elif piece.shape[1:] != size:
                raise DataError(
                    f"{name}: image of shape {list(piece.shape[1:])} differs from {list(size)} earlier in "
                    f"{source}; pass --resolution to resize every image to one size"
                )
            while len(piece):
                take = piece[: batch_size - count]
                piece = piece[len(take) :]
                buffer.append(take)
                count += len(take)
                if count == batch_size:
                    yield torch.cat(buffer)
                    buffer, count = [], 0
    if buffer:
        yield torch.cat(buffer)
