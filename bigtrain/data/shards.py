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

Which shards: shard_set.py; reading one shard (our own tar reader, every fault counted):
tar_reader.py; here the stream's order, shuffle buffer, decoding and batches, and the source.
"""

from __future__ import annotations

import atexit
import io
import random
import signal
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigtrain.config import DataConfig
from bigtrain.data import Batch, DataInfo
from bigtrain.data.images import channels_of, decode_image, decode_raw
from bigtrain.data.shard_set import ShardSet, check_local_shards, resolve_shards
from bigtrain.data.tar_reader import SkipCounter, read_shard
from bigtrain.data.transforms import crop, crop_offsets, resize_images, split_pair
from bigtrain.errors import BigtrainError, ConfigError, DataError
from bigtrain.seeding import derive_seed

IMAGE_KEYS = ("png", "jpg", "jpeg", "npy", "webp", "bmp", "ppm", "pgm", "tif", "tiff")  # npy: raw uint8 [H, W, C]
_PIL_FORMATS = {"png": ("PNG",), "jpg": ("JPEG",), "jpeg": ("JPEG",)}  # skip PIL's format probing
# Seed streams of one worker, kept apart so that e.g. a skipped sample does not shift the flips.
_SEED_SHARDS, _SEED_SHUFFLE, _SEED_FLIP, _SEED_CROP = 0, 1, 2, 3


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


def shard_order(
    urls: tuple[str, ...],
    *,
    seed: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    start: int,
    resampled: bool,
) -> Iterator[str]:
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
                raise DataError(
                    f"{url}: sample {key} has no label ({spec.shards.label_key} is {spec.num_classes}): give every "
                    "sample a KEY.cls (or KEY.label) member "
                    "holding its class index, or train unconditionally (model.num_classes=0)"
                )
            label = int(text)
        pixels = (
            decode_raw(raw[ext], spec.channels)
            if ext == "npy"
            else decode_image(raw[ext], spec.channels, _PIL_FORMATS.get(ext))
        )
    except DataError:
        raise
    except Exception as exc:  # PIL, numpy and int() raise many types; every one means a broken sample
        counter.bad(url, f"sample {key} skipped ({type(exc).__name__}: {exc})")
        return None
    if label is not None and not 0 <= label < spec.num_classes:
        raise DataError(
            f"{url}: sample {key} has label {label}, outside 0..{spec.num_classes - 1} of {spec.shards.label_key}"
        )
    if spec.paired and pixels.shape[1] % 2:
        raise DataError(
            f"{url}: sample {key} is {pixels.shape[1]} pixels wide, but data.paired reads side-by-side A|B images (an "
            "even width)"
        )
    return Decoded(key, url, pixels, label)


def iter_decoded(
    spec: StreamSpec, counter: SkipCounter, *, worker: int, num_workers: int, start: int, resampled: bool
) -> Iterator[Decoded]:
    """Decoded, shuffled samples of one (rank, worker) stream; see `shard_order` for `resampled`."""
    urls = shard_order(
        spec.shards.urls,
        seed=spec.seed,
        rank=spec.rank,
        world_size=spec.world_size,
        worker=worker,
        num_workers=num_workers,
        start=start,
        resampled=resampled,
    )
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


def iter_batches(
    spec: StreamSpec, counter: SkipCounter, *, worker: int, num_workers: int, start: int
) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor], int]]:
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
            for x, y, skipped in iter_batches(
                self.spec, counter, worker=worker, num_workers=num_workers, start=self.start
            ):
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

    def __init__(
        self, cfg: DataConfig, *, micro_batch: int, rank: int, world_size: int, seed: int, num_classes: int = 0
    ):
        shuffle_buffer = int(cfg.shuffle_buffer)
        max_skipped = float(cfg.max_skipped_fraction)
        if shuffle_buffer < 0:
            raise ConfigError("data.shuffle_buffer", f"must be >= 0, got {shuffle_buffer}")
        if not 0.0 <= max_skipped <= 1.0:
            raise ConfigError("data.max_skipped_fraction", f"must be in [0, 1], got {max_skipped}")
        shards = resolve_shards(cfg.path, cfg.dataset_json)
        check_local_shards(shards.urls)
        channels = shards.channels or peek_channels(shards.urls[0])
        if (
            shards.meta_path is None and num_classes
        ):  # foreign shards (webdataset, img2dataset): labels as model.num_classes says
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
        shape = (channels * (2 if cfg.paired else 1), cfg.resolution, cfg.resolution)
        self.info = DataInfo("image", shape, shards.num_classes, shards.class_counts)
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
            raise ValueError(
                f"shard streams resume at whole micro-batches: {start} samples is not a multiple of {spec.micro_batch}"
            )
        loader = DataLoader(
            ShardStream(spec, start // spec.micro_batch),
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=_ignore_stop_signals if self.num_workers else None,
        )
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

    def samples(
        self,
        *,
        worker: int = 0,
        num_workers: int = 1,
        start: int = 0,
        resampled: bool = True,
        counter: Optional[SkipCounter] = None,
    ) -> Iterator[Sample]:
        """Decoded samples of this rank's stream for one loader worker, without a DataLoader.

        With `resampled=False` it is one epoch over this (rank, worker)'s share of the shards:
        all ranks and workers together read every sample exactly once (tests, statistics).
        Skips are counted into `counter` when one is given.
        """
        counter = counter or SkipCounter(self.spec.max_skipped_fraction)
        for d in iter_decoded(
            self.spec, counter, worker=worker, num_workers=num_workers, start=start, resampled=resampled
        ):
            yield Sample(d.key, d.shard, to_images([d.pixels], self.spec.resolution, self.spec.paired)[0], d.label)

    def stats(self) -> dict[str, float]:
        return {"data/skipped": float(self._skipped)}

    def restore_stats(self, stats: dict[str, float]) -> None:
        # a resumed stream refills its shuffle buffer and meets the same bad samples again, so
        # the total grows past an uninterrupted run's, but it never goes back
        self._skipped = int(stats.get("data/skipped", 0))
