"""Provenance fields of a protocol record: what made a number besides the Inception side.

    code_version    "bigtrain 0.1.0 (git 1a2b3c4d5e6f)", "+modified" for a dirty checkout
    config_sha256   sha256 of a resolved config (canonical JSON: sorted keys, no spaces)
    data_sha256     a data set's content hash (see `data_sha256`)
    hardware        the device in words ("cpu: x86_64, 16 cores", "cuda: NVIDIA H100 80GB HBM3")
    label_sampling  how fake labels were drawn
    training        a generator's training record (`training_record`)

Imports nothing from the engine: the engine hands in what it knows (a checkpoint's state, a live
run's counters).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

import bigtrain

_CHUNK = 1 << 20  # bytes read per hash update
TRAINING_MAX_BYTES = 1 << 30  # periodic evaluation hashes data sets up to 1 GiB (a make-shards set: any size)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """bigtrain's version, with the git commit of its checkout when it runs from one."""
    root = Path(bigtrain.__file__).resolve().parent.parent
    version = f"bigtrain {bigtrain.__version__}"
    if not (root / ".git").exists():
        return version
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "bigtrain"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git here: the version alone
        return version
    return f"{version} (git {commit}{'+modified' if dirty else ''})" if commit else version


def config_sha256(config: dict) -> str:
    """sha256 of a resolved config (as config.yaml and checkpoints hold it)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hardware(device: torch.device | str) -> str:
    """The device that computed something, in words."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {platform.machine() or 'unknown'}, {os.cpu_count()} cores"
    return device.type


def label_sampling(num_classes: int, class_idx: Optional[int]) -> str:
    """How the labels of generated samples were drawn (bigtrain.sampling.labels)."""
    if not num_classes:
        return "none (unconditional)"
    if class_idx is not None:
        return f"class {class_idx} only"
    return f"uniform over {num_classes} classes"


def data_sha256(path: Optional[str], max_bytes: Optional[int] = None) -> Optional[str]:
    """A data set's content hash, the same for the same files whatever reads them:
    - a make-shards set (its dataset.json, or a folder holding one): from the sha256 of every
      shard recorded there (nothing is read again);
    - a file (.npz, one .tar): sha256 of its bytes (what `sha256sum FILE` prints);
    - a folder or a brace pattern: sha256 over every file's relative name and bytes, sorted.
    None for a URL or a path that is not here (a run evaluated on another machine), and where
    the files to read hold more than `max_bytes` (training passes TRAINING_MAX_BYTES: a periodic
    evaluation must not stall every rank while one reads a large image folder)."""
    if not path or "://" in str(path):
        return None
    p = Path(path)
    if p.is_dir() and (p / "dataset.json").is_file():
        p = p / "dataset.json"
    try:
        stamp = p.stat().st_mtime_ns if p.exists() else None
    except OSError:
        return None
    return _data_sha256(str(p), stamp, max_bytes)


@functools.lru_cache(maxsize=16)
def _data_sha256(path: str, stamp: Optional[int], max_bytes: Optional[int]) -> Optional[str]:
    p = Path(path)
    if p.name == "dataset.json":
        try:
            shards = json.loads(p.read_text())["shards"]
            listed = sorted((s["name"], s["sha256"]) for s in shards)
        except (OSError, ValueError, KeyError, TypeError):
            listed = None
        if listed:
            return hashlib.sha256(json.dumps(listed).encode()).hexdigest()
    if p.is_file():
        return _hash_files([(None, p)], max_bytes)
    if p.is_dir():
        return _hash_files([(str(f.relative_to(p)), f) for f in sorted(p.rglob("*")) if f.is_file()], max_bytes)
    if "{" in path:
        from braceexpand import braceexpand

        files = [Path(f) for f in braceexpand(path)]
        if files and all(f.is_file() for f in files):
            return _hash_files([(f.name, f) for f in files], max_bytes)
    return None


def _hash_files(files: list[tuple[Optional[str], Path]], max_bytes: Optional[int]) -> Optional[str]:
    """sha256 over each file's name (where given: a folder's content includes its names) and bytes."""
    if not files or (max_bytes is not None and sum(f.stat().st_size for _, f in files) > max_bytes):
        return None
    digest = hashlib.sha256()
    for name, f in files:
        if name is not None:
            digest.update(name.encode() + b"\0")
        with open(f, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def training_record(
    config: dict,
    *,
    nimg: int,
    wall_clock_s: Optional[float],
    processes: Optional[int],
    device: Optional[str],
    code: Optional[str],
    max_bytes: Optional[int] = None,
) -> dict:
    """What a generator's training was: its data set (path, resolution, x-flips, content hash),
    images seen, training wall-clock, processes and device, code version and config hash.
    `config` is the resolved config as a dict; None where a checkpoint does not say (older
    checkpoints hold no wall-clock, device or code version). `max_bytes`: see data_sha256."""
    data = config.get("data") or {}
    return {
        "data": data.get("path"),
        "data_sha256": data_sha256(data.get("path"), max_bytes),
        "resolution": data.get("resolution"),
        "xflip": data.get("xflip"),
        "images_seen": int(nimg),
        "wall_clock_s": None if wall_clock_s is None else round(float(wall_clock_s), 3),
        "processes": processes,
        "device": device,
        "code_version": code,
        "config_sha256": config_sha256(config),
    }
