"""Building a run from its config: the backend, the run directory's lock, the data sources, the
recipe, its players (with EMA copies), the evaluator, the counters, and the restored state of a
resumed run. `Run` holds them; the loop (engine/loop.py) trains one (docs/design.md, "Engine").

The order of construction is part of the reproducible result: every rank seeds torch with the
run's seed before the players are built, in the recipe's order, so initial weights agree; the
checkpoint (if any) is restored last, RNG states included.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from bigtrain.config import Config
from bigtrain.data import DataInfo, Source, build_sources
from bigtrain.engine import checkpoint, outputs, state
from bigtrain.engine.backends import build_backend
from bigtrain.engine.guard import Health
from bigtrain.engine.players import EMA, Player
from bigtrain.engine.stopping import RunLock
from bigtrain.errors import BigtrainError, ConfigError
from bigtrain.families import build_recipe, registry
from bigtrain.schedule import Plan
from bigtrain.seeding import derive_seed
from bigtrain.tracking import Tracker

LATENT_STREAM = 1  # seed-part that keeps the latent stream apart from data streams


@dataclass
class Counters:
    step: int = 0  # iterations done (each: every phase whose interval has come, then EMA)
    nimg: int = 0  # images trained on: the plan's global batch per iteration
    data_pos: dict[str, int] = field(default_factory=dict)  # per stream: samples this rank has taken


class Prefetcher:
    """map(to_device, batches), one micro-batch ahead: when the loop takes batch k, the copy of
    batch k + 1 to the device is already issued (non-blocking), so on a GPU it overlaps batch
    k's compute. The values and their order are map's; the loop counts a batch when it takes it,
    so a resume re-reads the one that was only prefetched (`data.prefetch`)."""

    def __init__(self, to_device, batches: Iterator):
        self.to_device, self.batches = to_device, batches
        self.ahead: Optional[dict[str, torch.Tensor]] = None

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        current = self.ahead if self.ahead is not None else self.to_device(next(self.batches))
        self.ahead = self.to_device(next(self.batches))
        return current


class Run:
    """Everything one training run is made of, built from `cfg` (and restored from its latest
    checkpoint when it resumes)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        # training wall-clock: this session's, plus what the checkpoint it resumes from had counted
        self.started, self.wall_clock_before = time.monotonic(), 0.0
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.ckpt_root = self.run_dir / "checkpoints"
        self.backend = build_backend(cfg.backend, cfg.train)
        backend = self.backend
        self.lock = self._lock_run_dir()
        self.tracker: Optional[Tracker] = None
        self.tracker_state: dict = {}
        self._batches: dict[str, Iterator] = {}  # each stream's source generator (closed by release)

        resumed = checkpoint.load_for_resume(self.ckpt_root, cfg.train.resume, backend.rank, backend.all_ranks)
        if resumed is None and checkpoint.list_checkpoints(self.ckpt_root):
            raise ConfigError(
                "train.resume",
                f"{self.run_dir} already holds checkpoints; use train.resume=auto to continue, or another run.name",
            )

        reg = registry()
        self.sources: dict[str, Source] = build_sources(
            cfg.data,
            reg.recipe_class(cfg).streams,
            micro_batch=backend.micro_batch,
            rank=backend.rank,
            world_size=backend.world_size,
            seed=cfg.run.seed,
            num_classes=cfg.model.num_classes,
        )
        self.source: Source = next(iter(self.sources.values()))  # the first stream's (the only one of most recipes)
        self.info: DataInfo = self.source.info
        _check_labels(cfg, self.info)
        self.recipe = build_recipe(
            cfg, self.info, backend.world_size, reg
        )  # every config check before an engine starts
        self.recipe.check_streams({s: src.info for s, src in self.sources.items()})
        specs = self.recipe.players()
        self.recipe.check_engine({spec.name: backend.capabilities(spec.name, spec.optim) for spec in specs})
        # the streams are read in chunks that make up every micro-batch the recipe asks for
        # (progressive growing: one per resolution); otherwise a chunk is the micro-batch
        self.config_micro_batch = backend.micro_batch
        sizes = self.recipe.micro_batch_sizes()
        self.chunk = math.gcd(*sizes) if sizes else backend.micro_batch

        # train.init_from: trained weights for a new run (a resumed run has its own)
        initial = (
            state.initial_weights(cfg.train.init_from, [s.name for s in specs])
            if cfg.train.init_from and resumed is None
            else {}
        )
        torch.manual_seed(derive_seed(cfg.run.seed))  # identical initial weights on every rank
        self.players: dict[str, Player] = {}
        self.emas: dict[str, EMA] = {}
        compiled = self._check_compile([spec.name for spec in specs])
        for spec in self.recipe.players():
            net = spec.build()
            if spec.name in initial:  # before any engine copies, casts or partitions the weights
                weights, _, absent = initial[spec.name]
                state.load_initial(net, weights, f"{cfg.train.init_from}'s {spec.name}", absent)
            net = net.to(backend.device)
            if cfg.train.channels_last:
                net = net.to(memory_format=torch.channels_last)  # 4-d weights only; G_ema too
            if spec.ema:  # copied before the backend wraps it: an engine may cast or partition it
                self.emas[spec.name] = EMA(net, cfg.ema)
                _, ema_weights, absent = initial.get(spec.name, (None, None, ()))
                if ema_weights is not None:
                    state.load_initial(
                        self.emas[spec.name].module, ema_weights, f"{cfg.train.init_from}'s {spec.name}_ema", absent
                    )
            backend.attach_cross_replica(net)  # after the EMA copy: G_ema keeps its own statistics
            if spec.name in compiled:  # in place, after the EMA copy (it samples at any batch size, eagerly)
                net.compile(backend=cfg.train.compile_backend)
            self.players[spec.name] = backend.make_player(
                spec.name, net, spec.optim, local_buffers=spec.local_buffers, unused_parameters=spec.unused_parameters
            )
        self.recipe.bind(self.players, backend.reduce_mean, self.chunk)
        self._check_phases()
        self.evaluator = outputs.build_evaluator(self)
        self.best_fid = checkpoint.best_fid(self.ckpt_root)
        self.counters = Counters(data_pos={s: 0 for s in self.recipe.streams})
        self.health = Health(cfg.train.max_nonfinite, totals={name: 0 for name in self.players})
        # the statistics the recipe reads (Recipe.reads): this rank's sums and counts since the last read
        self.read_sums: dict[str, torch.Tensor] = {}
        self.read_counts: dict[str, int] = {}
        # drawn where they are used: on a GPU no host-to-device copy per phase (its state is saved in rankN.pt)
        self.latent_gen = torch.Generator(device=backend.device).manual_seed(
            derive_seed(cfg.run.seed, backend.rank, LATENT_STREAM)
        )
        if resumed is not None:
            state.restore(self, *resumed)  # every rank's torch RNG as it was when the checkpoint was saved
        else:
            torch.manual_seed(derive_seed(cfg.run.seed, backend.rank, 0))  # each rank its own augmentations
        # one stream of this rank for every name the recipe reads, each from its own source
        prefetch = cfg.data.prefetch if cfg.data.prefetch is not None else backend.device.type == "cuda"
        self._batches = {s: self.sources[s].batches(self.counters.data_pos[s], self.chunk) for s in self.recipe.streams}
        self.streams: dict[str, Iterator[dict[str, torch.Tensor]]] = {
            s: (Prefetcher if prefetch else map)(self.to_device, b) for s, b in self._batches.items()
        }
        self.plan: Optional[Plan] = None
        self.grid_cache: Optional[dict[str, torch.Tensor]] = None  # the grid's input samples, read on first use

    def wall_clock_s(self) -> float:
        """Seconds this run has trained, over every session (as its checkpoints count them)."""
        return self.wall_clock_before + time.monotonic() - self.started

    def _lock_run_dir(self) -> Optional[RunLock]:
        """Rank 0 locks the run directory (a second run on it is refused; docs/design.md,
        "Preemption and requeue"); every rank fails alike when it cannot."""
        lock, error = None, None
        if self.backend.is_main:
            lock = RunLock(self.run_dir, self.cfg.train.lock_stale_minutes)
            try:
                lock.acquire()
            except BigtrainError as exc:
                lock, error = None, exc
        if not self.backend.all_ranks(error is None):
            if lock is not None:
                lock.release()
            raise error or BigtrainError(f"{self.run_dir} is in use by another run (rank 0 could not lock it)")
        return lock

    def release(self) -> None:
        """End the data streams (a shard loader's workers are shut down, not left to the
        interpreter's exit) and give the run directory back (the lock); safe to call twice."""
        for batches in self._batches.values():
            with contextlib.suppress(Exception):
                batches.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _check_compile(self, names: list[str]) -> set[str]:
        """The players `train.compile` names (ConfigError for one the recipe does not have)."""
        lowered = {n.lower(): n for n in names}
        for key in self.cfg.train.compile:
            if key not in lowered:
                raise ConfigError(
                    "train.compile", f"this recipe has no player {key!r}; its players are {', '.join(sorted(lowered))}"
                )
        if self.cfg.train.compile:
            import torch._dynamo

            if self.cfg.train.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
                raise ConfigError(
                    "train.compile_backend",
                    f"torch.compile has no backend {self.cfg.train.compile_backend!r}; it has "
                    f"{', '.join(torch._dynamo.list_backends(exclude_tags=()))}",
                )
        return {lowered[k] for k in self.cfg.train.compile}

    def _check_phases(self) -> None:
        """A phase drawing a share of the micro-batch (`batch_fraction`) must get whole samples
        of every micro-batch of the run, and whole chunks of the streams it reads."""
        sizes = self.recipe.micro_batch_sizes() or (self.backend.micro_batch,)
        for phase in self.recipe.phases:
            if phase.batch_fraction == 1.0:
                continue
            for micro in sizes:
                share = micro * phase.batch_fraction
                if (
                    not 0 < phase.batch_fraction <= 1
                    or share != int(share)
                    or (phase.streams and int(share) % self.chunk)
                ):
                    raise ConfigError(
                        "train.micro_batch",
                        f"phase {phase.name} takes {phase.batch_fraction:g} of each micro-batch, "
                        f"which is no whole number{' of chunks' if phase.streams else ''} of samples at micro-batch "
                        f"{micro}",
                    )

    def to_device(self, batch: tuple[torch.Tensor, Optional[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """A loader micro-batch on the device, images as floats in [-1, 1]. To a GPU from pinned
        memory, so the copy is truly asynchronous (a pageable source makes the host wait)."""
        x, y = batch
        device = self.backend.device
        if device.type == "cuda":
            x, y = x.pin_memory(), (y.pin_memory() if y is not None else None)
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(127.5).sub_(1.0)  # [B, C, H, W] in [-1, 1]
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = {"x": x}
        if y is not None:
            out["y"] = y.to(device, non_blocking=True)
        return out


def _check_labels(cfg: Config, info: DataInfo) -> None:
    if cfg.model.num_classes == 0:
        return
    if info.num_classes == 0:
        raise ConfigError("model.num_classes", f"is {cfg.model.num_classes} but {cfg.data.path} has no labels")
    if info.num_classes > cfg.model.num_classes:
        raise ConfigError(
            "model.num_classes", f"is {cfg.model.num_classes} but the data has labels up to {info.num_classes - 1}"
        )
