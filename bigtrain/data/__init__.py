"""Training data: every source yields the same thing to the loop.

A source streams micro-batches for one rank: `x` is uint8 [B, C, H, W] for images (the loop
moves it to the device and maps it to [-1, 1] there) or float32 [B, D] for vectors; `y` is
int64 [B] class labels, or None for unlabelled data; the loop hands them to recipes as named
tensors (`{"x", "y"}`) of a named stream. Streams are infinite and deterministic in (run seed,
rank, position): `batches(start)` resumes right after the first `start` samples, which is all
the loop needs to save for an exact resume (positions are counted in samples, so they stay
meaningful when the number of accumulation rounds changes).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bigtrain.config import DataConfig
from bigtrain.errors import ConfigError


@dataclass(frozen=True)
class DataInfo:
    kind: str  # "image" | "vector"
    shape: tuple[int, ...]  # (C, H, W) for images, (D,) for vectors, as the loop receives them
    num_classes: int  # 0 when the data has no labels
    label_counts: tuple[int, ...] = ()  # samples per class, where the source knows them (fakes' labels may follow them)

    def to_dict(self) -> dict:
        counts = {"label_counts": list(self.label_counts)} if self.label_counts else {}
        return {"kind": self.kind, "shape": list(self.shape), "num_classes": self.num_classes, **counts}

    @staticmethod
    def from_dict(data: dict) -> "DataInfo":
        counts = tuple(int(c) for c in data.get("label_counts", ()))
        return DataInfo(data["kind"], tuple(data["shape"]), int(data["num_classes"]), counts)


Batch = tuple[torch.Tensor, Optional[torch.Tensor]]


class Source(Protocol):
    info: DataInfo

    def batches(self, start: int = 0, size: Optional[int] = None) -> Iterator[Batch]:
        """Infinite batches of `size` samples (default: the micro-batch it was built with) for
        this rank, beginning after the first `start` samples."""
        ...

    def stats(self) -> dict[str, float]:
        """Cumulative counters for metrics.jsonl (e.g. `data/skipped`); may be empty."""
        ...

    def restore_stats(self, stats: dict[str, float]) -> None:
        """Continue the counters of `stats()` from a checkpoint (this rank's)."""
        ...


def build_source(
    cfg: DataConfig, *, micro_batch: int, rank: int, world_size: int, seed: int, num_classes: int = 0
) -> Source:
    """The data source named by `data.source`. `num_classes` (model.num_classes) lets shards
    that no dataset.json describes serve the labels of their `.cls` / `.label` members."""
    if not cfg.path:
        raise ConfigError("data.path", "is empty; point it at the training data")
    if cfg.source == "npz":
        from bigtrain.data.npz import NpzSource

        source: Source = NpzSource(cfg, micro_batch=micro_batch, rank=rank, seed=seed)
    elif cfg.source == "shards":
        from bigtrain.data.shards import ShardSource

        source = ShardSource(
            cfg, micro_batch=micro_batch, rank=rank, world_size=world_size, seed=seed, num_classes=num_classes
        )
    else:
        raise ConfigError("data.source", f"unknown source {cfg.source!r}")
    channels = source.info.shape[0] // (2 if cfg.paired else 1)
    if cfg.channels and source.info.kind == "image" and channels != cfg.channels:
        raise ConfigError("data.channels", f"is {cfg.channels} but the images of {cfg.path} have {channels}")
    return source


ASSUMED_CHANNELS = 3  # what `--dry-run` takes for images it cannot read, unless data.channels says


def assumed_info(cfg: DataConfig, num_classes: int) -> DataInfo:
    """The data a config describes, without reading it (`--dry-run` before the data exists):
    images of data.channels (else 3) channels at data.resolution (paired: both halves), labelled
    when the model is conditional."""
    channels = (cfg.channels or ASSUMED_CHANNELS) * (2 if cfg.paired else 1)
    return DataInfo("image", (channels, cfg.resolution, cfg.resolution), num_classes)


SINGLE_STREAM = ("real",)  # the stream of recipes that read one: data.* itself


def stream_config(cfg: DataConfig, stream: str) -> DataConfig:
    """Stream `stream`'s data section: data.* with data.streams.<stream> over it (a recipe that
    reads several streams, e.g. CycleGAN's unpaired A and B); errors name data.streams.<stream>.<key>."""
    over = cfg.streams[stream]
    section = f"data.streams.{stream}"
    base = {k: v for k, v in vars(cfg).items() if k != "streams"}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig(**base)), {k: v for k, v in dict(over).items()})
        out = OmegaConf.to_object(merged)
    except ConfigError as exc:
        raise ConfigError(f"{section}.{exc.key.removeprefix('data.')}", exc.reason) from None
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{section}.{cause.key.removeprefix('data.')}", cause.reason) from None
        key = getattr(exc, "full_key", "") or ""
        raise ConfigError(f"{section}.{key}".rstrip("."), str(exc).strip().splitlines()[0]) from None
    if out.streams:
        raise ConfigError(f"{section}.streams", "a stream cannot have streams of its own")
    return out


def build_sources(
    cfg: DataConfig,
    streams: tuple[str, ...],
    *,
    micro_batch: int,
    rank: int,
    world_size: int,
    seed: int,
    num_classes: int = 0,
) -> dict[str, Source]:
    """One source per stream a recipe reads. The single stream `real` is data.* itself, seeded as
    ever; several streams each come from data.streams.<name> over data.*, each with its own seed
    (so two streams of one file still draw independent orders)."""
    if tuple(streams) == SINGLE_STREAM:
        if cfg.streams:
            raise ConfigError(
                "data.streams",
                f"this recipe reads one stream (data.* itself), not {', '.join(sorted(cfg.streams))}; remove "
                "data.streams",
            )
        return {
            "real": build_source(
                cfg, micro_batch=micro_batch, rank=rank, world_size=world_size, seed=seed, num_classes=num_classes
            )
        }
    for name in cfg.streams:
        if name not in streams:
            raise ConfigError(
                f"data.streams.{name}", f"this recipe reads no stream {name!r}; its streams are {', '.join(streams)}"
            )
    from bigtrain.seeding import derive_seed

    sources = {}
    for name in streams:
        if name not in cfg.streams:
            raise ConfigError(
                f"data.streams.{name}",
                f"is missing: this recipe reads the streams {', '.join(streams)}; give each its data keys (path, ...)",
            )
        try:
            sources[name] = build_source(
                stream_config(cfg, name),
                micro_batch=micro_batch,
                rank=rank,
                world_size=world_size,
                seed=derive_seed(seed, zlib.crc32(name.encode())),
                num_classes=num_classes,
            )
        except ConfigError as exc:
            if not exc.key.startswith("data."):
                raise
            raise ConfigError(f"data.streams.{name}.{exc.key.removeprefix('data.')}", exc.reason) from None
    return sources
