"""Experiment configuration: nested dataclasses, YAML files and dotted command-line overrides.

OmegaConf merges the layers (defaults <- YAML <- `key.sub=value` overrides) against the
dataclass schema, so an unknown key or a value of the wrong type is an error. Value checks
(choices, ranges) live in each section's `__post_init__`, which OmegaConf runs when the merged
config is turned back into dataclasses. Every failure becomes one `ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from bigtrain.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("accelerate", "deepspeed")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
COND_CHOICES = ("auto", "concat", "cbn", "projection", "acgan")
AUGMENTS = ("color", "translation", "cutout")


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


NORMS = ("batch", "none")


@dataclass
class NetConfig:
    """A `model.g` / `model.d` section. `arch` and the side pick its class (NET_CONFIGS), which
    declares exactly the keys that net reads (docs/design.md, "Network config per architecture")."""

    norms: ClassVar[tuple[str, ...]] = NORMS  # the values `norm` may take, in the classes that have it
    arch: str = "dcgan"  # key of bigtrain.models.MODELS; picks this section's class, and so its other keys
    width: int = 64  # dcgan: channels at res/2 (doubled at each halving); sngan: channel multiple; began: filters; mlp, grid: hidden units

    def validate(self, prefix: str) -> None:
        """Value checks of this class's keys, each error naming `prefix.key`."""
        for f in dataclasses.fields(self):
            key, value = f"{prefix}.{f.name}", getattr(self, f.name)
            if f.name in ("width", "depth", "h_dim", "mbstd_channels", "pack"):
                _check_positive(key, value)
            elif f.name == "mbstd_group":
                _check_positive(key, value, allow_zero=True)
            elif f.name == "norm":
                _check_choice(key, value, self.norms)
            elif f.name == "cond":
                _check_choice(key, value, COND_CHOICES)


# The keys some nets read, one mixin each. A class lists its mixins last key first, so that its
# fields keep the order arch, width, depth, norm, cond, spectral_norm, h_dim, mbstd_*, pack.
@dataclass
class _Depth:
    depth: int = 2  # hidden layers


@dataclass
class _Norm:
    norm: str = "batch"  # batch | none: batch norm in the hidden layers (D: real and fake forwarded apart, see README)


@dataclass
class _Cond:
    cond: str = "auto"  # class conditioning: auto (the arch's default) | concat | cbn (G) | projection | acgan (D)


@dataclass
class _SpectralNorm:
    spectral_norm: bool = False  # spectral normalisation of every weight layer (Miyato et al. 2018)


@dataclass
class _HDim:
    h_dim: int = 64  # BEGAN: size of the autoencoder's bottleneck embedding


@dataclass
class _Mbstd:
    mbstd_group: int = 0  # minibatch standard deviation over groups of this many samples (Karras et al. 2018); 0 = off
    mbstd_channels: int = 1  # feature groups of the minibatch-stddev statistic


@dataclass
class _Pack:
    pack: int = 1  # PacGAN packing, D scores m samples joined along channels (Lin et al. 2018); 1 = off


@dataclass
class MlpGConfig(_SpectralNorm, _Cond, _Depth, NetConfig):
    arch: str = "mlp"  # this class's architecture


@dataclass
class MlpDConfig(_Pack, _Mbstd, _SpectralNorm, _Cond, _Depth, NetConfig):
    arch: str = "mlp"  # this class's architecture


@dataclass
class DcganGConfig(_SpectralNorm, _Cond, _Norm, NetConfig):
    pass


@dataclass
class DcganDConfig(_Pack, _Mbstd, _SpectralNorm, _Cond, _Norm, NetConfig):
    norm: str = "none"  # D: batch | none, none by default


@dataclass
class SnganGConfig(_SpectralNorm, _Cond, _Norm, NetConfig):
    arch: str = "sngan"  # this class's architecture


@dataclass
class SnganDConfig(_Pack, _SpectralNorm, _Cond, _Norm, NetConfig):
    """`norm` can only be none: this D has no normalisation layers (spectral norm is its normaliser)."""

    norms: ClassVar[tuple[str, ...]] = ("none",)
    arch: str = "sngan"  # this class's architecture
    norm: str = "none"  # none only


@dataclass
class BeganGConfig(_SpectralNorm, _HDim, NetConfig):
    """G takes z (model.z_dim), not the bottleneck: it accepts `h_dim` but does not read it, so a
    config may give both began nets one h_dim (docs/design.md, "Network config per architecture")."""

    arch: str = "began"  # this class's architecture


@dataclass
class BeganDConfig(_SpectralNorm, _HDim, NetConfig):
    arch: str = "began"  # this class's architecture


@dataclass
class GridGConfig(_Norm, _Depth, NetConfig):
    arch: str = "grid"  # this class's architecture


@dataclass
class GridDConfig(_Pack, _Depth, NetConfig):
    arch: str = "grid"  # this class's architecture


@dataclass
class _ProganNet(NetConfig):
    """The keys both progan nets read. `width` is no progan key (fmap_* set the channels), but
    every NetConfig declares it: it is refused unless left at its default."""

    arch: str = "progan"  # this class's architecture
    fmap_base: int = 8192  # channels at stage s (resolution 2**(s+1)): min(fmap_base / 2**(s * fmap_decay), fmap_max)
    fmap_decay: float = 1.0  # log2 of the channel reduction per doubling of the resolution
    fmap_max: int = 512  # most channels of any layer

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.width != NetConfig.width:
            raise ConfigError(f"{prefix}.width", f"progan does not read width (fmap_base, fmap_decay and fmap_max set its channels); got {self.width}")
        _check_positive(f"{prefix}.fmap_base", self.fmap_base)
        _check_positive(f"{prefix}.fmap_decay", self.fmap_decay, allow_zero=True)
        _check_positive(f"{prefix}.fmap_max", self.fmap_max)


@dataclass
class ProganGConfig(_ProganNet):
    arch: str = "progan"  # this class's architecture


@dataclass
class ProganDConfig(_ProganNet):
    arch: str = "progan"  # this class's architecture
    mbstd_group: int = 4  # minibatch standard deviation over groups of this many samples, one feature map (official minibatch_stddev_layer); 0 or 1 = off


@dataclass
class _BigganNet(NetConfig):
    """The keys both biggan nets read (Brock et al. 2019; BigGAN-PyTorch's defaults for ImageNet)."""

    arch: str = "biggan"  # this class's architecture
    width: int = 96  # channel multiple `ch` (BigGAN-PyTorch's G_ch / D_ch): see bigtrain/models/biggan.py LADDERS
    cond: str = "auto"  # G: cbn only (auto); D: projection (auto) | acgan
    attention: Optional[List[int]] = None  # resolutions with a self-attention block after them; null = 64 at 128 px and up, res/2 below
    spectral_norm: bool = True  # spectral norm on every conv and linear (D: its embedding too; never G's shared embedding)
    sn_eps: float = 1e-6  # spectral norm epsilon (BigGAN-PyTorch launch scripts: --SN_eps 1e-6)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _check_positive(f"{prefix}.sn_eps", self.sn_eps)
        for r in self.attention or ():
            if r < 4 or r & (r - 1):
                raise ConfigError(f"{prefix}.attention", f"resolutions must be powers of two >= 4, got {list(self.attention)}")


@dataclass
class BigganGConfig(_BigganNet):
    hier: bool = True  # hierarchical latent: z split into one chunk per block plus one for the input layer
    shared_dim: int = 128  # size of the shared class embedding (no spectral norm) that feeds every conditional BN
    bn_eps: float = 1e-5  # batch norm epsilon (BigGAN-PyTorch --BN_eps 1e-5; StudioGAN 1e-4)
    cross_replica: bool = False  # G's batch norm statistics over all processes' micro-batches (SyncBN); G_ema always uses its own

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _check_positive(f"{prefix}.shared_dim", self.shared_dim)
        _check_positive(f"{prefix}.bn_eps", self.bn_eps)


@dataclass
class BigganDConfig(_BigganNet):
    pass


@dataclass
class BigganDeepGConfig(_BigganNet):
    """BigGAN-deep's G (bigtrain/models/biggan_deep.py): z is never split, so no `hier`."""

    arch: str = "biggan_deep"  # this class's architecture
    width: int = 128  # channel multiple `ch` (BigGAN-PyTorch's G_ch): see bigtrain/models/biggan_deep.py
    depth: int = 2  # bottleneck residual blocks per resolution (BigGAN-PyTorch's G_depth)
    shared_dim: int = 128  # size of the shared class embedding (no spectral norm); [z, it] feeds every conditional BN
    bn_eps: float = 1e-5  # batch norm epsilon (BigGAN-PyTorch --BN_eps 1e-5)
    cross_replica: bool = False  # G's batch norm statistics over all processes' micro-batches (SyncBN); G_ema always uses its own

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for key in ("shared_dim", "bn_eps"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))


@dataclass
class BigganDeepDConfig(_BigganNet):
    """BigGAN-deep's D (bigtrain/models/biggan_deep.py)."""

    arch: str = "biggan_deep"  # this class's architecture
    width: int = 128  # channel multiple `ch` (BigGAN-PyTorch's D_ch): see bigtrain/models/biggan_deep.py
    depth: int = 2  # bottleneck residual blocks per resolution (BigGAN-PyTorch's D_depth)


@dataclass
class _Img2imgNet(NetConfig):
    """The keys every image-to-image net reads (bigtrain/models/img2img.py; the defaults are
    junyanz/pytorch-CycleGAN-and-pix2pix's). `norm` may also be instance norm (without affine
    parameters, statistics per sample); a conv followed by batch norm has no bias."""

    norms: ClassVar[tuple[str, ...]] = ("instance", "batch", "none")
    arch: str = "cyclegan"  # this class's architecture
    width: int = 64  # channels of the first conv (the reference's ngf for G, ndf for D), doubled at each halving up to 8x
    norm: str = "instance"  # instance | batch | none

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for key, allow_zero in (("blocks", True), ("downs", False), ("layers", False)):
            if hasattr(self, key):
                _check_positive(f"{prefix}.{key}", getattr(self, key), allow_zero)


@dataclass
class CycleganGConfig(_Img2imgNet):
    """CycleGAN's G: the ResNet generator (the reference's resnet_9blocks)."""

    blocks: int = 9  # residual blocks at 1/4 of the resolution
    dropout: bool = False  # dropout 0.5 inside each residual block (the reference: off for CycleGAN)


@dataclass
class CycleganDConfig(_Img2imgNet):
    """CycleGAN's D: the 70x70 PatchGAN (the reference's basic D)."""

    layers: int = 3  # stride-2 convs (the reference's n_layers_D; 3: 70x70 patches, a 30x30 map at 256 px)


@dataclass
class Pix2pixGConfig(_Img2imgNet):
    """Pix2Pix's G: the U-Net (the reference's unet_256 at downs 8)."""

    arch: str = "pix2pix"  # this class's architecture
    norm: str = "batch"  # instance | batch | none (the reference's pix2pix: batch)
    downs: int = 8  # halvings down to the bottleneck (num_downs): the image side must be a multiple of 2**downs
    dropout: bool = True  # dropout 0.5 on the up-path of the downs - 5 levels just above the bottleneck (8x width; the reference: on for pix2pix)


@dataclass
class Pix2pixDConfig(_Img2imgNet):
    """Pix2Pix's D: the PatchGAN on (input, output) joined along channels."""

    arch: str = "pix2pix"  # this class's architecture
    norm: str = "batch"  # instance | batch | none (the reference's pix2pix: batch)
    layers: int = 3  # stride-2 convs (the reference's n_layers_D; 3: 70x70 patches, a 30x30 map at 256 px)


# arch -> (its G's section class, its D's); bigtrain.models.MODELS holds their builders
NET_CONFIGS: dict[str, tuple[type[NetConfig], type[NetConfig]]] = {
    "mlp": (MlpGConfig, MlpDConfig),
    "dcgan": (DcganGConfig, DcganDConfig),
    "sngan": (SnganGConfig, SnganDConfig),
    "began": (BeganGConfig, BeganDConfig),
    "grid": (GridGConfig, GridDConfig),
    "progan": (ProganGConfig, ProganDConfig),
    "biggan": (BigganGConfig, BigganDConfig),
    "biggan_deep": (BigganDeepGConfig, BigganDeepDConfig),
    "cyclegan": (CycleganGConfig, CycleganDConfig),  # image-to-image: G(x) -> y, D(x) -> a patch logit map
    "pix2pix": (Pix2pixGConfig, Pix2pixDConfig),
}
SIDES = {"g": "generator", "d": "discriminator"}


def net_config_class(side: str, arch: Any, section: str = "") -> type[NetConfig]:
    """The class of a `side` net section for `arch`; ConfigError naming <section>.arch
    (section: model.<side> unless given)."""
    if not isinstance(arch, str) or arch not in NET_CONFIGS:
        raise ConfigError(f"{section or f'model.{side}'}.arch", f"unknown architecture {arch!r}; choose one of {', '.join(sorted(NET_CONFIGS))}")
    return NET_CONFIGS[arch][list(SIDES).index(side)]


def _net_keys(cls: type[NetConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@dataclass
class ModelConfig:
    g: NetConfig = field(default_factory=DcganGConfig)  # generator: the class NET_CONFIGS has for its arch
    d: NetConfig = field(default_factory=DcganDConfig)  # discriminator: likewise
    z_dim: int = 100  # latent size
    num_classes: int = 0  # 0 = unconditional; >0 = class-conditional G and D
    nets: Dict[str, Any] = field(default_factory=dict)  # one player's own network (lowercased name: d2, g_ab, ...): keys over its side's model.g / model.d

    def __post_init__(self) -> None:
        for side, net in (("g", self.g), ("d", self.d)):
            cls = net_config_class(side, net.arch)
            if type(net) is not cls:
                raise ConfigError(f"model.{side}", f"arch {net.arch} takes a {cls.__name__}, got a {type(net).__name__}")
            net.validate(f"model.{side}")
        _check_positive("model.z_dim", self.z_dim)
        _check_positive("model.num_classes", self.num_classes, allow_zero=True)
        for name, over in self.nets.items():
            if not isinstance(over, dict):
                raise ConfigError(f"model.nets.{name}", "must be a mapping of network keys (arch, width, ...) over model.g or model.d")


def net_for(model: ModelConfig, player: str, side: str) -> NetConfig:
    """Player `player`'s network section: `model.<side>` with `model.nets.<player lowercased>`
    over it. An override that names another arch starts from that arch's defaults; each key it
    sets is checked as in `model.<side>`, errors naming `model.nets.<player>.<key>`
    (docs/design.md, "Network config per architecture")."""
    key = player.lower()
    base = getattr(model, side)
    over = model.nets.get(key)
    if over is None:
        return base
    section = f"model.nets.{key}"
    cls = net_config_class(side, over.get("arch", base.arch), section)
    for name in over:
        if name not in _net_keys(cls):
            raise ConfigError(f"{section}.{name}", f"the {cls.arch} {SIDES[side]} has no key {name!r}; its keys: {', '.join(_net_keys(cls))}")
    start = base if type(base) is cls else cls()
    try:
        net = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(start), over))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{section}.{getattr(exc, 'key', '') or ''}".rstrip("."), _first_line(exc)) from None
    net.validate(section)
    return net


@dataclass
class LossConfig:
    type: str = "nonsaturating"  # key of bigtrain.losses.LOSSES
    lsgan_abc: list[float] = field(default_factory=lambda: [0.0, 1.0, 1.0])  # LSGAN targets a (fake), b (real), c (G's)
    gp_weight: float = 0.0  # WGAN-GP gradient penalty on real/fake interpolates (lambda; 10 in the paper); 0 = off
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * |grad D(real)|^2 (Mescheder et al. 2018); 0 = off
    r1_interval: int = 1  # lazy R1: a separate D_reg phase every k iterations, weighted by k
    dragan_weight: float = 0.0  # DRAGAN penalty around perturbed real data (lambda; 10 in the paper); 0 = off
    clip_d_weights: float = 0.0  # WGAN weight clipping: D's parameters into [-c, c] after each D step; 0 = off
    acgan_weight: float = 1.0  # weight of the auxiliary classifier's cross-entropy (D cond: acgan)
    began_gamma: float = 0.5  # BEGAN diversity ratio gamma = E[L(G(z))] / E[L(x)]
    began_lambda_k: float = 0.001  # BEGAN proportional gain of k_t
    began_k0: float = 0.0  # BEGAN initial k_t

    def __post_init__(self) -> None:
        if len(self.lsgan_abc) != 3:
            raise ConfigError("loss.lsgan_abc", f"needs three values a, b, c; got {list(self.lsgan_abc)}")
        for name in ("gp_weight", "r1_gamma", "dragan_weight", "clip_d_weights", "acgan_weight", "began_lambda_k"):
            _check_positive(f"loss.{name}", getattr(self, name), allow_zero=True)
        _check_positive("loss.r1_interval", self.r1_interval)
        if not 0.0 <= self.began_k0 <= 1.0:
            raise ConfigError("loss.began_k0", f"must be in [0, 1], got {self.began_k0}")


@dataclass
class AugmentConfig:
    policy: str = ""  # DiffAugment (Zhao et al. 2020) ops for D's inputs, comma-separated: color,translation,cutout

    def __post_init__(self) -> None:
        for op in filter(None, (p.strip() for p in self.policy.split(","))):
            _check_choice("augment.policy", op, AUGMENTS)


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
    recipe: str = "gan"  # model family (bigtrain.recipes.RECIPES): gan, began, gman, madgan, progan, biggan; its own options sit under its name
    run: RunConfig = field(default_factory=RunConfig)  # naming, output folder, seed
    data: DataConfig = field(default_factory=DataConfig)  # training data source
    model: ModelConfig = field(default_factory=ModelConfig)  # G and D architectures
    loss: LossConfig = field(default_factory=LossConfig)  # adversarial loss and regularizers
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # differentiable augmentation
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


# The shared NetConfig that every `model.g` / `model.d` section had before per-architecture
# classes; configs and checkpoints of that time hold every one of these keys (docs/design.md).
OLD_NET_DEFAULTS = {"arch": "dcgan", "width": 64, "depth": 2, "norm": "batch", "cond": "auto", "spectral_norm": False,
                    "h_dim": 64, "mbstd_group": 0, "mbstd_channels": 1, "pack": 1}  # G's; D's norm was none


def _drop_old_defaults(layer: Any, nets: dict[str, type[NetConfig]]) -> Any:
    """`layer` without the untouched fields of an old shared-NetConfig section.

    A net section holding every OLD_NET_DEFAULTS key was written before per-architecture
    classes (a checkpoint's config or a run's config.yaml). A key its class does not have is
    dropped when it holds the old default, i.e. nobody set it; any other value stays and is
    refused like a key set by hand. New sections never hold all those keys, so this exception
    does not reach them (docs/design.md, "Network config per architecture").
    """
    model = layer.get("model") if isinstance(layer, dict) else None
    if not isinstance(model, dict):
        return layer
    model = dict(model)
    for side, cls in nets.items():
        net = model.get(side)
        if isinstance(net, dict) and net.keys() >= OLD_NET_DEFAULTS.keys():
            old = {**OLD_NET_DEFAULTS, "norm": "none"} if side == "d" else OLD_NET_DEFAULTS
            keep = set(_net_keys(cls))
            model[side] = {k: v for k, v in net.items() if k in keep or k not in old or v != old[k]}
    return {**layer, "model": model}


def _reason(exc: OmegaConfBaseException, key: str, nets: dict[str, type[NetConfig]]) -> str:
    """OmegaConf's message, or for a key a net section's class lacks, which keys it has."""
    parts = key.split(".")
    if isinstance(exc, ConfigKeyError) and len(parts) == 3 and parts[0] == "model" and parts[1] in nets:
        cls = nets[parts[1]]
        return f"the {cls.arch} {SIDES[parts[1]]} has no key {parts[2]!r}; its keys: {', '.join(_net_keys(cls))}"
    return _first_line(exc)


def schema(recipe: str) -> type:
    """The Config dataclass for `recipe`: Config plus the recipe's own section, if it has one."""
    from bigtrain.recipes import RECIPES

    if recipe not in RECIPES:
        raise ConfigError("recipe", f"unknown recipe {recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
    cls = RECIPES[recipe]
    if cls.section is None:
        return Config
    return dataclasses.make_dataclass(f"Config_{recipe}", [(cls.section, cls.Options, field(default_factory=cls.Options))], bases=(Config,))


def _merge(layers: list[Any], origin: str) -> Any:
    recipe = _last(layers, ("recipe",), Config.recipe)
    if not isinstance(recipe, str):
        raise ConfigError("recipe", f"must be a name (in {origin})")
    # each net section's class follows its arch, the last one the layers set
    nets = {side: net_config_class(side, _last(layers, ("model", side, "arch"), NetConfig.arch)) for side in SIDES}
    merged = OmegaConf.structured(schema(recipe)(model=ModelConfig(g=nets["g"](), d=nets["d"]())))
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, _drop_old_defaults(layer, nets))
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or origin
            raise ConfigError(key, f"{_reason(exc, key, nets)} (in {origin})") from None
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
    extra = parse_overrides(overrides or [])
    _merge(layers, str(path) if path else "defaults")  # names the file for errors in the file
    return _to_object(_merge([*layers, *extra], "command line" if extra else str(path) if path else "defaults"))


def config_from_dict(data: dict) -> Config:
    """Validate a config given as a nested dict (e.g. read back from a checkpoint)."""
    return _to_object(_merge([data], "dict"))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
