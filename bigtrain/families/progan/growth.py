"""Progressive growing's schedule (Karras et al. 2018): images seen -> level of detail,
resolution, fade alpha, minibatch and learning rates. A pure function of `nimg`, so a resumed
run, even mid-fade, derives exactly the values of an uninterrupted one (docs/design.md,
"Schedule").

It follows the official TrainingSchedule (tkarras/progressive_growing_of_gans, train.py):
training runs in phases of `training_kimg + transition_kimg`; phase i first stabilises at its
resolution, then fades the next one in over `transition_kimg`. The level of detail

    lod = log2(res) - log2(initial_resolution) - i - max(phase_kimg - training_kimg, 0) / transition_kimg

(clipped at 0) gives the resolution 2 ** (log2(res) - floor(lod)) and the weight of the newest
level, alpha = 1 - (lod - floor(lod)). The minibatch and learning rates are looked up by that
resolution. The official loop re-evaluates the schedule every 4 minibatches
(`minibatch_repeats`); bigtrain does at every iteration, so a fade moves in smaller steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict

from bigtrain.errors import ConfigError


@dataclass
class GrowthOptions:
    initial_resolution: int = 4  # resolution at the start (a power of 2 >= 4)
    training_kimg: float = 600.0  # images (thousands) each resolution is trained at before the next fades in
    transition_kimg: float = 600.0  # images (thousands) over which a new resolution fades in
    minibatch_base: int = 16  # global minibatch where `minibatch` names none
    minibatch: Dict[int, int] = field(default_factory=dict)  # resolution -> global minibatch
    max_minibatch_per_gpu: Dict[int, int] = field(default_factory=dict)  # resolution -> most samples per process
    micro_batch: Dict[int, int] = field(default_factory=dict)  # resolution -> samples per process per round
    g_lr: Dict[int, float] = field(default_factory=dict)  # resolution -> G's learning rate (else optim.g.lr)
    d_lr: Dict[int, float] = field(default_factory=dict)  # resolution -> D's learning rate (else optim.d.lr)
    reset_optimizer: bool = True  # clear G's and D's optimizer state where a fade starts or ends (official)

    def validate(self, prefix: str) -> None:
        r = self.initial_resolution
        if r < 4 or r & (r - 1):
            raise ConfigError(f"{prefix}.initial_resolution", f"must be a power of 2 >= 4, got {r}")
        for key in ("training_kimg", "transition_kimg"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}", f"must be >= 0, got {getattr(self, key)}")
        if self.minibatch_base < 1:
            raise ConfigError(f"{prefix}.minibatch_base", f"must be >= 1, got {self.minibatch_base}")
        for key in ("minibatch", "max_minibatch_per_gpu", "micro_batch", "g_lr", "d_lr"):
            for res, value in getattr(self, key).items():
                if res < 4 or res & (res - 1):
                    raise ConfigError(f"{prefix}.{key}.{res}", "keys are resolutions: powers of 2 >= 4")
                if value <= 0:
                    raise ConfigError(f"{prefix}.{key}.{res}", f"must be > 0, got {value}")


@dataclass(frozen=True)
class Growth:
    lod: float  # level of detail: 0 = the data's resolution, log2(res) - 2 = 4x4
    resolution: int  # the resolution trained now
    alpha: float  # weight of the newest level: 1 - (lod - floor(lod)); 1 when not fading
    minibatch: int  # global minibatch
    g_lr: float
    d_lr: float

    @property
    def fading(self) -> bool:
        return self.alpha < 1.0


def growth(opts: GrowthOptions, nimg: int, resolution: int, num_gpus: int, g_lr: float, d_lr: float) -> Growth:
    """The schedule at `nimg` images seen for data of `resolution`, on `num_gpus` processes;
    `g_lr` / `d_lr` are the base rates (optim.g.lr, optim.d.lr)."""
    kimg = nimg / 1000.0
    phase_dur = opts.training_kimg + opts.transition_kimg
    phase_idx = int(math.floor(kimg / phase_dur)) if phase_dur > 0 else 0
    phase_kimg = kimg - phase_idx * phase_dur
    resolution_log2 = int(math.log2(resolution))
    lod = float(resolution_log2) - math.floor(math.log2(opts.initial_resolution)) - phase_idx
    if opts.transition_kimg > 0:
        lod -= max(phase_kimg - opts.training_kimg, 0.0) / opts.transition_kimg
    lod = max(lod, 0.0)
    res = 2 ** (resolution_log2 - int(math.floor(lod)))
    return Growth(
        lod=lod,
        resolution=res,
        alpha=1.0 - (lod - math.floor(lod)),
        minibatch=minibatch_at(opts, res, num_gpus),
        g_lr=opts.g_lr.get(res, g_lr),
        d_lr=opts.d_lr.get(res, d_lr),
    )


def minibatch_at(opts: GrowthOptions, res: int, num_gpus: int) -> int:
    """The global minibatch at resolution `res` on `num_gpus` processes, as the official code
    sets it: the table's (else `minibatch_base`), rounded down to a multiple of the processes,
    at most `max_minibatch_per_gpu` per process."""
    minibatch = opts.minibatch.get(res, opts.minibatch_base)
    minibatch -= minibatch % num_gpus
    if res in opts.max_minibatch_per_gpu:
        minibatch = min(minibatch, opts.max_minibatch_per_gpu[res] * num_gpus)
    return minibatch


def micro_batch_at(opts: GrowthOptions, res: int, num_gpus: int, cap: int) -> int:
    """Samples per process per accumulation round at resolution `res`: `opts.micro_batch[res]`,
    else `cap` (train.micro_batch; 0: none), at most the process's share of the minibatch. The
    official code has no accumulation: with neither set, the whole share in one round."""
    share = minibatch_at(opts, res, num_gpus) // num_gpus
    if share == 0:
        raise ConfigError(
            f"progan.minibatch.{res}", f"the minibatch at {res}x{res} is smaller than the {num_gpus} processes"
        )
    micro = min(opts.micro_batch.get(res) or cap or share, share)
    if share % micro:
        key = f"progan.micro_batch.{res}" if res in opts.micro_batch else "train.micro_batch"
        raise ConfigError(
            key,
            f"{micro} does not divide the {share} samples per process of the minibatch at {res}x{res} "
            f"({minibatch_at(opts, res, num_gpus)} over {num_gpus} processes)",
        )
    return micro


def resets_optimizer(previous: float, lod: float) -> bool:
    """Whether the official loop resets the optimizers when the lod goes from `previous` to
    `lod`: when its floor or its ceiling changes, i.e. at the start and at the end of a fade."""
    return math.floor(previous) != math.floor(lod) or math.ceil(previous) != math.ceil(lod)


# The official presets (config.py of the TF code; minibatch and learning-rate dicts for
# CelebA-HQ 1024 by number of GPUs, with the fp32 per-GPU limits) and the paper's schedule.
_FP32_LIMITS = {256: 16, 512: 8, 1024: 4}
OFFICIAL_PRESETS: dict[str, dict] = {
    "v1-1gpu": dict(minibatch_base=16, minibatch={256: 14, 512: 6, 1024: 3}, training_kimg=800, transition_kimg=800),
    "v2-1gpu": dict(
        minibatch_base=4,
        minibatch={4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4},
        g_lr={1024: 0.0015},
        d_lr={1024: 0.0015},
    ),
    "v2-2gpus": dict(
        minibatch_base=8,
        minibatch={4: 256, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8},
        g_lr={512: 0.0015, 1024: 0.002},
        d_lr={512: 0.0015, 1024: 0.002},
    ),
    "v2-4gpus": dict(
        minibatch_base=16,
        minibatch={4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16},
        g_lr={256: 0.0015, 512: 0.002, 1024: 0.003},
        d_lr={256: 0.0015, 512: 0.002, 1024: 0.003},
    ),
    "v2-8gpus": dict(
        minibatch_base=32,
        minibatch={4: 512, 8: 256, 16: 128, 32: 64, 64: 32},
        g_lr={128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
        d_lr={128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
    ),
}
for _preset in OFFICIAL_PRESETS.values():  # the official "-fp32" line applies to every preset
    _preset["max_minibatch_per_gpu"] = dict(_FP32_LIMITS)
# the paper's CelebA-HQ 1024 schedule (Appendix A.1 and the original Theano config): 800 kimg
# per stabilisation and per fade, minibatch 16 with {256: 14, 512: 6, 1024: 3}: v1-1gpu's values
