"""What a recipe declares and what the loop gives it (docs/design.md, "Recipes").

A recipe is one model family: its named players (one network each, with an optimizer and
optionally an EMA copy), its phases (which players a phase updates from one forward, which it
freezes, which data streams it draws, how often it runs), how it generates samples, and its
state (global, and per rank). The loop (bigtrain/engine/loop.py) runs any recipe the same way
and never learns a family's name; recipes never import the distributed engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn

from bigtrain.config import Config, OptimConfig
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.netconfig import SIDES, NetConfig, net_keys

Stats = dict[str, Tensor]
ReduceMean = Callable[[Tensor], Tensor]
Builder = Callable[[Any, int, int, DataInfo], nn.Module]  # (its net section, z_dim, num_classes, data) -> module


@dataclass(frozen=True)
class Arch:
    """One architecture (`model.g.arch` / `model.d.arch`): each side's config section class and
    builder. G(z [N, z_dim], y int64 [N] | None) -> images [N, C, H, W] in [-1, 1] or vectors
    [N, D]; D(x, y | None) -> logits [N] (with `cond: acgan`, [N, 1 + classes]). An
    image-to-image arch (`maps: image`) has G(x) -> image and D(x) -> a patch logit map."""

    g_config: type[NetConfig]
    d_config: type[NetConfig]
    g: Builder
    d: Builder
    maps: str = "z"  # "z": G samples from latents; "image": G translates images

    def config(self, side: str) -> type[NetConfig]:
        return self.g_config if side == "g" else self.d_config


@dataclass(frozen=True)
class Family:
    """A model family as the registry knows it: its recipes (a folder may hold several, e.g.
    cyclegan and pix2pix) and the architectures its folder defines (any recipe may use any
    registered arch that it accepts)."""

    recipes: dict[str, type["Recipe"]]
    archs: dict[str, Arch] = field(default_factory=dict)


@dataclass
class PlayerSpec:
    """A player as the recipe declares it; the backend turns it into a trained `Player`."""

    name: str  # "G", "D", "D2", "G_AB", ... (key of its state in checkpoints)
    build: Callable[[], nn.Module]  # builds the plain module from its own config section
    optim: OptimConfig  # its optimizer (optim.<name lowercased>, or the recipe's fallback)
    ema: bool = False  # keep an exponential moving average of its weights (`<name>_ema`)
    local_buffers: tuple[
        str, ...
    ] = ()  # buffers (names in net.named_buffers()) each rank sets itself: never broadcast by DDP
    unused_parameters: bool = False  # a forward may leave some parameters unused (DDP's find_unused_parameters)


@dataclass(frozen=True)
class EngineCaps:
    """What the engine behind one player can do, known before it starts (Recipe.check_engine)."""

    engine: str  # for messages: "DDP", "DeepSpeed ZeRO-3", ...
    second_order: bool = True  # a loss may backpropagate through input gradients (gradient penalties, path length)
    whole_weights: bool = True  # every rank holds each whole weight (not at ZeRO-3): a before_step hook may read W W^T
    resets_optimizer: bool = True  # its optimizer state can be cleared mid-run


class Net(Protocol):
    """What a phase needs of a player: its plain module and what it is trained through."""

    name: str
    net: nn.Module  # plain module: frozen forwards, EMA, saving
    engine: nn.Module  # DDP wrapper, DeepSpeed engine, or the module itself

    def differentiable_forward(
        self, *inputs: Any, anchor: bool = False, **options: Any
    ) -> tuple[Any, Optional[Tensor]]:
        """(outputs, anchor) of the player on `inputs` for a loss that differentiates through its
        input gradients (autograd.grad with create_graph, then the phase's backward: gradient
        penalties, path length), however the engine trains it; `anchor` (a zero to add to the
        phase's loss) makes the engine see this phase when no other forward of it does."""


@dataclass
class Round:
    """One accumulation round's inputs, already on the device.

    `data[stream]` holds the named tensors of one micro-batch of that stream (`x` images in
    [-1, 1] [B, C, H, W] or vectors [B, D]; `y` int64 [B] when the data has labels);
    `latents` the recipe's draws for this round (sliced from one draw per phase, so micro-batch
    8 x 2 rounds sees the same latents as 16 x 1).
    """

    data: dict[str, dict[str, Tensor]]
    latents: dict[str, Tensor]
    step: int = 0  # the iteration (iterations done before it)
    gain: int = 1  # the phase's interval: a lazy regulariser multiplies its loss by it
    micro_batch: int = 0  # samples per process in this round (the phase's share of the iteration's micro-batch)


class GradAccess(Protocol):
    """Reading and replacing a player's gradients between backward and step, whatever the
    engine keeps them as (DDP: `.grad`; DeepSpeed: fp32 partitions)."""

    def get(self, param: nn.Parameter) -> Optional[Tensor]: ...

    def set(self, param: nn.Parameter, grad: Tensor) -> None: ...


@dataclass
class Phase:
    """One kind of update. `compute(round) -> (losses by updated player, stats)`."""

    name: str  # "D_main", "D_reg", "G_main", ...
    updates: tuple[str, ...]  # players stepped after this phase (one loss each)
    frozen: tuple[str, ...]  # players that get no gradient here
    compute: Callable[[Round], tuple[dict[str, Tensor], Stats]]
    streams: tuple[str, ...] = ()  # data streams drawn once per accumulation round
    repeats: int = 1  # runs per iteration (d_steps for D)
    interval: int = 1  # runs only every `interval` iterations (lazy regularization)
    clamp_weights: float = 0.0  # > 0: updated players' weights clamped to [-c, c] after the step (WGAN)
    before_step: Optional[Callable[[str, nn.Module, GradAccess], None]] = None  # (player, net, grads) after backward
    batch_fraction: float = 1.0  # its rounds hold this share of the micro-batch (StyleGAN2's path length: 1/2)


class Recipe:
    """Base class: subclasses set `section` (their own config key, or None) and `Options`
    (its dataclass), and implement `players`, `bind` and `generate`."""

    section: Optional[str] = None  # top-level config key of the recipe's own options
    Options: Optional[type] = None  # dataclass of those options
    sections: ClassVar[
        dict[str, type]
    ] = {}  # further top-level sections it reads, shared with other recipes (loss, augment)
    renamed: ClassVar[
        dict[str, tuple[str, Any]]
    ] = {}  # old dotted key -> (new dotted key, default), read for one release
    streams: tuple[str, ...] = ("real",)  # data streams the recipe reads
    sampled: tuple[str, ...] = ("G",)  # players (EMA copy when kept) that generate samples
    grid_streams: tuple[str, ...] = ()  # streams whose first samples the sample grid shows (image-to-image: its inputs)
    conditional_sampling: bool = True  # `--class` means something for this family
    reads: ClassVar[
        dict[str, int]
    ] = {}  # statistic of its phases -> every how many iterations read_statistics gets its mean over ranks

    world_size: int = 1  # processes training the recipe (set by build_recipe)
    archs: Mapping[str, Arch] = {}  # every architecture of the registry (set by build_recipe)

    def __init__(self, cfg: Config, info: DataInfo):
        self.cfg, self.info = cfg, info
        self.phases: list[Phase] = []

    @classmethod
    def create(cls, cfg: Config, info: DataInfo, *, archs: Mapping[str, Arch], world_size: int = 1) -> "Recipe":
        """The recipe for `cfg` on `info`, with the registry's architectures and the number of
        processes set before `__init__` runs its config checks (which may build or inspect nets)."""
        recipe = cls.__new__(cls)
        recipe.archs, recipe.world_size = archs, world_size
        recipe.__init__(cfg, info)
        return recipe

    # ---- networks ---------------------------------------------------------------------
    def build_generator(self, info: DataInfo, net: Optional[NetConfig] = None) -> nn.Module:
        """G for `net` (a player's own section, `net_for`), by default `model.g`."""
        net = net or self.cfg.model.g
        return self.archs[net.arch].g(net, self.cfg.model.z_dim, self.cfg.model.num_classes, info)

    def build_discriminator(self, info: DataInfo, net: Optional[NetConfig] = None) -> nn.Module:
        """D for `net` (a player's own section, `net_for`), by default `model.d`."""
        net = net or self.cfg.model.d
        return self.archs[net.arch].d(net, self.cfg.model.z_dim, self.cfg.model.num_classes, info)

    def net_for(self, player: str, side: str) -> NetConfig:
        """Player `player`'s network section (`net_for` with this recipe's config and archs)."""
        return net_for(self.cfg.model, player, side, self.archs)

    # ---- declared before any engine starts ---------------------------------------------
    def players(self) -> list[PlayerSpec]:
        """Every player, in the order the loop builds them (each draws its initial weights
        from the torch seed in turn, so the order is part of the reproducible result)."""
        raise NotImplementedError

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        """Receive the trained players (and the per-process micro-batch); set `self.phases`."""
        raise NotImplementedError

    def latents(self, n: int, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        """Draws for one phase of `n` samples from the rank's latent stream `gen` (on the backend's
        device: draw with device=gen.device)."""
        return {}

    def optim_groups(self) -> tuple[str, ...]:
        """Config keys besides the players' own that `optim.*` may use as a shared fallback."""
        return ()

    def check_streams(self, infos: dict[str, DataInfo]) -> None:
        """Refuse data whose streams do not fit each other (called with every stream's info)."""

    def check_engine(self, caps: dict[str, EngineCaps]) -> None:
        """Refuse settings the engines cannot do (e.g. gradient penalties at ZeRO-3); `caps` by
        player name, known before any engine starts."""

    def plan_values(self, nimg: int) -> dict[str, float]:
        """Recipe values of the schedule at `nimg` (a resolution, a fade alpha, ...)."""
        return {}

    def schedule(self, nimg: int, base_lr: dict[str, float]) -> Optional[tuple[int, dict[str, float]]]:
        """The recipe's own (global batch, learning rate by player) at `nimg`, replacing
        `schedule.batch` / `schedule.lr` (progressive growing looks both up by resolution); None:
        the config's schedule. A pure function of `nimg`, as the plan must be."""
        return None

    def micro_batch(self, nimg: int) -> Optional[int]:
        """The recipe's own per-process micro-batch at `nimg` (progressive growing: by
        resolution); None: train.micro_batch's. A pure function of `nimg`."""
        return None

    def micro_batch_sizes(self) -> tuple[int, ...]:
        """Every value `micro_batch` returns over the run (() when it returns None): the data
        streams are read in chunks of their greatest common divisor. Checked before any
        engine starts."""
        return ()

    def begin_iteration(self, plan: Any) -> tuple[str, ...]:
        """Called with the iteration's plan before its phases (e.g. set a resolution on the
        nets); returns the players whose optimizer state the backend should reset now."""
        return ()

    # ---- every iteration ---------------------------------------------------------------
    def end_iteration(self) -> Stats:
        """Bookkeeping after all phases of an iteration (collective if it reduces); stats."""
        return {}

    def read_statistics(self, step: int, means: dict[str, Tensor]) -> None:
        """The means over every rank and observation of the statistics named in `reads`, since
        their last read, after iteration `step` when it is a multiple of their interval (ADA's
        augmentation strength follows E[sign(D(real))] this way)."""

    # ---- sampling from one generator (`bigtrain sample --standing-stats / --interp`) -------
    def standing_statistics(
        self,
        nets: dict[str, nn.Module],
        batches: int,
        batch_size: int,
        *,
        seed: int,
        truncation: Optional[float] = None,
        device: torch.device | str = "cpu",
    ) -> int:
        """Re-estimate the batch-norm statistics of the sampled generator from its own samples;
        returns the BN layers updated. ValueError where the family has no such generator."""
        raise ValueError(
            f"this family ({type(self).__name__}) samples from {', '.join(nets)}; standing statistics are for one G(z, "
            "y)"
        )

    def style_mixing(
        self,
        nets: dict[str, nn.Module],
        rows: int,
        cols: int,
        *,
        seed: int,
        truncation: Optional[float] = None,
        device: torch.device | str = "cpu",
        **options: Any,
    ) -> Tensor:
        """A style-mixing grid's images, (rows + 1) x (cols + 1) row by row; ValueError where the
        family has no styles to mix."""
        raise ValueError(f"this family ({type(self).__name__}) has no styles to mix")

    def interpolation(
        self,
        nets: dict[str, nn.Module],
        rows: int,
        steps: int,
        *,
        kind: str,
        seed: int,
        truncation: Optional[float] = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """An interpolation grid's images (rows x steps); ValueError where the family has none."""
        raise ValueError(
            f"this family ({type(self).__name__}) samples from {', '.join(nets)}; interpolation is for one G(z, y)"
        )

    # ---- sampling ----------------------------------------------------------------------
    def generate(
        self,
        nets: dict[str, nn.Module],
        indices: Sequence[int],
        *,
        seed: int,
        truncation: Optional[float] = None,
        class_idx: Optional[int] = None,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Samples for `indices` (sample i depends only on (seed, i)): float images [N, C, H, W]
        in [-1, 1] or vectors [N, D] on CPU, and int64 labels or None."""
        raise NotImplementedError

    def generation_inputs(self) -> Optional[dict]:
        """For the eval protocol, the images `generate` transforms (None: it samples latents)."""
        return None

    def grid_classes(self, rows: int) -> list[Optional[int]]:
        """The class shown in each row of a sample grid (None: unconditional)."""
        return [None] * rows

    def grid_images(
        self,
        nets: dict[str, nn.Module],
        rows: int,
        cols: int,
        *,
        seed: int,
        device: torch.device | str,
        inputs: dict[str, Tensor],
    ) -> tuple[Tensor, int]:
        """The sample grid's images, uint8 [R x cols, C, H, W] row by row, and R: by default
        `rows` rows of `generate` on fixed indices, one class per row (`grid_classes`). `inputs`:
        the first samples of each of `grid_streams` (float, on the device)."""
        from bigtrain import sampling

        images = []
        for r, cls in enumerate(self.grid_classes(rows)):
            x, _ = self.generate(nets, range(r * cols, (r + 1) * cols), seed=seed, class_idx=cls, device=device)
            images.append(sampling.to_uint8(x))
        return torch.cat(images), rows

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Global state (identical on every rank), saved by rank 0."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own state (e.g. an image pool), saved in rankN.pt."""
        return {}

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        pass


def optim_for(cfg: Config, name: str, *fallbacks: str) -> OptimConfig:
    """`optim.<name lowercased>`, else the first fallback key present, else the defaults."""
    for key in (name.lower(), *fallbacks):
        if key in cfg.optim:
            return cfg.optim[key]
    return OptimConfig()


def has_batch_statistics(net: nn.Module) -> bool:
    """True when a forward mixes samples of one batch (batch norm, minibatch stddev): then real
    and fake must be forwarded apart (docs/design.md, "No D statistic mixes real and fake")."""
    from bigtrain.layers import MinibatchStddev

    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, MinibatchStddev)) for m in net.modules())


def net_for(model: Any, player: str, side: str, archs: Mapping[str, Arch]) -> NetConfig:
    """Player `player`'s network section: `model.<side>` with `model.nets.<player lowercased>`
    over it. An override that names another arch starts from that arch's defaults; each key it
    sets is checked as in `model.<side>`, errors naming `model.nets.<player>.<key>`
    (docs/design.md, "Network config per architecture")."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    key = player.lower()
    base = getattr(model, side)
    over = model.nets.get(key)
    if over is None:
        return base
    section = f"model.nets.{key}"
    arch = over.get("arch", base.arch)
    if arch not in archs:
        raise ConfigError(f"{section}.arch", f"unknown architecture {arch!r}; choose one of {', '.join(sorted(archs))}")
    cls = archs[arch].config(side)
    for name in over:
        if name not in net_keys(cls):
            raise ConfigError(
                f"{section}.{name}",
                f"the {cls.arch} {SIDES[side]} has no key {name!r}; its keys: {', '.join(net_keys(cls))}",
            )
    start = base if type(base) is cls else cls()
    try:
        net = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(start), over))
    except OmegaConfBaseException as exc:
        text = str(exc).strip().splitlines()
        raise ConfigError(
            f"{section}.{getattr(exc, 'key', '') or ''}".rstrip("."), text[0] if text else type(exc).__name__
        ) from None
    net.validate(section)
    return net
