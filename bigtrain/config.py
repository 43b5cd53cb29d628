"""Experiment configuration: nested dataclasses, YAML files and dotted command-line overrides.

OmegaConf merges the layers (defaults <- YAML <- `key.sub=value` overrides) against the
dataclass schema, so an unknown key or a value of the wrong type is an error. Value checks
(choices, ranges) live in each section's `__post_init__`, which OmegaConf runs when the merged
config is turned back into dataclasses. Every failure becomes one `ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import functools
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

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
    channels: int = 0  # image channels as stored (checked against the data); 0 = as the data has (--dry-run without data: 3)
    xflip: bool = False  # random horizontal flips of real images
    num_workers: int = 0  # loader worker processes per rank (streaming sources)
    shuffle_buffer: int = 1000  # shards: samples each loader worker shuffles among; 0 = off
    max_skipped_fraction: float = 0.01  # shards: stop when more than this share of samples read is broken (over >= 1000 read)
    dataset_json: str = ""  # shards: dataset.json describing a pattern or URL list; default: data.path itself or the one beside local shards
    prefetch: Optional[bool] = None  # copy the next micro-batch to the device (pinned, non-blocking) while this one trains; null = on CUDA
    load_size: int = 0  # > resolution: load images at this size, then crop a random resolution x resolution window (the reference CycleGAN/Pix2Pix's 286 -> 256); 0 = load at resolution
    paired: bool = False  # samples are side-by-side A|B images (pix2pix's layout): split into halves, stacked along channels (A first), cropped and flipped together
    streams: Dict[str, Any] = field(default_factory=dict)  # recipes reading several streams (cyclegan: A, B): stream name -> data keys over these (path, ...)

    def __post_init__(self) -> None:
        _check_choice("data.source", self.source, ("npz", "shards"))
        _check_positive("data.resolution", self.resolution)
        _check_positive("data.channels", self.channels, allow_zero=True)
        _check_positive("data.load_size", self.load_size, allow_zero=True)
        if 0 < self.load_size < self.resolution:
            raise ConfigError("data.load_size", f"must be 0 or >= data.resolution ({self.resolution}): images are cropped from it, got {self.load_size}")
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
    nets: Dict[str, Any] = field(default_factory=dict)  # one player's own network (lowercased name: d2, g_ab, ...): keys over its side's model.g / model.d

    def __post_init__(self) -> None:
        for side in ("g", "d"):
            net = getattr(self, side)
            if net is None:
                continue
            if net.arch != type(net).arch:  # each section class is one arch's (its default)
                raise ConfigError(f"model.{side}", f"a {type(net).__name__} is the {type(net).arch} section, not arch {net.arch}'s")
            net.validate(f"model.{side}")
        _check_positive("model.z_dim", self.z_dim)
        _check_positive("model.num_classes", self.num_classes, allow_zero=True)
        for name, over in self.nets.items():
            if not isinstance(over, dict):
                raise ConfigError(f"model.nets.{name}", "must be a mapping of network keys (arch, width, ...) over model.g or model.d")


@dataclass
class OptimConfig:
    type: str = "adam"  # adam | rmsprop | sgd
    lr: float = 2e-4  # learning rate
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas
    momentum: float = 0.0  # sgd / rmsprop momentum
    eps: float = 1e-8  # optimizer epsilon
    weight_decay: float = 0.0  # L2 weight decay
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off
    fused: Optional[bool] = None  # torch's fused kernel (adam, sgd; accelerate backend), which skips non-finite steps without a host read; null = on CUDA

    def validate(self, prefix: str) -> None:
        _check_choice(f"{prefix}.type", self.type, OPTIMIZERS)
        if self.fused and self.type not in ("adam", "sgd"):
            raise ConfigError(f"{prefix}.fused", f"torch has no fused {self.type}; fused kernels exist for adam and sgd")
        _check_positive(f"{prefix}.lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{prefix}.betas", f"needs two values in [0, 1), got {list(self.betas)}")
        _check_positive(f"{prefix}.grad_clip", self.grad_clip, allow_zero=True)


@dataclass
class TrainConfig:
    total_kimg: float = 1000.0  # length of training in thousands of images (1 iteration = batch_size)
    batch_size: int = 64  # global batch: micro_batch x accumulation rounds x world size
    micro_batch: int = 0  # per process per accumulation round; 0 = batch_size / world size
    d_steps: int = 1  # D updates per G update, each on a fresh real batch
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: independent loss scale per player)
    resume: str = "auto"  # auto (latest in run dir, if any) | none | path of a checkpoint folder
    max_nonfinite: int = 10  # a player's steps in a row skipped for a non-finite loss or gradient before the run stops (exit 3)
    channels_last: bool = False  # nets and image batches in channels-last memory format (faster convolutions on tensor-core GPUs)
    compile: list[str] = field(default_factory=list)  # players (lowercased names: g, d, ...) whose nets run through torch.compile
    compile_backend: str = "inductor"  # torch.compile backend for them (inductor; eager only traces, for tests)
    # stopping early with a checkpoint, exit code 75 (docs/design.md, "Preemption and requeue")
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGINT"])  # on any rank: checkpoint at the next iteration, exit 75
    max_minutes: float = 0.0  # time budget of this process: checkpoint and exit 75 before it ends; 0 = none
    exit_margin_minutes: float = 1.0  # least margin before the budget's end (more when checkpoints or iterations were seen to take longer)
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
                raise ConfigError("train.stop_signals", f"{name!r} is not a signal that can be caught (e.g. SIGTERM, SIGUSR1, SIGINT)")


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
    decay: Optional[float] = None  # a fixed decay per update instead of the half-life (BigGAN: 0.9999); null = from half_life_kimg
    start_kimg: float = 0.0  # until G has seen this many kimg, G_ema is a plain copy of G (BigGAN-PyTorch's --ema_start, in images)

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
    configs: Dict[str, str] = field(default_factory=dict)  # deepspeed: player (lowercased name) -> its DeepSpeed JSON (overrides the generated one)
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
            raise ConfigError(f"{prefix}.end_kimg", f"must be after start_kimg ({self.start_kimg}), got {self.end_kimg}")


@dataclass
class ScheduleConfig:
    lr: Dict[str, CurveConfig] = field(default_factory=dict)  # player (lowercased name) -> factor on optim.<player>.lr over kimg
    batch: list[list[float]] = field(default_factory=list)  # [[kimg, global batch], ...]: from kimg on, train.batch_size becomes this

    def __post_init__(self) -> None:
        for name, curve in self.lr.items():
            curve.validate(f"schedule.lr.{name}")
        last = -1.0
        for i, entry in enumerate(self.batch):
            if len(entry) != 2 or entry[0] < 0 or entry[1] < 1 or entry[1] != int(entry[1]):
                raise ConfigError(f"schedule.batch[{i}]", f"needs [kimg >= 0, batch size >= 1 (whole)], got {list(entry)}")
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
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # fid, is, kid
    ref_stats: str = ""  # reference statistics npz (`bigtrain ref-stats`), needed for fid and kid
    inception_weights: str = ""  # FID Inception weights file; "" = $BIGTRAIN_INCEPTION_WEIGHTS, hub cache, download
    seed: int = 0  # evaluation latents and IS/KID subsets, fixed so evaluations compare
    batch_size: int = 64  # samples per G / Inception forward per rank
    use_ema: bool = True  # evaluate G_ema (when kept) rather than G

    def __post_init__(self) -> None:
        _check_positive("eval.every_kimg", self.every_kimg, allow_zero=True)
        _check_positive("eval.num_samples", self.num_samples)
        _check_positive("eval.batch_size", self.batch_size)
        for metric in self.metrics:
            _check_choice("eval.metrics", metric, ("fid", "is", "kid"))
        if self.every_kimg > 0 and not self.metrics:
            raise ConfigError("eval.metrics", "is empty but eval.every_kimg > 0")
        if self.every_kimg > 0 and not self.ref_stats and {"fid", "kid"} & set(self.metrics):
            raise ConfigError("eval.ref_stats", "fid and kid need reference statistics (make them with `bigtrain ref-stats`)")


@dataclass
class Config:
    recipe: str = "gan"  # model family's recipe (bigtrain.families): gan, began, gman, madgan, progan, biggan, cyclegan, ...; its options sit under its name
    run: RunConfig = field(default_factory=RunConfig)  # naming, output folder, seed
    data: DataConfig = field(default_factory=DataConfig)  # training data source
    model: ModelConfig = field(default_factory=ModelConfig)  # G and D architectures
    optim: Dict[str, OptimConfig] = field(default_factory=dict)  # one optimizer per player, by lowercased name (g, d, d2, ...); a missing one has the defaults
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
                raise ConfigError(f"optim.{name}.fused", "is for the accelerate backend; DeepSpeed steps its own optimizer (its JSON may name FusedAdam)")
        if self.train.channels_last and self.backend.kind == "deepspeed":
            # deepspeed.initialize broadcasts each parameter viewed as bytes, which needs a unit last stride
            raise ConfigError("train.channels_last", "is for the accelerate backend: DeepSpeed cannot set up channels-last weights (and its flat ZeRO buffers would make them contiguous again)")


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


def _last(layers: list[Any], path: tuple[str, ...], default: Any) -> Any:
    """The value at `path` in the last layer that sets it (not null), before validation."""
    value = default
    for layer in layers:
        node = OmegaConf.to_container(layer) if OmegaConf.is_config(layer) else layer
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            value = node
    return value


class Catalog(Protocol):
    """What the loader needs of the family registry (bigtrain.families.registry()), handed to it:
    this module imports no family, so every family can import it."""

    def recipe_name(self, lookup: Callable[[tuple[str, ...]], Any]) -> Any:
        """The recipe the layers select (`lookup(path)`: the last value set at path, or None)."""

    def recipe_names(self) -> list[str]: ...

    def sections(self, recipe: str) -> dict[str, type]:
        """The recipe's own top-level sections, name -> dataclass (its options, loss, ...)."""

    def all_sections(self) -> dict[str, type]:
        """Every section some recipe declares (to recognise an old save's untouched ones)."""

    def net_config(self, side: str, arch: Any, key: str) -> type:
        """The `side` ("g"/"d") section class of `arch`; ConfigError naming `key` if unknown."""

    def renamed(self) -> dict[str, tuple[str, Any]]:
        """Old dotted key -> (its new dotted key, its default), accepted for one release."""


# The shared NetConfig that every `model.g` / `model.d` section had before per-architecture
# classes; configs and checkpoints of that time hold every one of these keys (docs/design.md).
OLD_NET_DEFAULTS = {"arch": "dcgan", "width": 64, "depth": 2, "norm": "batch", "cond": "auto", "spectral_norm": False,
                    "h_dim": 64, "mbstd_group": 0, "mbstd_channels": 1, "pack": 1}  # G's; D's norm was none
DEFAULT_ARCH = "dcgan"  # model.g.arch / model.d.arch when no layer sets them
SIDE_NAMES = {"g": "generator", "d": "discriminator"}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _drop_old_defaults(layer: dict, nets: dict[str, type]) -> dict:
    """`layer` without the untouched fields of an old shared-NetConfig section.

    A net section holding every OLD_NET_DEFAULTS key was written before per-architecture
    classes (a checkpoint's config or a run's config.yaml). A key its class does not have is
    dropped when it holds the old default, i.e. nobody set it; any other value stays and is
    refused like a key set by hand. New sections never hold all those keys, so this exception
    does not reach them (docs/design.md, "Network config per architecture").
    """
    model = layer.get("model")
    if not isinstance(model, dict):
        return layer
    model = dict(model)
    for side, cls in nets.items():
        net = model.get(side)
        if isinstance(net, dict) and net.keys() >= OLD_NET_DEFAULTS.keys():
            old = {**OLD_NET_DEFAULTS, "norm": "none"} if side == "d" else OLD_NET_DEFAULTS
            keep = set(_fields(cls))
            model[side] = {k: v for k, v in net.items() if k in keep or k not in old or v != old[k]}
    return {**layer, "model": model}


def _move_renamed(layer: dict, recipe: str, sections: dict[str, type], catalog: Catalog, saved: bool) -> dict:
    """`layer` with each old spelling of a key (catalog.renamed()) moved to its new place, with a
    warning naming the new key (none for a saved config, which the user did not write). An old
    key whose new section this recipe lacks is dropped when it holds its default, else refused."""
    for old, (new, default) in catalog.renamed().items():
        section, _, key = old.partition(".")
        values = layer.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        values = dict(values)
        value = values.pop(key)
        layer = {**layer, section: values}
        new_section, _, new_key = new.partition(".")
        if new_section not in sections:
            if value != default:
                raise ConfigError(old, f"is now {new}, which recipe {recipe} does not read")
            continue
        if not saved:
            warnings.warn(f"{old} is now {new}; the old spelling is read for one more release", FutureWarning, stacklevel=4)
        target = dict(layer.get(new_section) or {})
        target.setdefault(new_key, value)
        layer = {**layer, new_section: target}
    return layer


def _drop_untouched_sections(layer: dict, sections: dict[str, type], catalog: Catalog) -> dict:
    """A saved config without the sections its recipe no longer declares, where they hold their
    defaults (older saves held every section; e.g. an image-to-image run's unused `loss`)."""
    known = catalog.all_sections()
    unused = [name for name in layer if name in known and name not in sections
              and isinstance(layer[name], dict) and layer[name] == dataclasses.asdict(known[name]())]
    return {k: v for k, v in layer.items() if k not in unused}


def _reason(exc: OmegaConfBaseException, key: str, nets: dict[str, type]) -> str:
    """OmegaConf's message, or for a key a net section's class lacks, which keys it has."""
    parts = key.split(".")
    if isinstance(exc, ConfigKeyError) and len(parts) == 3 and parts[0] == "model" and parts[1] in nets:
        cls = nets[parts[1]]
        return f"the {cls.arch} {SIDE_NAMES[parts[1]]} has no key {parts[2]!r}; its keys: {', '.join(_fields(cls))}"
    return _first_line(exc)


def schema(recipe: str, catalog: Catalog) -> type:
    """The Config dataclass for `recipe`: Config plus the recipe's sections (its options, and the
    shared ones it reads, such as loss)."""
    return _schema(recipe, tuple(catalog.sections(recipe).items()))


@functools.lru_cache(maxsize=None)
def _schema(recipe: str, sections: tuple[tuple[str, type], ...]) -> type:
    # one class per recipe and sections, so that two configs of one recipe compare equal
    if not sections:
        return Config
    return dataclasses.make_dataclass(f"Config_{recipe}", [(name, cls, field(default_factory=cls)) for name, cls in sections], bases=(Config,))


def _merge(layers: list[Any], origin: str, catalog: Catalog, saved: bool = False) -> Any:
    layers = [OmegaConf.to_container(layer) if OmegaConf.is_config(layer) else layer for layer in layers]
    recipe = catalog.recipe_name(lambda path: _last(layers, path, None))
    if recipe is None:
        recipe = Config.recipe
    if not isinstance(recipe, str):
        raise ConfigError("recipe", f"must be a name (in {origin})")
    if recipe not in catalog.recipe_names():
        raise ConfigError("recipe", f"unknown recipe {recipe!r}; choose one of {', '.join(sorted(catalog.recipe_names()))}")
    sections = catalog.sections(recipe)
    # each net section's class follows its arch, the last one the layers set
    nets = {side: catalog.net_config(side, _last(layers, ("model", side, "arch"), DEFAULT_ARCH), f"model.{side}.arch") for side in SIDE_NAMES}
    merged = OmegaConf.structured(schema(recipe, catalog)(model=ModelConfig(g=nets["g"](), d=nets["d"]())))
    for layer in layers:
        layer = _move_renamed(_drop_old_defaults(layer, nets), recipe, sections, catalog, saved)
        if saved:
            layer = _drop_untouched_sections(layer, sections, catalog)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or origin
            raise ConfigError(key, f"{_reason(exc, key, nets)} (in {origin})") from None
    merged.recipe = recipe  # the name it resolved to (an alias, such as loss.type began, becomes its recipe)
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


def load_config(path: str | Path | None, overrides: list[str] | None, catalog: Catalog) -> Config:
    """Defaults <- YAML file <- overrides, validated against the recipe's schema from `catalog`
    (bigtrain.families.load_config passes the registry). Raises ConfigError naming the key."""
    layers: list[Any] = []
    if path is not None:
        layers.append(load_yaml(path))
    extra = parse_overrides(overrides or [])
    _merge(layers, str(path) if path else "defaults", catalog)  # names the file for errors in the file
    return _to_object(_merge([*layers, *extra], "command line" if extra else str(path) if path else "defaults", catalog))


def config_from_dict(data: dict, catalog: Catalog) -> Config:
    """Validate a saved config given as a nested dict (e.g. read back from a checkpoint)."""
    return _to_object(_merge([data], "dict", catalog, saved=True))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
