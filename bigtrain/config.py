"""Experiment configuration: nested dataclasses, YAML files and dotted command-line overrides.

OmegaConf merges the layers (defaults <- YAML <- `key.sub=value` overrides) against the
dataclass schema, so an unknown key or a value of the wrong type is an error. Value checks
(choices, ranges) live in each section's `__post_init__`, which OmegaConf runs when the merged
config is turned back into dataclasses. Every failure becomes one `ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bigtrain.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("accelerate", "deepspeed")
OPTIMIZERS = ("adam", "rmsprop")


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
    xflip: bool = False  # random horizontal flips of real images
    num_workers: int = 0  # loader worker processes per rank (streaming sources)

    def __post_init__(self) -> None:
        _check_choice("data.source", self.source, ("npz", "shards"))
        _check_positive("data.resolution", self.resolution)
        _check_positive("data.num_workers", self.num_workers, allow_zero=True)


@dataclass
class NetConfig:
    arch: str = "dcgan"  # key of bigtrain.models.MODELS
    width: int = 64  # channels of the widest conv layer (dcgan) or hidden units (mlp)
    depth: int = 2  # hidden layers (mlp only)
    norm: str = "batch"  # batch | none: normalisation layers of conv nets (D: none, see docs/design-notes.md)

    def validate(self, prefix: str) -> None:
        _check_positive(f"{prefix}.width", self.width)
        _check_positive(f"{prefix}.depth", self.depth)
        _check_choice(f"{prefix}.norm", self.norm, ("batch", "none"))


@dataclass
class ModelConfig:
    g: NetConfig = field(default_factory=NetConfig)  # generator
    d: NetConfig = field(default_factory=lambda: NetConfig(norm="none"))  # discriminator
    z_dim: int = 100  # latent size
    num_classes: int = 0  # 0 = unconditional; >0 = class-conditional G and D

    def __post_init__(self) -> None:
        self.g.validate("model.g")
        self.d.validate("model.d")
        _check_positive("model.z_dim", self.z_dim)
        _check_positive("model.num_classes", self.num_classes, allow_zero=True)


@dataclass
class LossConfig:
    type: str = "nonsaturating"  # key of bigtrain.losses.LOSSES


@dataclass
class OptimConfig:
    type: str = "adam"  # adam | rmsprop
    lr: float = 2e-4  # learning rate
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas
    eps: float = 1e-8  # optimizer epsilon
    weight_decay: float = 0.0  # L2 weight decay
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off

    def validate(self, prefix: str) -> None:
        _check_choice(f"{prefix}.type", self.type, OPTIMIZERS)
        _check_positive(f"{prefix}.lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{prefix}.betas", f"needs two values in [0, 1), got {list(self.betas)}")
        _check_positive(f"{prefix}.grad_clip", self.grad_clip, allow_zero=True)


@dataclass
class OptimsConfig:
    g: OptimConfig = field(default_factory=OptimConfig)  # generator optimizer
    d: OptimConfig = field(default_factory=OptimConfig)  # discriminator optimizer

    def __post_init__(self) -> None:
        self.g.validate("optim.g")
        self.d.validate("optim.d")


@dataclass
class TrainConfig:
    total_kimg: float = 1000.0  # length of training in thousands of images (1 iteration = batch_size)
    batch_size: int = 64  # global batch: micro_batch x accumulation rounds x world size
    micro_batch: int = 0  # per process per accumulation round; 0 = batch_size / world size
    d_steps: int = 1  # D updates per G update, each on a fresh real batch
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: independent loss scale per player)
    resume: str = "auto"  # auto (latest in run dir, if any) | none | path of a checkpoint folder

    def __post_init__(self) -> None:
        _check_positive("train.total_kimg", self.total_kimg)
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.micro_batch", self.micro_batch, allow_zero=True)
        _check_positive("train.d_steps", self.d_steps)
        _check_choice("train.precision", self.precision, PRECISIONS)


@dataclass
class EmaConfig:
    enabled: bool = True  # keep an exponential moving average of G's weights (G_ema)
    half_life_kimg: float = 10.0  # images over which the old weights' share halves
    rampup: Optional[float] = 0.05  # half-life <= rampup x images seen; null = no ramp-up

    def __post_init__(self) -> None:
        _check_positive("ema.half_life_kimg", self.half_life_kimg)
        if self.rampup is not None:
            _check_positive("ema.rampup", self.rampup)


@dataclass
class BackendConfig:
    kind: str = "accelerate"  # accelerate (DDP) | deepspeed (ZeRO)
    find_unused_parameters: bool = False  # DDP option; progressive growing needs it

    def __post_init__(self) -> None:
        _check_choice("backend.kind", self.kind, BACKENDS)


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
    num_samples: int = 10000  # generated images per evaluation
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid, is, kid
    ref_stats: str = ""  # reference statistics npz for FID

    def __post_init__(self) -> None:
        _check_positive("eval.every_kimg", self.every_kimg, allow_zero=True)
        _check_positive("eval.num_samples", self.num_samples)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)  # naming, output folder, seed
    data: DataConfig = field(default_factory=DataConfig)  # training data source
    model: ModelConfig = field(default_factory=ModelConfig)  # G and D architectures
    loss: LossConfig = field(default_factory=LossConfig)  # adversarial loss
    optim: OptimsConfig = field(default_factory=OptimsConfig)  # one optimizer per player
    train: TrainConfig = field(default_factory=TrainConfig)  # length, batch, precision, resume
    ema: EmaConfig = field(default_factory=EmaConfig)  # moving average of G
    backend: BackendConfig = field(default_factory=BackendConfig)  # distributed engine
    log: LogConfig = field(default_factory=LogConfig)  # metrics, TensorBoard, sample grids
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # saving
    eval: EvalConfig = field(default_factory=EvalConfig)  # periodic FID / IS / KID


def _to_object(merged: Any) -> Config:
    """Turn a merged OmegaConf tree into dataclasses, naming the key of a failed value check."""
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(getattr(exc, "full_key", "") or "config", _first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _merge(layers: list[Any], origin: str) -> Any:
    merged = OmegaConf.structured(Config)
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or origin
            raise ConfigError(key, f"{_first_line(exc)} (in {origin})") from None
    return merged


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a plain dict, with one clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping of sections")
    return data


def parse_overrides(overrides: list[str]) -> list[Any]:
    """`key.sub=value` strings -> OmegaConf layers (values parsed as YAML)."""
    layers = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "override must look like key.sub=value")
        try:
            layers.append(OmegaConf.from_dotlist([f"{key.strip()}={value}"]))
        except OmegaConfBaseException as exc:
            raise ConfigError(key, _first_line(exc)) from None
    return layers


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, validated. Raises ConfigError naming the key."""
    layers: list[Any] = []
    if path is not None:
        layers.append(load_yaml(path))
    merged = _merge(layers, str(path) if path else "defaults")
    if overrides:
        merged = _merge([merged, *parse_overrides(overrides)], "command line")
    return _to_object(merged)


def config_from_dict(data: dict) -> Config:
    """Validate a config given as a nested dict (e.g. read back from a checkpoint)."""
    return _to_object(_merge([data], "dict"))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
