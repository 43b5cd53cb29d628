"""`bigtrain make-shards SRC OUT_DIR`: image folders, npz files or CIFAR batches -> WebDataset shards.

Each sample is stored as `KEY.png`, `KEY.jpg` or, with `--format raw`, `KEY.npy` (the uint8
[H, W, C] pixels as a numpy `.npy`, read back with no image codec) plus, for labelled data,
`KEY.cls` (the class index as decimal text). KEY is the sample's index in the sorted source
listing, zero-padded, so a sample can always be traced back to its source. Samples are written in an order shuffled by
`--seed` (sorted class folders would otherwise give single-class shards, which a streaming shuffle
buffer cannot mix). `dataset.json` beside the shards records counts, sha256 sums and the options.

Output is a pure function of (input, options, seed): workers encode in parallel but results are
written in the seeded order (`Pool.imap` keeps it), tar headers carry no times or owners, and
dataset.json records neither timings nor the worker count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from bigtrain.data.images import (
    RESIZE_FILTERS,
    ArrayReader,
    FolderReader,
    encode_image,
    open_source,
    to_hwc,
    with_channels,
)
from bigtrain.errors import ConfigError, DataError

DATASET_JSON = "dataset.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 1000  # samples per shard when neither --shard-size nor --max-bytes is given
MEMBER_EXT = {"png": "png", "jpg": "jpg", "raw": "npy"}  # --format -> tar member extension
_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_RECORD = tarfile.RECORDSIZE


# ---------------------------------------------------------------------------------------------
# Per-sample work (runs in pool workers): load -> channels -> crop -> resize -> encode
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageOptions:
    resolution: Optional[int]  # square output side; None keeps the source size
    crop: str  # center | none
    resize_filter: str  # key of RESIZE_FILTERS
    channels: int  # 1 | 3
    image_format: str  # png | jpg | raw
    quality: int  # JPEG quality


def prepare_image(image: Image.Image, opts: ImageOptions) -> Image.Image:
    """Convert, centre-crop to a square and resize as make-shards does before encoding."""
    image = with_channels(image, opts.channels)
    if opts.crop == "center" and image.width != image.height:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if opts.resolution is not None and image.size != (opts.resolution, opts.resolution):
        image = image.resize((opts.resolution, opts.resolution), resample=RESIZE_FILTERS[opts.resize_filter])
    return image


def encode_sample(
    reader: FolderReader | ArrayReader, opts: ImageOptions, index: int
) -> tuple[int, bytes, Optional[int], tuple[int, int]]:
    """(index, encoded image, label, (H, W)) of one source sample."""
    image, label = reader.load(index)
    image = prepare_image(image, opts)
    return index, encode_image(to_hwc(image), opts.image_format, opts.quality), label, (image.height, image.width)


# The job of one pool worker process, set by its initializer: the reader then reaches each worker
# once (inherited or pickled at start) instead of being pickled with every task.
_pool_job: Optional[tuple[FolderReader | ArrayReader, ImageOptions]] = None


def _init_pool_worker(reader: FolderReader | ArrayReader, opts: ImageOptions) -> None:
    global _pool_job
    _pool_job = (reader, opts)


def _pool_encode(index: int) -> tuple[int, bytes, Optional[int], tuple[int, int]]:
    return encode_sample(*_pool_job, index)


# ---------------------------------------------------------------------------------------------
# Tar shards
# ---------------------------------------------------------------------------------------------


class _HashingFile:
    """Write-only file wrapper that keeps the sha256 and byte count of what went through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.f.write(data)


def _member_bytes(size: int) -> int:
    """Bytes a tar member of `size` data bytes takes: a header block plus padded data."""
    return _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


def _archive_bytes(member_bytes: int) -> int:
    """File size of a tar with that many member bytes: end-of-archive blocks, padded to a record."""
    return -(-(member_bytes + 2 * _TAR_BLOCK) // _TAR_RECORD) * _TAR_RECORD


class ShardSink:
    """Writes samples into `prefix-000000.tar`, `prefix-000001.tar`, ... under `folder`.

    A shard is closed when it holds `shard_size` samples or when the next sample would take it
    past `max_bytes` (a single larger sample still gets a shard of its own).
    """

    def __init__(self, folder: Path, prefix: str, shard_size: Optional[int], max_bytes: Optional[int]):
        self.folder, self.prefix = folder, prefix
        self.shard_size, self.max_bytes = shard_size, max_bytes
        self.shards: list[dict] = []
        self._file = self._hashing = self._tar = None
        self._count = self._member_bytes = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        sample_bytes = sum(_member_bytes(len(v)) for v in members.values())
        if self._tar is not None and (
            (self.shard_size is not None and self._count >= self.shard_size)
            or (self.max_bytes is not None and _archive_bytes(self._member_bytes + sample_bytes) > self.max_bytes)
        ):
            self._close_shard()
        if self._tar is None:
            self._open_shard()
        self._tar.write({"__key__": key, **members})
        self._count += 1
        self._member_bytes += sample_bytes

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Close the open shard after a failure (the caller deletes the folder)."""
        if self._tar is not None:
            try:
                self._tar.close()
            finally:
                self._file.close()
        self._tar = self._file = self._hashing = None

    def _open_shard(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._file = open(self.folder / name, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = wds.TarWriter(self._hashing, encoder=False, mtime=0, user="", group="")
        self.shards.append({"name": name})
        self._count = self._member_bytes = 0

    def _close_shard(self) -> None:
        self._tar.close()
        self._file.close()
        self.shards[-1].update(
            num_samples=self._count, bytes=self._hashing.size, sha256=self._hashing.sha256.hexdigest()
        )
        self._tar = self._file = self._hashing = None


# ---------------------------------------------------------------------------------------------
# make-shards
# ---------------------------------------------------------------------------------------------


def make_shards(
    src: str | Path,
    out_dir: str | Path,
    *,
    resolution: Optional[int] = None,
    crop: str = "center",
    resize_filter: str = "box",
    image_format: str = "png",
    quality: int = 95,
    channels: Optional[int] = None,
    shard_size: Optional[int] = None,
    max_bytes: Optional[int] = None,
    workers: int = 1,
    seed: int = 0,
    split: str = "train",
    prefix: str = "train",
    progress: bool = True,
) -> dict:
    """Write the samples of `src` as tar shards plus `dataset.json` into `out_dir`; return its dict.

    `out_dir` must be missing or empty. Everything is written into a temporary sibling folder that
    is renamed at the end, so a failure leaves nothing behind and overwrites nothing.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: exists and is not an empty folder; refusing to write into it")
    if image_format not in MEMBER_EXT:
        raise ConfigError("--format", f"must be one of {', '.join(MEMBER_EXT)}, got {image_format!r}")
    if shard_size is None and max_bytes is None:
        shard_size = DEFAULT_SHARD_SIZE
    reader = open_source(src, split)
    if len(reader) == 0:
        raise DataError(f"{src}: contains no samples")
    opts = ImageOptions(resolution, crop, resize_filter, channels or reader.first_channels(), image_format, quality)
    order = np.random.default_rng(seed).permutation(len(reader))
    key_digits = max(8, len(str(len(reader) - 1)))
    ext = MEMBER_EXT[image_format]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # left over by a killed run that had our pid
    staging.mkdir()
    sink = ShardSink(staging, prefix, shard_size, max_bytes)
    encoded = _encoded(reader, opts, order, workers)
    try:
        size, class_counts = None, [0] * len(reader.class_names)
        bar = tqdm(
            total=len(reader),
            unit="file" if isinstance(reader, FolderReader) else "img",
            desc="make-shards",
            disable=not progress,
        )
        for index, data, label, hw in encoded:
            if size is None:
                size = hw
            elif hw != size:
                raise DataError(
                    f"{_sample_name(reader, index)}: is {hw[1]}x{hw[0]} after cropping but earlier samples are "
                    f"{size[1]}x{size[0]}; pass --resolution to resize all to one size"
                )
            members = {ext: data} if label is None else {"cls": str(label).encode(), ext: data}
            if label is not None:
                class_counts[label] += 1
            sink.write(f"{index:0{key_digits}d}", members)
            bar.update()
        bar.close()
        shards = sink.close()
        meta = {
            "format": "bigtrain-shards",
            "version": FORMAT_VERSION,
            "num_samples": len(reader),
            "num_classes": len(reader.class_names),
            "class_names": reader.class_names,
            "class_counts": class_counts,
            "resolution": size[0] if size[0] == size[1] else None,
            "size": list(size),
            "channels": opts.channels,
            "image_format": image_format,
            "quality": quality if image_format == "jpg" else None,
            "crop": crop,
            "resize_filter": resize_filter,
            "seed": seed,
            "source": {
                "kind": reader.kind,
                "path": str(Path(src).resolve()),
                **({"split": split} if reader.kind.startswith("cifar") else {}),
            },
            "shards": shards,
        }
        (staging / DATASET_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        encoded.close()  # stops the worker pool now, not when the generator is collected
        sink.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def _sample_name(reader: FolderReader | ArrayReader, index: int) -> str:
    return str(reader.files[index]) if isinstance(reader, FolderReader) else f"{reader.path} sample {index}"


def _encoded(reader: FolderReader | ArrayReader, opts: ImageOptions, order: np.ndarray, workers: int):
    """(index, bytes, label, (H, W)) for each index in `order`, in that order."""
    indices = [int(i) for i in order]
    if workers <= 1:
        yield from (encode_sample(reader, opts, i) for i in indices)
        return
    with multiprocessing.Pool(workers, initializer=_init_pool_worker, initargs=(reader, opts)) as pool:
        # Chunks of up to 64 indices amortise the inter-process traffic; at least 8 chunks per
        # worker keep the workers evenly busy on small inputs.
        yield from pool.imap(_pool_encode, indices, chunksize=max(1, min(64, len(indices) // (workers * 8))))


# ---------------------------------------------------------------------------------------------
# Command line (wired by bigtrain/cli.py as `bigtrain make-shards SRC OUT_DIR [options]`)
# ---------------------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    """'500M', '2G', '1048576' -> bytes (K/M/G/T are powers of 1024)."""
    text = text.strip().upper().removesuffix("B")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(text[-1]) + 1)
        text = text[:-1]
    try:
        return int(float(text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 500M, 2G)") from None


def add_make_shards_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `bigtrain make-shards`."""
    parser.add_argument(
        "src", help="image folder (flat, or one sub-folder per class), .npz file, or CIFAR-10/100 python batch folder"
    )
    parser.add_argument("out_dir", help="output folder for the shards and dataset.json (missing or empty)")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="resize to RES x RES (default: keep the source size, which must then be uniform)",
    )
    parser.add_argument(
        "--crop",
        choices=("center", "none"),
        default="center",
        help="centre-crop to a square before resizing (none: squash)",
    )
    parser.add_argument(
        "--resize-filter",
        choices=tuple(RESIZE_FILTERS),
        default="box",
        help="resampling filter (default box, as stylegan2-ada recommends)",
    )
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=tuple(MEMBER_EXT),
        default="png",
        help="image storage in the shards: png (lossless), jpg (lossy, smallest), "
        "raw (.npy pixels: no decoding, largest)",
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality, 1-100 (--format jpg)")
    parser.add_argument(
        "--channels", choices=("auto", "1", "3"), default="auto", help="1 = grey, 3 = RGB; auto = as the first sample"
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help=f"samples per shard (default {DEFAULT_SHARD_SIZE} unless --max-bytes is given)",
    )
    parser.add_argument("--max-bytes", type=parse_bytes, default=None, help="largest shard file size, e.g. 500M or 1G")
    parser.add_argument("--workers", type=int, default=1, help="processes that decode, resize and encode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order in the shards")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="CIFAR split to convert")
    parser.add_argument("--prefix", default="train", help="shard file names: PREFIX-000000.tar, ...")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")


def run_make_shards(args: argparse.Namespace) -> int:
    """`bigtrain make-shards`: validate the options, write the shards, print a summary. Exit code."""
    positive = {
        "--resolution": args.resolution,
        "--shard-size": args.shard_size,
        "--max-bytes": args.max_bytes,
        "--workers": args.workers,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(flag, f"must be > 0, got {value}")
    if not 1 <= args.quality <= 100:
        raise ConfigError("--quality", f"must be in 1..100, got {args.quality}")
    if not args.prefix or "/" in args.prefix:
        raise ConfigError("--prefix", f"must be a plain file name prefix, got {args.prefix!r}")
    meta = make_shards(
        args.src,
        args.out_dir,
        resolution=args.resolution,
        crop=args.crop,
        resize_filter=args.resize_filter,
        image_format=args.image_format,
        quality=args.quality,
        channels=None if args.channels == "auto" else int(args.channels),
        shard_size=args.shard_size,
        max_bytes=args.max_bytes,
        workers=args.workers,
        seed=args.seed,
        split=args.split,
        prefix=args.prefix,
        progress=args.progress,
    )
    shards = meta["shards"]
    print(
        f"wrote {meta['num_samples']} samples ({meta['size'][1]}x{meta['size'][0]}x{meta['channels']}, "
        f"{meta['num_classes']} classes) in {len(shards)} shards to {args.out_dir}: "
        f"{args.prefix}-{{000000..{len(shards) - 1:06d}}}.tar, {DATASET_JSON}"
    )
    return 0
