"""The run-level config: one dataclass per section (run, data, model, optim, train, ema, backend,
schedule, log, checkpoint, eval), each field with its one-line comment and its checks in the
section's `__post_init__` / `validate`, raising one `ConfigError` naming the key. The sections of
a family (its options, the classic recipes' loss and augment) and the net section classes live
in the families' folders; bigtrain/config_merge.py joins them with these into a recipe's schema
and merges defaults <- YAML <- overrides into it (docs/design.md, "Layout and boundaries").
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import yaml
from omegaconf import OmegaConf

from bigtrain.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("accelerate", "deepspeed")
OPTIMIZERS = ("adam", "rmsprop", "sgd")


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, choices))}")


def _check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass
class RunConfig:
    name: str = "run"  # run directory name under out_dir
    out_dir: str = "runs"  # parent folder of run directories
    seed: int = 0  # seeds weights, latents, data order; every rank derives its own stream


@dataclass
class DataConfig:
    source: str = "npz"  # npz | shards
    path: str = ""  # npz file, or shards: dataset.json, brace pattern or list (see README)
    resolution: int = 32  # images are resized to this on load; ignored for vector data
    channels: int = 0  # image channels as stored (checked against the data); 0 = the data's (--dry-run: 3)
    xflip: bool = False  # random horizontal flips of real images
    num_workers: int = 0  # loader worker processes per rank (streaming sources)
    shuffle_buffer: int = 1000  # shards: samples each loader worker shuffles among; 0 = off
    max_skipped_fraction: float = 0.01  # shards: stop when more than this share of the samples read is broken
    dataset_json: str = ""  # shards: the dataset.json of a pattern or URL list; default: data.path or beside the shards
    prefetch: Optional[bool] = None  # copy the next micro-batch to the device while this one trains; null = on CUDA
    load_size: int = 0  # > resolution: load at this size, crop a random window (CycleGAN's 286 -> 256); 0 = off
    paired: bool = False  # side-by-side A|B images (pix2pix): halves stacked on channels (A first), cropped alike
    streams: Dict[str, Any] = field(default_factory=dict)  # stream name -> data keys over data.* (cyclegan: A, B)

    def __post_init__(self) -> None:
        _check_choice("data.source", self.source, ("npz", "shards"))
        _check_positive("data.resolution", self.resolution)
        _check_positive("data.channels", self.channels, allow_zero=True)
        _check_positive("data.load_size", self.load_size, allow_zero=True)
        if 0 < self.load_size < self.resolution:
            raise ConfigError(
                "data.load_size",
                f"must be 0 or >= data.resolution ({self.resolution}): images are cropped from it, got "
                f"{self.load_size}",
            )
        for name, over in self.streams.items():
            if not isinstance(over, dict) and not OmegaConf.is_dict(over):
                raise ConfigError(f"data.streams.{name}", "must be a mapping of data keys (path, ...) over data.*")
        _check_positive("data.num_workers", self.num_workers, allow_zero=True)
        _check_positive("data.shuffle_buffer", self.shuffle_buffer, allow_zero=True)
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ConfigError("data.max_skipped_fraction", f"must be in [0, 1], got {self.max_skipped_fraction}")


@dataclass
class ModelConfig:
    g: Any = None  # generator: the section class its arch has (an architecture of the registry, bigtrain.families)
    d: Any = None  # discriminator: likewise
    z_dim: int = 100  # latent size
    num_classes: int = 0  # 0 = unconditional; >0 = class-conditional G and D
    nets: Dict[str, Any] = field(default_factory=dict)  # a player's own net (d2, g_ab): keys over model.g / model.d

    def __post_init__(self) -> None:
        for side in ("g", "d"):
            net = getattr(self, side)
            if net is None:
                continue
            if net.arch != type(net).arch:  # each section class is one arch's (its default)
                raise ConfigError(
                    f"model.{side}", f"a {type(net).__name__} is the {type(net).arch} section, not arch {net.arch}'s"
                )
            net.validate(f"model.{side}")
        _check_positive("model.z_dim", self.z_dim)
        _check_positive("model.num_classes", self.num_classes, allow_zero=True)
        for name, over in self.nets.items():
            if not isinstance(over, dict):
                raise ConfigError(
                    f"model.nets.{name}", "must be a mapping of network keys (arch, width, ...) over model.g or model.d"
                )


@dataclass
class OptimConfig:
    type: str = "adam"  # adam | rmsprop | sgd
    lr: float = 2e-4  # learning rate
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas
    momentum: float = 0.0  # sgd / rmsprop momentum
    eps: float = 1e-8  # optimizer epsilon
    weight_decay: float = 0.0  # L2 weight decay
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off
    fused: Optional[bool] = None  # fused adam/sgd (accelerate): skips non-finite steps on the device; null = on CUDA

    def validate(self, prefix: str) -> None:
        _check_choice(f"{prefix}.type", self.type, OPTIMIZERS)
        if self.fused and self.type not in ("adam", "sgd"):
            raise ConfigError(
                f"{prefix}.fused", f"torch has no fused {self.type}; fused kernels exist for adam and sgd"
            )
        _check_positive(f"{prefix}.lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{prefix}.betas", f"needs two values in [0, 1), got {list(self.betas)}")
        _check_positive(f"{prefix}.grad_clip", self.grad_clip, allow_zero=True)


STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")  # train.stop_signals by default


@dataclass
class TrainConfig:
    total_kimg: float = 1000.0  # length of training in thousands of images (1 iteration = batch_size)
    batch_size: int = 64  # global batch: micro_batch x accumulation rounds x world size
    micro_batch: int = 0  # per process per accumulation round; 0 = batch_size / world size
    d_steps: int = 1  # D updates per G update, each on a fresh real batch
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: independent loss scale per player)
    init_from: str = ""  # a run directory or checkpoint folder whose weights (and EMA) start a new run; else fresh
    resume: str = "auto"  # auto (latest in run dir, if any) | none | path of a checkpoint folder
    max_nonfinite: int = 10  # a player's non-finite steps in a row (skipped) before the run stops (exit 3)
    channels_last: bool = False  # nets and image batches channels-last (faster convolutions on tensor-core GPUs)
    compile: list[str] = field(default_factory=list)  # players (g, d, ...) whose nets run through torch.compile
    compile_backend: str = "inductor"  # torch.compile backend for them (inductor; eager only traces, for tests)
    # stopping early with a checkpoint, exit code 75 (docs/design.md, "Preemption and requeue")
    stop_signals: list[str] = field(default_factory=lambda: list(STOP_SIGNALS))  # on any rank: checkpoint, exit 75
    max_minutes: float = 0.0  # time budget of this process: checkpoint and exit 75 before it ends; 0 = none
    exit_margin_minutes: float = 1.0  # least margin before the budget's end (more where checkpoints took longer)
    slurm_deadline: bool = True  # also end before SLURM's job end time (SLURM_JOB_END_TIME)
    lock_stale_minutes: float = 10.0  # where the filesystem has no flock: a run lock untouched this long is taken over

    def __post_init__(self) -> None:
        _check_positive("train.total_kimg", self.total_kimg)
        _check_positive("train.max_nonfinite", self.max_nonfinite)
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.micro_batch", self.micro_batch, allow_zero=True)
        _check_positive("train.d_steps", self.d_steps)
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_positive("train.max_minutes", self.max_minutes, allow_zero=True)
        _check_positive("train.exit_margin_minutes", self.exit_margin_minutes, allow_zero=True)
        _check_positive("train.lock_stale_minutes", self.lock_stale_minutes)
        for name in self.stop_signals:
            if catchable_signal(name) is None:
                raise ConfigError(
                    "train.stop_signals", f"{name!r} is not a signal that can be caught (e.g. SIGTERM, SIGUSR1, SIGINT)"
                )


def catchable_signal(name: str) -> Optional[signal.Signals]:
    """SIGTERM / sigterm / TERM -> signal.SIGTERM; None for no signal or one that cannot be caught."""
    upper = str(name).upper()
    sig = getattr(signal, upper if upper.startswith("SIG") else f"SIG{upper}", None)
    return sig if isinstance(sig, signal.Signals) and sig not in (signal.SIGKILL, signal.SIGSTOP) else None


@dataclass
class EmaConfig:
    enabled: bool = True  # keep an exponential moving average of G's weights (G_ema)
    half_life_kimg: float = 10.0  # images over which the old weights' share halves
    rampup: Optional[float] = 0.05  # half-life <= rampup x images seen; null = no ramp-up
    decay: Optional[float] = None  # a fixed decay per update (BigGAN: 0.9999); null = from half_life_kimg
    start_kimg: float = 0.0  # until this many kimg, G_ema is a plain copy of G (BigGAN-PyTorch's --ema_start)

    def __post_init__(self) -> None:
        _check_positive("ema.half_life_kimg", self.half_life_kimg)
        if self.rampup is not None:
            _check_positive("ema.rampup", self.rampup)
        if self.decay is not None and not 0.0 <= self.decay < 1.0:
            raise ConfigError("ema.decay", f"must be in [0, 1), got {self.decay}")
        _check_positive("ema.start_kimg", self.start_kimg, allow_zero=True)


@dataclass
class BackendConfig:
    kind: str = "accelerate"  # accelerate (DDP) | deepspeed (ZeRO)
    find_unused_parameters: bool = False  # DDP option; progressive growing needs it
    zero_stage: int = 1  # deepspeed: ZeRO stage 0-3 for every player without its own JSON
    configs: Dict[str, str] = field(default_factory=dict)  # deepspeed: player -> its DeepSpeed JSON (else generated)
    g_config: str = ""  # deepspeed: the same as configs.g (kept for older configs)
    d_config: str = ""  # deepspeed: the same as configs.d

    def __post_init__(self) -> None:
        _check_choice("backend.kind", self.kind, BACKENDS)
        _check_choice("backend.zero_stage", self.zero_stage, (0, 1, 2, 3))


SCHEDULE_SHAPES = ("constant", "step", "linear")


@dataclass
class CurveConfig:
    shape: str = "constant"  # constant | step (x gamma at each milestone) | linear (start_kimg -> end_kimg, to `final`)
    warmup_kimg: float = 0.0  # any shape: ramp the factor up linearly from 0 over the first kimg; 0 = none
    milestones_kimg: list[float] = field(default_factory=list)  # step: where the factor is multiplied by gamma
    gamma: float = 0.1  # step: factor per milestone
    start_kimg: float = 0.0  # linear: the factor is 1 until here
    end_kimg: float = 0.0  # linear: the factor reaches `final` here and stays; 0 = train.total_kimg
    final: float = 0.0  # linear: factor at end_kimg

    def validate(self, prefix: str) -> None:
        _check_choice(f"{prefix}.shape", self.shape, SCHEDULE_SHAPES)
        for key in ("warmup_kimg", "gamma", "start_kimg", "end_kimg", "final"):
            _check_positive(f"{prefix}.{key}", getattr(self, key), allow_zero=True)
        if list(self.milestones_kimg) != sorted(self.milestones_kimg):
            raise ConfigError(f"{prefix}.milestones_kimg", f"must be increasing, got {list(self.milestones_kimg)}")
        if self.shape == "linear" and self.end_kimg and self.end_kimg <= self.start_kimg:
            raise ConfigError(
                f"{prefix}.end_kimg", f"must be after start_kimg ({self.start_kimg}), got {self.end_kimg}"
            )


@dataclass
class ScheduleConfig:
    lr: Dict[str, CurveConfig] = field(default_factory=dict)  # player -> factor on optim.<player>.lr over kimg
    batch: list[list[float]] = field(default_factory=list)  # [[kimg, global batch], ...]: the global batch from kimg on

    def __post_init__(self) -> None:
        for name, curve in self.lr.items():
            curve.validate(f"schedule.lr.{name}")
        last = -1.0
        for i, entry in enumerate(self.batch):
            if len(entry) != 2 or entry[0] < 0 or entry[1] < 1 or entry[1] != int(entry[1]):
                raise ConfigError(
                    f"schedule.batch[{i}]", f"needs [kimg >= 0, batch size >= 1 (whole)], got {list(entry)}"
                )
            if entry[0] <= last:
                raise ConfigError(f"schedule.batch[{i}]", f"kimg values must increase, got {entry[0]} after {last}")
            last = entry[0]


@dataclass
class LogConfig:
    every_kimg: float = 1.0  # scalars to metrics.jsonl / TensorBoard
    samples_every_kimg: float = 10.0  # PNG grid of G_ema on a fixed latent batch
    grid_rows: int = 8  # rows of the sample grid (one class per row when conditional)
    grid_cols: int = 8  # columns of the sample grid
    progress_bar: bool = True  # tqdm bar on the main process

    def __post_init__(self) -> None:
        _check_positive("log.every_kimg", self.every_kimg)
        _check_positive("log.samples_every_kimg", self.samples_every_kimg)
        _check_positive("log.grid_rows", self.grid_rows)
        _check_positive("log.grid_cols", self.grid_cols)


@dataclass
class CheckpointConfig:
    every_kimg: float = 50.0  # save interval; a final checkpoint is always written
    keep_last: int = 3  # older regular checkpoints are deleted (the best-FID one is kept apart)

    def __post_init__(self) -> None:
        _check_positive("checkpoint.every_kimg", self.every_kimg)
        _check_positive("checkpoint.keep_last", self.keep_last)


@dataclass
class EvalConfig:
    every_kimg: float = 0.0  # periodic evaluation interval; 0 = off
    num_samples: int = 10000  # generated images per evaluation (papers report 50k: compare like with like)
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid, is, kid, precision, recall, density, coverage
    ref_stats: str = ""  # reference statistics npz (`bigtrain ref-stats`; --features for kid and the last four)
    inception_weights: str = ""  # FID Inception weights file; "" = $BIGTRAIN_INCEPTION_WEIGHTS, hub cache, download
    seed: int = 0  # evaluation latents and IS/KID subsets, fixed so evaluations compare
    batch_size: int = 64  # samples per G / Inception forward per rank
    use_ema: bool = True  # evaluate G_ema (when kept) rather than G

    def __post_init__(self) -> None:
        _check_positive("eval.every_kimg", self.every_kimg, allow_zero=True)
        _check_positive("eval.num_samples", self.num_samples)
        _check_positive("eval.batch_size", self.batch_size)
        compared = ("fid", "kid", "precision", "recall", "density", "coverage")  # against the reference
        for metric in self.metrics:
            _check_choice("eval.metrics", metric, ("is", *compared))
        if self.every_kimg > 0 and not self.metrics:
            raise ConfigError("eval.metrics", "is empty but eval.every_kimg > 0")
        if self.every_kimg > 0 and not self.ref_stats and set(compared) & set(self.metrics):
            raise ConfigError(
                "eval.ref_stats",
                f"{', '.join(m for m in self.metrics if m in compared)} need reference statistics (make them with "
                "`bigtrain ref-stats`; --features for kid, precision, recall, density and coverage)",
            )


@dataclass
class Config:
    recipe: str = "gan"  # the family's recipe (bigtrain.families): gan, progan, biggan, ...; its options under its name
    run: RunConfig = field(default_factory=RunConfig)  # naming, output folder, seed
    data: DataConfig = field(default_factory=DataConfig)  # training data source
    model: ModelConfig = field(default_factory=ModelConfig)  # G and D architectures
    optim: Dict[str, OptimConfig] = field(default_factory=dict)  # per player, lowercased (g, d, d2, ...); else defaults
    train: TrainConfig = field(default_factory=TrainConfig)  # length, batch, precision, resume
    ema: EmaConfig = field(default_factory=EmaConfig)  # moving average of G
    backend: BackendConfig = field(default_factory=BackendConfig)  # distributed engine
    log: LogConfig = field(default_factory=LogConfig)  # metrics, TensorBoard, sample grids
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # saving
    eval: EvalConfig = field(default_factory=EvalConfig)  # periodic FID / IS / KID
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # learning rates and batch size over kimg

    def __post_init__(self) -> None:
        for name, optim in self.optim.items():
            optim.validate(f"optim.{name}")
            if optim.fused and self.backend.kind == "deepspeed":
                raise ConfigError(
                    f"optim.{name}.fused",
                    "is for the accelerate backend; DeepSpeed steps its own optimizer (its JSON may name FusedAdam)",
                )
        if self.train.channels_last and self.backend.kind == "deepspeed":
            # deepspeed.initialize broadcasts each parameter viewed as bytes, which needs a unit last stride
            raise ConfigError(
                "train.channels_last",
                "is for the accelerate backend: DeepSpeed cannot set up channels-last weights (and its flat ZeRO "
                "buffers would make them contiguous again)",
            )


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
