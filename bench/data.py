"""Data loading: the shards source against a plain PyTorch Dataset + DataLoader over PNG files.

All read the same images, stored as individual PNG files in class folders (what the plain loader
reads, the way torchvision's ImageFolder does) and as two sets of shards made from that folder by
make-shards: `--format png` and `--format raw` (uint8 pixels, nothing to decode). All decode in
`workers` DataLoader worker processes and hand uint8 [B, C, H, W] batches with int64 labels to
the main process, which only counts them. `ratio` is PNG shards / folder, `raw_ratio` raw shards
/ folder; `*_shard_bytes_per_image` is the shards' size on disk divided by the image count.

Each measurement times half the data set's images after the first batch (worker start-up and the
shard loader's shuffle-buffer fill excluded), so no image is read twice. `--cache cold` first
evicts both copies from the page cache (posix_fadvise DONTNEED on our own files only): the case
of a data set larger than RAM, which is what shards are for; `warm` reads from the page cache.
Loaders alternate over `--repeats` rounds; medians are reported. Prints one JSON object.

    python bench/data.py [--resolutions 32 128] [--workers 1 2] [--cache warm cold] [--images 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bigtrain.config import DataConfig
from bigtrain.data.shard_writer import make_shards
from bigtrain.data.shards import ShardSource

CLASSES = 10
SHARD_FORMATS = ("png", "raw")  # make-shards --format of the shard sets compared with the folder


def smooth_images(n: int, res: int, seed: int = 0) -> np.ndarray:
    """uint8 [N, res, res, 3] images that compress like photos (smooth shapes plus a little noise).

    Pure noise would make PNGs several times larger than real images and time the disk instead.
    """
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, size=(n, 3, 4, 4)).astype(np.float32))
    x = torch.nn.functional.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False)
    x = x + torch.from_numpy(rng.normal(0, 4, size=x.shape).astype(np.float32))
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_folder(root: Path, images: np.ndarray) -> Path:
    for i, image in enumerate(images):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:06d}.png", compress_level=6)
    return root


class PngFolder(Dataset):
    """The plain baseline: one PNG file per image, label = index of its sorted class folder."""

    def __init__(self, root: Path):
        classes = sorted(p.name for p in root.iterdir())
        self.items = [(path, label) for label, name in enumerate(classes) for path in sorted((root / name).iterdir())]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1), label  # [C, H, W]


def folder_batches(root: Path, batch: int, workers: int) -> Iterator[torch.Tensor]:
    loader = DataLoader(PngFolder(root), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    for x, _ in loader:
        yield x


def shard_batches(
    dataset_json: Path, res: int, batch: int, workers: int, shuffle_buffer: int
) -> Iterator[torch.Tensor]:
    cfg = DataConfig(source="shards", path=str(dataset_json), resolution=res, num_workers=workers)
    cfg.shuffle_buffer = shuffle_buffer  # set directly: config.py may not declare the field yet
    source = ShardSource(cfg, micro_batch=batch, rank=0, world_size=1, seed=0)
    for x, _ in source.batches():
        yield x


def evict(folder: Path) -> None:
    """Drop our files under `folder` from the page cache, so the next read comes from the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def images_per_second(batches: Iterator[torch.Tensor], images: int) -> float:
    """Images/s over `images` images, timed from the first batch on (start-up excluded)."""
    next(batches)
    start, seen = time.perf_counter(), 0
    while seen < images:
        seen += len(next(batches))
    rate = seen / (time.perf_counter() - start)
    batches.close()  # shuts the loader's workers down before the next measurement
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", nargs="+", choices=("warm", "cold"), default=["warm", "cold"])
    parser.add_argument("--images", type=int, default=2048, help="images in the data set; half of them are timed")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shuffle-buffer", type=int, default=256, help="shard loader's shuffle buffer (samples)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    timed = args.images // 2
    if timed < args.batch or args.shuffle_buffer + args.batch + timed > args.images:
        parser.error("--images must exceed 2 x --batch and 2 x (--shuffle-buffer + --batch)")

    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.resolutions:
            root = write_folder(Path(tmp) / f"png{res}", smooth_images(args.images, res))
            shards = {fmt: Path(tmp) / f"{fmt}_shards{res}" for fmt in SHARD_FORMATS}
            metas = {
                fmt: make_shards(root, folder, shard_size=256, image_format=fmt, progress=False)
                for fmt, folder in shards.items()
            }
            png_bytes = sum(p.stat().st_size for p in root.rglob("*.png"))
            for cache in args.cache:
                for workers in args.workers:
                    rates: dict[str, list[float]] = {name: [] for name in (*SHARD_FORMATS, "folder")}
                    for _ in range(args.repeats):
                        for name in rates:
                            if cache == "cold":
                                for folder in (root, *shards.values()):
                                    evict(folder)
                            if name == "folder":
                                batches = folder_batches(root, args.batch, workers)
                            else:
                                batches = shard_batches(
                                    shards[name] / "dataset.json", res, args.batch, workers, args.shuffle_buffer
                                )
                            rates[name].append(images_per_second(batches, timed))
                    rate = {name: statistics.median(values) for name, values in rates.items()}
                    results.append(
                        {
                            "resolution": res,
                            "cache": cache,
                            "workers": workers,
                            "shards_img_per_s": round(rate["png"], 1),  # PNG shards
                            "raw_shards_img_per_s": round(rate["raw"], 1),
                            "folder_img_per_s": round(rate["folder"], 1),
                            "ratio": round(rate["png"] / rate["folder"], 3),
                            "raw_ratio": round(rate["raw"] / rate["folder"], 3),
                            "mean_png_bytes": round(png_bytes / args.images),
                            "png_shard_bytes_per_image": round(
                                sum(s["bytes"] for s in metas["png"]["shards"]) / args.images
                            ),
                            "raw_shard_bytes_per_image": round(
                                sum(s["bytes"] for s in metas["raw"]["shards"]) / args.images
                            ),
                            "num_shards": len(metas["png"]["shards"]),
                        }
                    )
    print(
        json.dumps(
            {
                "benchmark": "data_loader",
                "images": args.images,
                "timed_images": timed,
                "batch": args.batch,
                "shuffle_buffer": args.shuffle_buffer,
                "repeats": args.repeats,
                "cpu_count": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
                "seconds": round(time.perf_counter() - started, 1),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
