"""Statistics and images out of a run: metrics.jsonl, TensorBoard, sample PNGs, progress bar.

`report(name, value)` keeps running sums on the device, so reporting never waits for the
accelerator; `flush` averages every statistic across ranks in one reduction and one host copy.
Throughput counts training only: time spent in `maintenance()` (grids, checkpoints, evaluation)
is reported apart, as `perf/maintenance_s`, with each rank's peak memory. Only the main process
writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

ReduceMean = Callable[[torch.Tensor], torch.Tensor]


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        *,
        is_main: bool,
        reduce_mean: ReduceMean,
        total_img: int,
        start_img: int = 0,
        progress_bar: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        start_step: Optional[int] = None,
    ):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.reduce_mean = reduce_mean
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.writer = None
        self.bar = None
        self.jsonl = None
        self._last_time = time.perf_counter()
        self._last_img = start_img
        self._maintenance = 0.0  # seconds in maintenance() since the last flush
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.run_dir / "tb"))
            if start_step is not None:
                _keep_rows_until(self.run_dir / "metrics.jsonl", start_step)
            self.jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
            if progress_bar:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total_img, initial=start_img, unit="img", unit_scale=True, dynamic_ncols=True, smoothing=0.1
                )

    def report(self, name: str, value: torch.Tensor | float) -> None:
        """Add one observation of a statistic (averaged over observations and ranks at flush)."""
        value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        if name in self.sums:
            self.sums[name] += value
            self.counts[name] += 1
        else:
            self.sums[name] = value.clone()
            self.counts[name] = 1

    def state_dict(self) -> dict:
        """This rank's observations since the last flush (saved in checkpoints, so a run resumed
        at a step between two log lines writes the same next line as an uninterrupted one)."""
        return {"sums": {n: v.detach().cpu() for n, v in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {n: v.to(self.device) for n, v in (state.get("sums") or {}).items()}
        self.counts = dict(state.get("counts") or {})

    @contextlib.contextmanager
    def maintenance(self):
        """Time spent here (a grid, a checkpoint, an evaluation) is not training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._maintenance += time.perf_counter() - start

    def advance(self, nimg: int) -> None:
        if self.bar is not None:
            self.bar.update(nimg - self.bar.n)

    def flush(self, *, step: int, nimg: int, extra: Optional[dict[str, float]] = None) -> dict[str, float]:
        """Average, write one metrics.jsonl line and TensorBoard scalars; returns the record."""
        now = time.perf_counter()
        record: dict[str, float] = {"step": step, "kimg": round(nimg / 1000, 3)}
        names = sorted(self.sums)
        means = [self.sums[n].to(self.device) / self.counts[n] for n in names]
        # each rank's peak memory in its own slot: the mean over ranks times their number gives every slot back
        peaks = torch.zeros(self.world_size, device=self.device)
        peaks[self.rank] = _peak_memory_mb(self.device)
        values = self.reduce_mean(
            torch.cat([*(m.reshape(1) for m in means), peaks])
        ).tolist()  # the one host sync per flush
        record.update({n: v for n, v in zip(names, values)})
        train_s = now - self._last_time - self._maintenance
        if train_s > 0 and nimg > self._last_img:
            record["perf/img_per_s"] = (nimg - self._last_img) / train_s
        record["perf/maintenance_s"] = self._maintenance
        record.update({f"perf/peak_mem_mb/rank{r}": v * self.world_size for r, v in enumerate(values[len(names) :])})
        record.update(extra or {})
        self.sums.clear()
        self.counts.clear()
        self._last_time, self._last_img, self._maintenance = now, nimg, 0.0
        if self.is_main:
            self.write(record, step)
            if self.bar is not None:
                shown = {k.split("/")[-1]: f"{v:.3g}" for k, v in record.items() if k.startswith("loss/")}
                self.bar.set_postfix(shown, refresh=False)
        return record

    def write(self, record: dict, step: int) -> None:
        """Write an already-reduced record (main process only)."""
        if not self.is_main:
            return
        self.jsonl.write(json.dumps(_jsonable(record)) + "\n")
        for name, value in record.items():
            if name not in ("step", "kimg") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, global_step=int(round(record["kimg"] * 1000)))
        self.writer.flush()

    def image(self, name: str, grid: np.ndarray, nimg: int) -> Optional[Path]:
        """Save a uint8 [H, W, C] grid as samples/<name>-KKKKKK.KKKkimg.png and in TensorBoard."""
        if not self.is_main:
            return None
        # kimg to three decimals: grids less than 1 kimg apart keep their own files, in order
        path = self.run_dir / "samples" / f"{name}-{nimg // 1000:06d}.{nimg % 1000:03d}kimg.png"
        save_png(grid, path)
        self.writer.add_image(name, grid, global_step=nimg, dataformats="HWC")
        self.writer.flush()
        return path

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _keep_rows_until(path: Path, step: int) -> None:
    """Rewrite metrics.jsonl without the rows after `step` (a resumed run logs those steps
    again, with the same values) and without a line torn by a kill; atomic."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line, cut short by a kill
        if row.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process on `device`: allocated CUDA memory, or on a CPU the
    resident set's high-water mark (all of the process, not only tensors)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def save_png(image: np.ndarray, path: Path) -> None:
    """uint8 [H, W, C] (C = 1 or 3) -> PNG."""
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def _jsonable(record: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
