"""Progressive growing (Karras et al. 2018, "Progressive Growing of GANs"): the classic recipe
with the progan nets (nets.py), grown by the schedule of
growth.py (docs/design.md, "Progressive growing").

Each iteration the recipe sets the schedule's level of detail on G and D (G_ema follows, as the
EMA copies G's buffers); the real batch, read at the data's resolution, is box-filtered down to
the current one and crossfaded like G's output (`blend_reals`), so D never sees reals sharper
than fakes. The global batch, the micro-batch and the learning rates come from the schedule's
per-resolution tables (docs/design.md, "Micro-batch by resolution"); the optimizers' state is
reset where a fade starts and ends (official default). The loss is `loss.type` with `loss.gp_weight`
(WGAN-GP, lambda 10 in the paper) around
`progan.gp_target` and the drift term `progan.drift` x E[D(x)^2].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from bigtrain.config import Config
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import EngineCaps, PlayerSpec, Round, Stats, optim_for
from bigtrain.families.gan.recipe import GanRecipe
from bigtrain.families.progan.growth import Growth, GrowthOptions, growth, micro_batch_at, resets_optimizer
from bigtrain.families.progan.nets import blend_reals


@dataclass
class ProganOptions(GrowthOptions):
    gp_target: float = 1.0  # gradient norm of the WGAN-GP penalty (official iwass_target; 750 for CIFAR-10)
    drift: float = 0.001  # epsilon drift: weight of E[D(real)^2] in D's loss

    def __post_init__(self) -> None:
        self.validate("progan")
        if self.gp_target <= 0:
            raise ConfigError("progan.gp_target", f"must be > 0, got {self.gp_target}")
        if self.drift < 0:
            raise ConfigError("progan.drift", f"must be >= 0, got {self.drift}")


def _at_lod(net, lod: float):
    net.set_lod(lod)
    return net


class ProganRecipe(GanRecipe):
    """G and D of arch progan, grown from `progan.initial_resolution` to the data's."""

    section = "progan"
    Options = ProganOptions

    def _check(self, cfg: Config, info: DataInfo, policy: str) -> None:
        super()._check(cfg, info, policy)
        self.opts: ProganOptions = cfg.progan
        self.gp_target, self.drift = self.opts.gp_target, self.opts.drift
        for side in ("g", "d"):
            if getattr(cfg.model, side).arch != "progan":
                raise ConfigError(f"model.{side}.arch", "the progan recipe grows the progan nets; set it to progan")
        self.resolution = info.shape[-1]
        if self.opts.initial_resolution > self.resolution:
            raise ConfigError(
                "progan.initial_resolution",
                f"{self.opts.initial_resolution} is above the data's resolution {self.resolution}",
            )
        if cfg.schedule.batch or cfg.schedule.lr:
            raise ConfigError(
                "schedule",
                "progan takes its batch and learning rates from the progan section (minibatch, g_lr, d_lr); leave "
                "schedule empty",
            )
        self.prev_lod: Optional[float] = None  # the lod of the last iteration (saved: resets stay exact on resume)
        self.now: Optional[Growth] = None

    def players(self) -> list[PlayerSpec]:
        """G and D built at the schedule's first lod, so the kimg-0 grid (drawn before the first
        iteration) is at the starting resolution, and G_ema, copied at build, starts there too."""
        lod = self._growth(0).lod
        specs = super().players()
        for spec in specs:
            spec.build = lambda build=spec.build: _at_lod(build(), lod)
            # every level is built up front and a forward uses only some: DDP must look for the
            # unused ones; `lod` is set alike on every rank each iteration, and broadcasting it
            # before each forward would bump its version (a host read in current_lod())
            spec.unused_parameters, spec.local_buffers = True, ("lod",)
        return specs

    def check_engine(self, caps: dict[str, EngineCaps]) -> None:
        super().check_engine(caps)
        if self.opts.reset_optimizer and not (caps["G"].resets_optimizer and caps["D"].resets_optimizer):
            raise ConfigError(
                "progan.reset_optimizer",
                f"is not supported by {caps['G'].engine} (its ZeRO partitions hold the optimizer state); set it to "
                "false",
            )

    # ---- the schedule ----------------------------------------------------------------------
    def _growth(self, nimg: int) -> Growth:
        # as the official code: the minibatch rounded down to a multiple of the processes and
        # capped by max_minibatch_per_gpu x processes
        return growth(
            self.opts, nimg, self.resolution, self.world_size, optim_for(self.cfg, "G").lr, optim_for(self.cfg, "D").lr
        )

    def _resolutions(self) -> list[int]:
        return [2**k for k in range(self.opts.initial_resolution.bit_length() - 1, self.resolution.bit_length())]

    def micro_batch(self, nimg: int) -> Optional[int]:
        return micro_batch_at(self.opts, self._growth(nimg).resolution, self.world_size, self.cfg.train.micro_batch)

    def micro_batch_sizes(self) -> tuple[int, ...]:
        """The micro-batch of every resolution the run trains at; a minibatch stddev group must
        divide each (or be larger: then it is the whole micro-batch, as the paper's v1 code)."""
        sizes = tuple(
            micro_batch_at(self.opts, res, self.world_size, self.cfg.train.micro_batch) for res in self._resolutions()
        )
        group = self.cfg.model.d.mbstd_group
        for res, micro in zip(self._resolutions(), sizes):
            if group and micro % min(group, micro):
                raise ConfigError(
                    "model.d.mbstd_group",
                    f"{group} does not divide the micro-batch {micro} at {res}x{res} (D's minibatch "
                    "stddev groups samples of one micro-batch); pick a divisor of every micro-batch, or one above all "
                    "of them",
                )
        return sizes

    def schedule(self, nimg: int, base_lr: dict[str, float]) -> tuple[int, dict[str, float]]:
        g = self._growth(nimg)  # its base rates are base_lr's: optim.g.lr, optim.d.lr
        return g.minibatch, {"G": g.g_lr, "D": g.d_lr}

    def plan_values(self, nimg: int) -> dict[str, float]:
        g = self._growth(nimg)
        return {"lod": g.lod, "resolution": float(g.resolution), "alpha": g.alpha}

    def begin_iteration(self, plan: Any) -> tuple[str, ...]:
        self.now = self._growth(plan.nimg)
        for player in (self.G, self.D):
            player.net.set_lod(self.now.lod)
        reset = (
            self.opts.reset_optimizer and self.prev_lod is not None and resets_optimizer(self.prev_lod, self.now.lod)
        )
        self.prev_lod = self.now.lod
        return ("G", "D") if reset else ()

    def end_iteration(self) -> Stats:
        return {
            "progan/resolution": torch.tensor(float(self.now.resolution)),
            "progan/alpha": torch.tensor(self.now.alpha),
            "progan/lod": torch.tensor(self.now.lod),
        }

    # ---- reals at the current resolution -----------------------------------------------------
    def _real(self, b: Round) -> tuple[Tensor, Optional[Tensor]]:
        x, y = super()._real(b)
        factor = x.shape[-1] // self.now.resolution
        if factor > 1:  # a box filter: the area filter for a power-of-2 step
            x = F.avg_pool2d(x, factor)
        return blend_reals(x, self.now.lod), y

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"prev_lod": self.prev_lod}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_lod = state.get("prev_lod")
