"""Which shards a `data.source: shards` stream reads: `data.path` as a dataset.json (written by
make-shards: shard names, per-shard sample counts, channels, classes), a brace pattern
(`train-{000000..000127}.tar`) or several joined by `::`, each a local path, an http(s) URL or a
`pipe:` command (webdataset's `gopen` opens them)."""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterable, Optional
from urllib.parse import urlparse

import webdataset as wds

from bigtrain.data.shard_writer import DATASET_JSON
from bigtrain.errors import ConfigError, DataError

_SHARD_NAME = re.compile(r"[^/\s]+\.tar(?:\.gz)?")


@dataclass(frozen=True)
class ShardSet:
    urls: tuple[str, ...]
    counts: dict = field(default_factory=dict)  # shard file name -> samples (from dataset.json)
    channels: Optional[int] = None  # None: not known without reading a sample
    num_classes: int = 0  # 0: unlabelled, or labels not described by any dataset.json
    label_key: str = "dataset.json"  # what declared num_classes (named in label errors)
    meta_path: Optional[str] = None  # the dataset.json used, if any
    class_counts: tuple[int, ...] = ()  # samples per class (dataset.json of make-shards since class_counts)

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
            raise ConfigError(
                "data.path",
                "a dataset.json read through pipe: cannot locate its shards; give the shards as data.path and the "
                "dataset.json as data.dataset_json",
            )
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
        class_counts=tuple(int(c) for c in meta.get("class_counts", ())),
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
