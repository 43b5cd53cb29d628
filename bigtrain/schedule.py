"""The schedule: a pure function of images seen (`nimg`) -> the plan of the next iteration.

The plan holds each player's learning rate, the global batch (hence the accumulation rounds)
and the recipe's own values (a resolution, a fade alpha, ...). Because nothing in it depends on
anything but `nimg` and the config, a resumed run derives the same plan as an uninterrupted
one (docs/design.md, "Schedule").
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from bigtrain.config import CurveConfig, ScheduleConfig


@dataclass(frozen=True)
class Plan:
    nimg: int  # images seen before this iteration
    batch_size: int  # global batch of this iteration
    lr: dict[str, float]  # player name -> learning rate
    values: dict[str, float] = field(default_factory=dict)  # the recipe's values (resolution, alpha, ...)
    micro_batch: int = 0  # per process per accumulation round (set by the loop: the recipe's or train.micro_batch's)


def factor(curve: CurveConfig, nimg: int, total_kimg: float, batch: int) -> float:
    """The learning-rate factor of `curve` for the iteration that starts at `nimg` with `batch`
    images. Warm-up ramps by the images seen after the iteration, so its first step trains."""
    kimg = nimg / 1000
    if curve.shape == "step":
        value = curve.gamma ** bisect.bisect_right(list(curve.milestones_kimg), kimg)
    elif curve.shape == "linear":
        end = curve.end_kimg or total_kimg
        t = min(max((kimg - curve.start_kimg) / max(end - curve.start_kimg, 1e-12), 0.0), 1.0)
        value = 1.0 + t * (curve.final - 1.0)
    else:
        value = 1.0
    if curve.warmup_kimg > 0:
        value *= min(1.0, (nimg + batch) / (curve.warmup_kimg * 1000))
    return value


def batch_size(cfg: ScheduleConfig, nimg: int, default: int) -> int:
    """The global batch for the iteration that starts at `nimg` (piecewise constant)."""
    size = default
    for kimg, batch in cfg.batch:
        if nimg >= kimg * 1000:
            size = int(batch)
    return size


def make_plan(
    cfg: ScheduleConfig,
    nimg: int,
    *,
    base_lr: dict[str, float],
    default_batch: int,
    total_kimg: float,
    values: dict[str, float] | None = None,
) -> Plan:
    """The plan at `nimg` for players with `base_lr` (name -> optim.<name>.lr)."""
    batch = batch_size(cfg, nimg, default_batch)
    lr = {}
    for name, base in base_lr.items():
        curve = cfg.lr.get(name.lower())
        lr[name] = base * factor(curve, nimg, total_kimg, batch) if curve is not None else base
    return Plan(nimg=nimg, batch_size=batch, lr=lr, values=dict(values or {}))
