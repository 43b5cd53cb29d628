"""`data.source: shards`: WebDataset tar shards streamed from disk, a shared filesystem or URLs.

`data.path` is a `dataset.json` written by make-shards, a brace pattern
(`train-{000000..000127}.tar`) or several patterns joined by `::`; each may be a local path, an
http(s) URL or a `pipe:` command (webdataset's `gopen` opens them).

Every (rank, loader worker) pair reads its own stream: it walks through all shards in its own
random order, again and again, so uneven shard counts never starve a rank (DDP cannot hang on
one rank running dry) and there may be fewer shards than ranks x workers. Samples then pass a
shuffle buffer, are decoded in the worker (PIL for PNG/JPEG; raw `.npy` pixels need no codec),
resized to `data.resolution`, flipped and batched. The seeds come from (run seed, rank, worker,
start), so `batches(start)` after a resume draws a fresh stream instead of replaying the
beginning of the old one.

The tar reading is our own (`tar_members`, ~40 lines) rather than `wds.tarfile_to_samples`:
skipped samples must be counted exactly (a truncated shard loses every sample after the cut,
which dataset.json's per-shard counts tell us), errors must name the shard, and `tarfile`'s
stream mode costs more per member than decoding a 32x32 PNG. webdataset still opens the URLs
(`gopen`) and expands the brace patterns.
"""
from __future__ import annotations

import atexit
import gzip
import io
import json
import os
import random
import re
import signal
import tarfile
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Optional
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigtrain.config import DataConfig
from bigtrain.data import Batch, DataInfo
from bigtrain.data.images import channels_of, decode_image, decode_raw
from bigtrain.data.shard_writer import DATASET_JSON
from bigtrain.data.transforms import crop, crop_offsets, resize_images, split_pair
from bigtrain.errors import BigtrainError, ConfigError, DataError
from bigtrain.seeding import derive_seed

IMAGE_KEYS = ("png", "jpg", "jpeg", "npy", "webp", "bmp", "ppm", "pgm", "tif", "tiff")  # npy: raw uint8 [H, W, C]
_PIL_FORMATS = {"png": ("PNG",), "jpg": ("JPEG",), "jpeg": ("JPEG",)}  # skip PIL's format probing
# The skipped fraction is measured over at least this many samples, so that a few bad samples at
# the very start of a stream do not stop a run that would stay far below the limit.
MIN_SAMPLES_FOR_FRACTION = 1000
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's rule
_SHARD_NAME = re.compile(r"[^/\s]+\.tar(?:\.gz)?")
# Seed streams of one worker, kept apart so that e.g. a skipped sample does not shift the flips.
_SEED_SHARDS, _SEED_SHUFFLE, _SEED_FLIP, _SEED_CROP = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# Which shards: dataset.json, brace patterns, URLs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSet:
    urls: tuple[str, ...]
    counts: dict = field(default_factory=dict)  # shard file name -> samples (from dataset.json)
    channels: Optional[int] = None  # None: not known without reading a sample
    num_classes: int = 0  # 0: unlabelled, or labels not described by any dataset.json
    label_key: str = "dataset.json"  # what declared num_classes (named in label errors)
    meta_path: Optional[str] = None  # the dataset.json used, if any

    def expected(self, url: str) -> Optional[int]:
        """Samples the shard at `url` should hold, when dataset.json says so."""
        names = _SHARD_NAME.findall(url)
        return self.counts.get(names[-1]) if names else None


def is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file:") else url


def read_dataset_json(path: str) -> dict:
    """The dict of a make-shards dataset.json (local path or URL)."""
    try:
        with wds.gopen(path, "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read dataset.json ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("shards"), list) or not meta["shards"]:
        raise DataError(f"{path}: not a make-shards dataset.json (no 'shards' list)")
    return meta


def _join(base: str, name: str) -> str:
    """`name` relative to the folder of `base` (a path or URL), unless it is absolute or a URL."""
    if urlparse(name).scheme or os.path.isabs(name):
        return name
    return base.rsplit("/", 1)[0] + "/" + name if "/" in base else name


def resolve_shards(path: str | list[str], dataset_json: str = "") -> ShardSet:
    """The shard URLs named by `data.path`, with what a dataset.json tells about them.

    The metadata comes from `dataset_json` if given, else from `path` itself when it is a
    dataset.json, else from a dataset.json beside the first shard when that one is local.
    """
    patterns = list(path) if isinstance(path, (list, tuple)) else [path]
    if len(patterns) == 1 and patterns[0].endswith(".json"):
        if urlparse(patterns[0]).scheme == "pipe":
            raise ConfigError("data.path", "a dataset.json read through pipe: cannot locate its shards; give the shards as data.path and the dataset.json as data.dataset_json")
        dataset_json = dataset_json or patterns[0]
        meta = read_dataset_json(dataset_json)
        urls = [_join(dataset_json, shard["name"]) for shard in meta["shards"]]
    else:
        urls = [url for pattern in patterns for url in wds.shardlists.expand_urls(pattern)]
        if not urls:
            raise ConfigError("data.path", "names no shards")
        beside = os.path.join(os.path.dirname(_local_path(urls[0])), DATASET_JSON)
        if not dataset_json and is_local(urls[0]) and os.path.isfile(beside):
            dataset_json = beside
        meta = read_dataset_json(dataset_json) if dataset_json else None
    if meta is None:
        return ShardSet(tuple(urls))
    return ShardSet(
        urls=tuple(urls),
        counts={shard["name"]: int(shard["num_samples"]) for shard in meta["shards"] if "num_samples" in shard},
        channels=int(meta["channels"]) if "channels" in meta else None,
        num_classes=int(meta.get("num_classes", 0)),
        meta_path=dataset_json,
    )


def check_local_shards(urls: Iterable[str]) -> None:
    """One clear error for the first local shard that is missing, unreadable or not a tar file.

    Remote shards (URLs, `pipe:`) cannot be checked cheaply; they fail when first opened.
    """
    local = [_local_path(url) for url in urls if is_local(url)]
    missing = [path for path in local if not os.path.isfile(path)]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(local)} shards)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: shard not found{more}")
    for path in local:
        try:
            with open(path, "rb") as f:
                header = f.read(tarfile.BLOCKSIZE)
        except OSError as exc:
            raise DataError(f"{path}: cannot read shard ({exc.strerror or exc})") from None
        if not (header[257:262] == b"ustar" or header[:2] == b"\x1f\x8b"):
            raise DataError(f"{path}: not a tar file (no tar header at its start)")


# ---------------------------------------------------------------------------------------------
# Reading one shard: tar members grouped into raw samples, faults counted
# ---------------------------------------------------------------------------------------------


class SkipCounter:
    """Counts samples read and skipped by one stream; stops it when too many are bad."""

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction
        self.seen = 0
        self.skipped = 0
        self.unreported = 0  # skips not yet passed on with a batch

    def ok(self) -> None:
        """One sample read from a shard (it may still fail to decode: see `bad`)."""
        self.seen += 1

    def lost(self, shard: str, count: int, reason: str) -> None:
        """`count` samples that could not be read at all (a truncated shard)."""
        self.seen += count
        self._skip(shard, count, reason)

    def bad(self, shard: str, reason: str) -> None:
        """A sample that was read but cannot be used (undecodable image, bad label text)."""
        self._skip(shard, 1, reason)

    def _skip(self, shard: str, count: int, reason: str) -> None:
        self.skipped += count
        self.unreported += count
        if self.skipped > self.max_fraction * max(self.seen, MIN_SAMPLES_FOR_FRACTION):
            raise DataError(
                f"{shard}: {reason}; {self.skipped} of {self.seen} samples read by this stream were skipped, "
                f"more than data.max_skipped_fraction={self.max_fraction}"
            )

    def take_unreported(self) -> int:
        count, self.unreported = self.unreported, 0
        return count


def _split_name(name: str) -> tuple[Optional[str], str]:
    """'dir/00001234.png' -> ('dir/00001234', 'png'): the key ends at the basename's first dot."""
    match = _KEY_AND_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


class TarFormatError(ValueError):
    """A tar header that is cut off or corrupt."""


def _tar_number(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    digits = field.strip(b" \0")
    return int(digits, 8) if digits else 0


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TarFormatError(f"unexpected end of data ({len(data)} of {size} bytes)")
    return data


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files in a tar stream (ustar, GNU long names, pax paths).

    Python's `tarfile` in stream mode spends more time parsing headers than PIL spends decoding
    a small PNG; this reads only what a shard needs. Raises TarFormatError on a cut or a bad header.
    """
    long_name = None
    while True:
        header = stream.read(tarfile.BLOCKSIZE)
        if not header:
            return  # end of file without end-of-archive blocks: tolerated, as tarfile does
        if len(header) < tarfile.BLOCKSIZE:
            raise TarFormatError("unexpected end of data in a tar header")
        if header.count(0) == tarfile.BLOCKSIZE:
            return  # end-of-archive block
        if _tar_number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarFormatError("bad tar header checksum")
        size, kind = _tar_number(header[124:136]), header[156:157]
        data = _read_exactly(stream, size)
        _read_exactly(stream, -size % tarfile.BLOCKSIZE)
        if kind == b"L":  # GNU: the data is the next member's name
            long_name = data.rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax: "LEN path=NAME\n" records for the next member
            for record in data.decode("utf-8", "replace").splitlines():
                _, _, item = record.partition(" ")
                if item.startswith("path="):
                    long_name = item[5:]
        elif kind in (b"0", b"\0", b"7"):  # regular files
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
            yield long_name or (f"{prefix}/{name}" if prefix else name), data
            long_name = None
        else:  # directories, links, global pax headers: nothing to read
            long_name = None if kind != b"g" else long_name


def read_shard(url: str, counter: SkipCounter, expected: Optional[int] = None) -> Iterator[dict]:
    """Raw samples ({"__key__", "__url__", ext: bytes, ...}) of one shard, in tar order.

    A shard that cannot be opened, or fails before its first member, is an error naming it. A
    shard that breaks off later (truncated or corrupt) loses the rest: those samples are counted
    as skipped, exactly when dataset.json gives the shard's size, else as one.
    """
    try:
        stream = wds.gopen(url, "rb")
        if re.search(r"\.(tgz|tar\.gz)\b", url):
            stream = gzip.GzipFile(fileobj=stream)
    except Exception as exc:  # gopen raises OSError, ValueError (unknown scheme), ...
        raise DataError(f"{url}: cannot open shard ({exc})") from None
    members = 0
    served = 0
    current: Optional[dict] = None
    failure: Optional[Exception] = None
    try:
        with stream:
            for name, data in tar_members(stream):
                members += 1
                key, ext = _split_name(name)
                if key is None or key.startswith("__"):
                    continue
                if current is not None and current["__key__"] != key:
                    counter.ok()
                    served += 1
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
    except (OSError, EOFError, ValueError) as exc:  # truncated or broken data, a failed pipe command
        failure = exc
    if failure is not None and members == 0:
        raise DataError(f"{url}: cannot read shard ({failure})")
    if failure is None and current is not None:
        counter.ok()
        served += 1
        yield current
    lost = (expected - served) if expected is not None else (1 if failure is not None else 0)
    if lost > 0:
        counter.lost(url, lost, f"shard ends early ({failure or 'fewer samples than dataset.json says'}), {lost} samples lost")


# ---------------------------------------------------------------------------------------------
# One stream: shard order -> raw samples -> shuffle buffer -> decoded samples -> batches
# ---------------------------------------------------------------------------------------------


class Sample(NamedTuple):
    key: str
    shard: str
    image: torch.Tensor  # uint8 [C, H, W]
    label: Optional[int]


@dataclass(frozen=True)
class StreamSpec:
    """Everything a loader worker needs to build its stream (picklable, no open files)."""

    shards: ShardSet
    channels: int
    resolution: int
    num_classes: int
    xflip: bool
    micro_batch: int
    shuffle_buffer: int
    max_skipped_fraction: float
    seed: int
    rank: int
    world_size: int
    load_size: int = 0  # > resolution: load at this size, then a random resolution crop per sample
    paired: bool = False  # side-by-side A|B samples, split into 2C channels


def shard_order(urls: tuple[str, ...], *, seed: int, rank: int, world_size: int, worker: int, num_workers: int, start: int, resampled: bool) -> Iterator[str]:
    """The shards one (rank, worker) stream reads.

    resampled: every shard, in a fresh seeded random order per pass, forever; each stream has its
    own seed, so streams differ however many shards there are. Otherwise: one pass over this
    stream's share (by rank, then by worker), as a plain one-epoch split covering each shard once.
    """
    if not resampled:
        yield from urls[rank::world_size][worker::num_workers]
        return
    rng = random.Random(derive_seed(seed, rank, worker, start, _SEED_SHARDS))
    order = list(urls)
    while True:
        rng.shuffle(order)
        yield from order


def shuffled(samples: Iterable, size: int, rng: random.Random) -> Iterator:
    """Shuffle buffer: once `size` items are held, each new one takes the place of a random one."""
    if size <= 1:
        yield from samples
        return
    buffer: list = []
    for item in samples:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


class Decoded(NamedTuple):
    key: str
    shard: str
    pixels: np.ndarray  # uint8 [H, W, C] at the stored size (read-only)
    label: Optional[int]


def decode_sample(raw: dict, spec: StreamSpec, counter: SkipCounter) -> Optional[Decoded]:
    """Raw sample -> pixels and label, or None (counted as skipped) if it is broken."""
    url, key = raw["__url__"], raw["__key__"]
    ext = next((k for k in IMAGE_KEYS if k in raw), None)
    label = None
    try:
        if ext is None:
            raise ValueError(f"no image member (found: {', '.join(k for k in raw if not k.startswith('__'))})")
        if spec.num_classes:
            text = raw.get("cls", raw.get("label"))
            if text is None:
                raise DataError(f"{url}: sample {key} has no label ({spec.shards.label_key} is {spec.num_classes}): give every sample a KEY.cls (or KEY.label) member "
                                "holding its class index, or train unconditionally (model.num_classes=0)")
            label = int(text)
        pixels = decode_raw(raw[ext], spec.channels) if ext == "npy" else decode_image(raw[ext], spec.channels, _PIL_FORMATS.get(ext))
    except DataError:
        raise
    except Exception as exc:  # PIL, numpy and int() raise many types; every one means a broken sample
        counter.bad(url, f"sample {key} skipped ({type(exc).__name__}: {exc})")
        return None
    if label is not None and not 0 <= label < spec.num_classes:
        raise DataError(f"{url}: sample {key} has label {label}, outside 0..{spec.num_classes - 1} of {spec.shards.label_key}")
    if spec.paired and pixels.shape[1] % 2:
        raise DataError(f"{url}: sample {key} is {pixels.shape[1]} pixels wide, but data.paired reads side-by-side A|B images (an even width)")
    return Decoded(key, url, pixels, label)


def iter_decoded(spec: StreamSpec, counter: SkipCounter, *, worker: int, num_workers: int, start: int, resampled: bool) -> Iterator[Decoded]:
    """Decoded, shuffled samples of one (rank, worker) stream; see `shard_order` for `resampled`."""
    urls = shard_order(spec.shards.urls, seed=spec.seed, rank=spec.rank, world_size=spec.world_size, worker=worker, num_workers=num_workers, start=start, resampled=resampled)
    raw = (sample for url in urls for sample in read_shard(url, counter, spec.shards.expected(url)))
    rng = random.Random(derive_seed(spec.seed, spec.rank, worker, start, _SEED_SHUFFLE))
    for item in shuffled(raw, spec.shuffle_buffer, rng):
        decoded = decode_sample(item, spec, counter)
        if decoded is not None:
            yield decoded


def to_images(pixels: list[np.ndarray], resolution: int, paired: bool = False) -> torch.Tensor:
    """uint8 [H, W, C] arrays -> uint8 [N, C, resolution, resolution], resized in one call when
    they share a size (the usual case: shards written at one resolution). `paired`: each is a
    side-by-side A|B image, split first into [2C, H, W/2] (split_pair)."""
    if all(p.shape == pixels[0].shape for p in pixels):
        height, width, channels = pixels[0].shape
        x = np.empty((len(pixels), channels, height, width), np.uint8)  # [N, C, H, W]
        for i, p in enumerate(pixels):
            x[i] = p.transpose(2, 0, 1)  # numpy copies this layout change faster than torch
        x_t = torch.from_numpy(x)
        return resize_images(split_pair(x_t) if paired else x_t, resolution)
    return torch.cat([to_images([p], resolution, paired) for p in pixels])


def iter_batches(spec: StreamSpec, counter: SkipCounter, *, worker: int, num_workers: int, start: int) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor], int]]:
    """Full micro-batches (x uint8 [B, C, H, W], y int64 [B] or None, skips since the last batch)."""
    flip_gen = torch.Generator().manual_seed(derive_seed(spec.seed, spec.rank, worker, start, _SEED_FLIP))
    crop_gen = torch.Generator().manual_seed(derive_seed(spec.seed, spec.rank, worker, start, _SEED_CROP))
    load = max(spec.load_size, spec.resolution)
    batch: list[Decoded] = []
    for decoded in iter_decoded(spec, counter, worker=worker, num_workers=num_workers, start=start, resampled=True):
        batch.append(decoded)
        if len(batch) < spec.micro_batch:
            continue
        x = to_images([d.pixels for d in batch], load, spec.paired)  # [B, C, H, W]
        if load > spec.resolution:
            x = crop(x, crop_offsets(len(x), load, spec.resolution, crop_gen), spec.resolution)
        if spec.xflip:
            flip = torch.rand(len(batch), generator=flip_gen) < 0.5
            x[flip] = x[flip].flip(-1)
        y = torch.tensor([d.label for d in batch], dtype=torch.int64) if spec.num_classes else None
        batch = []
        yield x, y, counter.take_unreported()


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore the signals that ask a run to stop (a Ctrl-C or a cluster's SIGTERM
    reaches the whole process group): the training process finishes its iteration, writes its
    checkpoint and ends them itself (docs/design.md, "Preemption and requeue"); a worker that
    died on the signal would fail that last iteration."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


class ShardStream(IterableDataset):
    """The batches of one rank, for a DataLoader; each worker process reads its own stream.

    Items are (x, y, note): `note` carries the skip count since the last batch, which the main
    process sums for `stats()`, or a worker's error message, which it raises as one clean line.
    """

    def __init__(self, spec: StreamSpec, start: int):
        super().__init__()
        self.spec = spec
        self.start = start

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        counter = SkipCounter(self.spec.max_skipped_fraction)
        try:
            for x, y, skipped in iter_batches(self.spec, counter, worker=worker, num_workers=num_workers, start=self.start):
                yield x, y, {"skipped": skipped}
        except BigtrainError as exc:
            yield None, None, {"error": str(exc)}


def peek_channels(url: str) -> int:
    """Channels of the first image in a shard (1 = grey, 3 = colour), for shards without dataset.json."""
    for raw in read_shard(url, SkipCounter(1.0)):
        ext = next((k for k in IMAGE_KEYS if k in raw), None)
        if ext is None:
            continue
        try:
            if ext == "npy":
                return int(decode_raw(raw[ext]).shape[2])
            with Image.open(io.BytesIO(raw[ext])) as image:
                return channels_of(image)
        except Exception as exc:  # PIL and numpy raise many types for a bad image
            raise DataError(f"{url}: first image {raw['__key__']}.{ext} is unreadable ({exc})") from None
    raise DataError(f"{url}: holds no images")


# ---------------------------------------------------------------------------------------------
# The source the training loop uses
# ---------------------------------------------------------------------------------------------


class ShardSource:
    """Infinite micro-batches of one rank from WebDataset shards (see the module docstring)."""

    def __init__(self, cfg: DataConfig, *, micro_batch: int, rank: int, world_size: int, seed: int, num_classes: int = 0):
        shuffle_buffer = int(cfg.shuffle_buffer)
        max_skipped = float(cfg.max_skipped_fraction)
        if shuffle_buffer < 0:
            raise ConfigError("data.shuffle_buffer", f"must be >= 0, got {shuffle_buffer}")
        if not 0.0 <= max_skipped <= 1.0:
            raise ConfigError("data.max_skipped_fraction", f"must be in [0, 1], got {max_skipped}")
        shards = resolve_shards(cfg.path, cfg.dataset_json)
        check_local_shards(shards.urls)
        channels = shards.channels or peek_channels(shards.urls[0])
        if shards.meta_path is None and num_classes:  # foreign shards (webdataset, img2dataset): labels as model.num_classes says
            shards = replace(shards, num_classes=num_classes, label_key="model.num_classes")
        self.num_workers = cfg.num_workers
        self.spec = StreamSpec(
            shards=shards,
            channels=channels,
            resolution=cfg.resolution,
            num_classes=shards.num_classes,
            xflip=cfg.xflip,
            micro_batch=micro_batch,
            shuffle_buffer=shuffle_buffer,
            max_skipped_fraction=max_skipped,
            seed=seed,
            rank=rank,
            world_size=world_size,
            load_size=cfg.load_size,
            paired=cfg.paired,
        )
        self.info = DataInfo("image", (channels * (2 if cfg.paired else 1), cfg.resolution, cfg.resolution), shards.num_classes)
        self._skipped = 0

    def batches(self, start: int = 0, size: Optional[int] = None) -> Iterator[Batch]:
        """Infinite batches of `size` samples (default: the micro-batch); `start` (samples
        already served) reseeds every stream.

        Worker w of this rank yields micro-batches w, w + W, w + 2W, ... (the DataLoader keeps
        that order), so the stream is reproducible for a fixed number of workers.
        """
        # the seeds take the position in micro-batches, as before positions were counted in
        # samples (the micro-batch is fixed for a run), so shard streams resume as they did
        spec = replace(self.spec, micro_batch=size) if size else self.spec
        if start % spec.micro_batch:
            raise ValueError(f"shard streams resume at whole micro-batches: {start} samples is not a multiple of {spec.micro_batch}")
        loader = DataLoader(ShardStream(spec, start // spec.micro_batch), batch_size=None, num_workers=self.num_workers,
                            worker_init_fn=_ignore_stop_signals if self.num_workers else None)
        batches = iter(loader)
        # workers ignore SIGTERM, so multiprocessing's exit handler (terminate, then join) would
        # wait for them forever: they are shut down the DataLoader's own way first, when this
        # generator ends or closes, or at exit if it never did (atexit runs the latest first)
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            atexit.register(shutdown)
        try:
            for x, y, note in batches:
                if "error" in note:
                    raise DataError(note["error"])
                self._skipped += note["skipped"]
                yield x, y
        finally:
            if shutdown is not None:
                atexit.unregister(shutdown)
                shutdown()

    def samples(self, *, worker: int = 0, num_workers: int = 1, start: int = 0, resampled: bool = True, counter: Optional[SkipCounter] = None) -> Iterator[Sample]:
        """Decoded samples of this rank's stream for one loader worker, without a DataLoader.

        With `resampled=False` it is one epoch over this (rank, worker)'s share of the shards:
        all ranks and workers together read every sample exactly once (tests, statistics).
        Skips are counted into `counter` when one is given.
        """
        counter = counter or SkipCounter(self.spec.max_skipped_fraction)
        for d in iter_decoded(self.spec, counter, worker=worker, num_workers=num_workers, start=start, resampled=resampled):
            yield Sample(d.key, d.shard, to_images([d.pixels], self.spec.resolution, self.spec.paired)[0], d.label)

    def stats(self) -> dict[str, float]:
        return {"data/skipped": float(self._skipped)}

    def restore_stats(self, stats: dict[str, float]) -> None:
        # a resumed stream refills its shuffle buffer and meets the same bad samples again, so
        # the total grows past an uninterrupted run's, but it never goes back
        self._skipped = int(stats.get("data/skipped", 0))
