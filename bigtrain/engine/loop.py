"""The training loop: build the recipe's players, then iterate until `train.total_kimg`.

Reads top to bottom: setup -> resume -> for each iteration, the schedule's plan for `nimg` is
applied, every phase of the recipe runs its accumulation rounds and steps the players it
updates; EMA copies follow their players; statistics, sample grids and checkpoints happen when
their kimg interval is crossed. The loop never does GAN maths (bigtrain/recipes/) and never
touches the distributed engine directly (engine/backend.py). See docs/design.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from bigtrain import config as config_mod
from bigtrain import sampling
from bigtrain.config import Config
from bigtrain.data import DataInfo, Source, build_sources
from bigtrain.engine import checkpoint
from bigtrain.engine.backends import build_backend
from bigtrain.engine.guard import Health, first_nonfinite
from bigtrain.engine.players import EMA, Player
from bigtrain.engine.stopping import NONE, STOPPED_FILE, RunLock, StopRequests, write_stopped
from bigtrain.errors import EXIT_STOPPED, BigtrainError, CheckpointError, ConfigError, Stopped, TrainingDiverged
from bigtrain.families import build_recipe, recipe_class
from bigtrain.families.base import Phase, Round
from bigtrain.schedule import Plan, make_plan
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


def crossed(nimg: int, batch: int, every_kimg: float) -> bool:
    """True when going from nimg - batch to nimg passes a multiple of every_kimg."""
    every = max(int(round(every_kimg * 1000)), 1)
    return nimg // every > (nimg - batch) // every


class Trainer:
    """One training run: owns the backend, recipe, players, data streams, tracker and counters."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.ckpt_root = self.run_dir / "checkpoints"
        self.backend = build_backend(cfg.backend, cfg.train)
        backend = self.backend
        self.lock = self._lock_run_dir()
        self.tracker: Optional[Tracker] = None
        self._tracker_state: dict = {}
        self._batches: dict[str, Iterator] = {}  # each stream's source generator (closed by release)

        resumed = checkpoint.load_for_resume(self.ckpt_root, cfg.train.resume, backend.rank, backend.all_ranks)
        if resumed is None and checkpoint.list_checkpoints(self.ckpt_root):
            raise ConfigError("train.resume", f"{self.run_dir} already holds checkpoints; use train.resume=auto to continue, or another run.name")

        self.sources: dict[str, Source] = build_sources(cfg.data, recipe_class(cfg).streams, micro_batch=backend.micro_batch, rank=backend.rank,
                                                        world_size=backend.world_size, seed=cfg.run.seed, num_classes=cfg.model.num_classes)
        self.source: Source = next(iter(self.sources.values()))  # the first stream's (the only one of most recipes)
        self.info: DataInfo = self.source.info
        _check_labels(cfg, self.info)
        self.recipe = build_recipe(cfg, self.info, backend.world_size)  # every config check before an engine starts
        self.recipe.check_streams({s: src.info for s, src in self.sources.items()})
        # the streams are read in chunks that make up every micro-batch the recipe asks for
        # (progressive growing: one per resolution); otherwise a chunk is the micro-batch
        self.config_micro_batch = backend.micro_batch
        sizes = self.recipe.micro_batch_sizes()
        self.chunk = math.gcd(*sizes) if sizes else backend.micro_batch

        torch.manual_seed(derive_seed(cfg.run.seed))  # identical initial weights on every rank
        self.players: dict[str, Player] = {}
        self.emas: dict[str, EMA] = {}
        compiled = self._check_compile([spec.name for spec in self.recipe.players()])
        for spec in self.recipe.players():
            net = spec.build().to(backend.device)
            if cfg.train.channels_last:
                net = net.to(memory_format=torch.channels_last)  # 4-d weights only; G_ema too
            if spec.ema:  # copied before the backend wraps it: an engine may cast or partition it
                self.emas[spec.name] = EMA(net, cfg.ema)
            backend.attach_cross_replica(net)  # after the EMA copy: G_ema keeps its own statistics
            if spec.name in compiled:  # in place, after the EMA copy (it samples at any batch size, eagerly)
                net.compile(backend=cfg.train.compile_backend)
            self.players[spec.name] = backend.make_player(spec.name, net, spec.optim)
        self.recipe.check_players(self.players, lambda name: backend.supports_second_order(self.players[name]))
        self.recipe.bind(self.players, backend.reduce_mean, self.chunk)
        self.evaluator = self._build_evaluator()
        self.best_fid = checkpoint.best_fid(self.ckpt_root)
        self.counters = Counters(data_pos={s: 0 for s in self.recipe.streams})
        self.health = Health(cfg.train.max_nonfinite, totals={name: 0 for name in self.players})
        # drawn where they are used: on a GPU no host-to-device copy per phase (its state is saved in rankN.pt)
        self.latent_gen = torch.Generator(device=backend.device).manual_seed(derive_seed(cfg.run.seed, backend.rank, LATENT_STREAM))
        if resumed is not None:
            self._restore(*resumed)  # every rank's torch RNG as it was when the checkpoint was saved
        else:
            torch.manual_seed(derive_seed(cfg.run.seed, backend.rank, 0))  # each rank its own augmentations
        # one stream of this rank for every name the recipe reads, each from its own source
        prefetch = cfg.data.prefetch if cfg.data.prefetch is not None else backend.device.type == "cuda"
        self._batches = {s: self.sources[s].batches(self.counters.data_pos[s], self.chunk) for s in self.recipe.streams}
        self.streams: dict[str, Iterator[dict[str, torch.Tensor]]] = {s: (Prefetcher if prefetch else map)(self._to_device, b) for s, b in self._batches.items()}
        self.plan: Optional[Plan] = None
        self._grid_cache: Optional[dict[str, torch.Tensor]] = None  # the grid's input samples, read on first use

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
                raise ConfigError("train.compile", f"this recipe has no player {key!r}; its players are {', '.join(sorted(lowered))}")
        if self.cfg.train.compile:
            import torch._dynamo

            if self.cfg.train.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
                raise ConfigError("train.compile_backend", f"torch.compile has no backend {self.cfg.train.compile_backend!r}; it has {', '.join(torch._dynamo.list_backends(exclude_tags=()))}")
        return {lowered[k] for k in self.cfg.train.compile}

    # ---- one iteration -------------------------------------------------------------------

    def _to_device(self, batch: tuple[torch.Tensor, Optional[torch.Tensor]]) -> dict[str, torch.Tensor]:
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

    def _draw(self, stream: str) -> dict[str, torch.Tensor]:
        """The next micro-batch of `stream`: one chunk, or several joined."""
        parts = [next(self.streams[stream]) for _ in range(self.backend.micro_batch // self.chunk)]
        batch = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self.counters.data_pos[stream] += len(batch["x"])  # samples taken (a prefetched one is not yet)
        return batch

    def run_phase(self, phase: Phase, tracker: Tracker) -> None:
        backend, micro = self.backend, self.backend.micro_batch
        for name in phase.frozen:
            self.players[name].freeze()
        # drawn for a whole phase at once, so micro-batch 8 x 2 rounds sees the same latents as 16 x 1
        drawn = self.recipe.latents(micro * backend.rounds, self.latent_gen, backend.device)
        updated = [self.players[name] for name in phase.updates]
        finite = {p.name: torch.ones((), dtype=torch.bool, device=backend.device) for p in updated}  # on the device: no sync
        for r in range(backend.rounds):
            inputs = Round({s: self._draw(s) for s in phase.streams}, {k: v[r * micro : (r + 1) * micro] for k, v in drawn.items()})
            with backend.accumulate(list(self.players.values())):
                with backend.autocast():
                    losses, stats = phase.compute(inputs)
                for p in updated:
                    finite[p.name] &= torch.isfinite(losses[p.name].detach()).all()
                backend.backward([(p, losses[p.name]) for p in updated])
            for name, value in stats.items():
                tracker.report(name, value)
        for player in updated:
            skipped = backend.step(player, phase.before_step, finite[player.name])
            if skipped is not None:
                if backend.precision == "fp16":
                    tracker.report(f"fp16/{player.name}_skipped", skipped)
                self.health.observe(player.name, phase.name, self.counters.step, skipped, player.nonfinite, deferred=player.deferred_guard)
            if phase.clamp_weights > 0:
                backend.clamp_parameters(player, phase.clamp_weights)
        for name in phase.frozen:
            self.players[name].unfreeze()

    def apply_plan(self) -> Plan:
        """The schedule's plan for this iteration, applied where it changed."""
        cfg = self.cfg
        base_lr = {n: p.base_lr for n, p in self.players.items()}
        plan = make_plan(cfg.schedule, self.counters.nimg, base_lr=base_lr,
                         default_batch=cfg.train.batch_size, total_kimg=cfg.train.total_kimg, values=self.recipe.plan_values(self.counters.nimg))
        own = self.recipe.schedule(self.counters.nimg, base_lr)
        if own is not None:
            plan = dataclasses.replace(plan, batch_size=own[0], lr=dict(own[1]))
        plan = dataclasses.replace(plan, micro_batch=self.recipe.micro_batch(self.counters.nimg) or self.config_micro_batch)
        last = self.plan
        # the first plan of a run (fresh or restored) is checked against what the backend and
        # the optimizers hold, which a restore may have set to any earlier iteration's values
        if last is None or (plan.batch_size, plan.micro_batch) != (last.batch_size, last.micro_batch):
            rounds = self.backend.rounds_for(plan.batch_size, plan.micro_batch)
            if (plan.micro_batch, rounds) != (self.backend.micro_batch, self.backend.rounds):
                self.backend.set_batch(plan.micro_batch, rounds)
        for name, lr in plan.lr.items():
            if (last.lr[name] if last is not None else self.backend.get_lr(self.players[name])) != lr:
                self.backend.set_lr(self.players[name], lr)
        self.plan = plan
        return plan

    def iteration(self, tracker: Tracker) -> None:
        plan = self.apply_plan()
        for name in self.recipe.begin_iteration(plan):
            self.backend.reset_optimizer(self.players[name])
        for phase in self.recipe.phases:
            if self.counters.step % phase.interval == 0:
                for _ in range(phase.repeats):
                    self.run_phase(phase, tracker)
        for name, value in self.recipe.end_iteration().items():
            tracker.report(name, value)
        self.counters.step += 1
        self.counters.nimg += plan.batch_size
        for name, ema in self.emas.items():
            with self.backend.full_parameters(self.players[name]) as net:
                ema.update(net, self.counters.nimg, plan.batch_size)

    # ---- the loop --------------------------------------------------------------------------

    def train(self) -> Path:
        """Train to train.total_kimg; Stopped (after a checkpoint) when a stop was asked for."""
        cfg, backend, counters = self.cfg, self.backend, self.counters
        total_img = int(round(cfg.train.total_kimg * 1000))
        if backend.is_main:
            self._write_config()
            (self.run_dir / STOPPED_FILE).unlink(missing_ok=True)  # it describes the previous run
        tracker = Tracker(self.run_dir, is_main=backend.is_main, reduce_mean=backend.reduce_mean, total_img=total_img, start_img=counters.nimg,
                          progress_bar=cfg.log.progress_bar, rank=backend.rank, world_size=backend.world_size, device=backend.device, start_step=counters.step)
        tracker.load_state_dict(self._tracker_state)
        self.tracker = tracker
        t = cfg.train
        stopper = StopRequests(t.stop_signals, self.run_dir, is_main=backend.is_main, max_minutes=t.max_minutes,
                               min_margin_s=60.0 * t.exit_margin_minutes, slurm_deadline=t.slurm_deadline)
        agreement = None  # the ranks' reasons to stop, exchanged one iteration late (docs/design.md)
        grid_path = None
        try:
            if counters.nimg == 0:
                grid_path = self.save_grid(tracker)
            while counters.nimg < total_img:
                started = time.monotonic()
                self.iteration(tracker)
                batch = self.plan.batch_size
                tracker.advance(counters.nimg)
                done = counters.nimg >= total_img
                every = (cfg.log.every_kimg, cfg.log.samples_every_kimg, cfg.checkpoint.every_kimg, cfg.eval.every_kimg if self.evaluator else 0)
                if done or any(e > 0 and crossed(counters.nimg, batch, e) for e in every):
                    self.health.check()  # deferred skip flags: read before logging or saving anything
                if done or crossed(counters.nimg, batch, cfg.log.every_kimg):
                    tracker.flush(step=counters.step, nimg=counters.nimg, extra={**self._data_stats(), **self.health.stats(), **self._learning_rates()})
                with tracker.maintenance():
                    if done or crossed(counters.nimg, batch, cfg.log.samples_every_kimg):
                        grid_path = self.save_grid(tracker) or grid_path
                    saved = None
                    if done or crossed(counters.nimg, batch, cfg.checkpoint.every_kimg):
                        saved = self._timed_checkpoint(stopper)
                    if self.evaluator is not None and (done or crossed(counters.nimg, batch, cfg.eval.every_kimg)):
                        self.evaluate(tracker, saved)
                stopper.observe(pass_s=time.monotonic() - started)
                if self.lock is not None:
                    self.lock.touch()
                if done:
                    break
                local = stopper.local_reason()
                if backend.world_size == 1:
                    reason = local
                else:  # started after the previous iteration, read now: never a wait for the device
                    reason = agreement.result() if agreement is not None else NONE
                    agreement = backend.max_over_ranks(local)
                if reason != NONE:
                    if agreement is not None:  # every rank started it: finish it before the checkpoint's collectives
                        agreement.result()
                        agreement = None
                    self._stop(stopper.describe(reason), saved, stopper)
            if agreement is not None:
                agreement.result()
        finally:
            stopper.close()
            tracker.close()
            self.tracker = None
        backend.barrier()
        self.last_grid = grid_path
        return self.run_dir

    def _timed_checkpoint(self, stopper: StopRequests) -> Path:
        started = time.monotonic()
        saved = self.save_checkpoint()
        stopper.observe(checkpoint_s=time.monotonic() - started)
        return saved

    def _stop(self, reason: str, saved: Optional[Path], stopper: StopRequests) -> None:
        """A stop the ranks agreed on: checkpoint this step (unless just done), record it, raise Stopped."""
        if saved is None:
            with self.tracker.maintenance():
                saved = self._timed_checkpoint(stopper)
        c = self.counters
        if self.backend.is_main:
            write_stopped(self.run_dir, {"reason": reason, "step": c.step, "kimg": round(c.nimg / 1000, 3), "checkpoint": str(saved),
                                         "exit_code": EXIT_STOPPED, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                         "longest_checkpoint_s": round(stopper.longest_checkpoint_s, 3), "longest_pass_s": round(stopper.longest_pass_s, 3)})
        self.backend.barrier()  # stopped.json is down before any rank leaves
        raise Stopped(reason, c.step, saved)

    def _learning_rates(self) -> dict[str, float]:
        """`lr/<player>`: the rate each optimizer holds now (the schedule's, as applied)."""
        return {f"lr/{name}": self.backend.get_lr(p) for name, p in self.players.items()}

    def _source_stats(self) -> dict[str, float]:
        """This rank's data counters: the one stream's as `data/skipped`, several as `data/A/skipped`."""
        if len(self.sources) == 1:
            return self.source.stats()
        return {f"data/{s}/{k.removeprefix('data/')}": v for s, src in self.sources.items() for k, v in src.stats().items()}

    def _restore_source_stats(self, stats: dict[str, float]) -> None:
        if len(self.sources) == 1:
            return self.source.restore_stats(stats)
        for s, src in self.sources.items():
            prefix = f"data/{s}/"
            src.restore_stats({f"data/{k.removeprefix(prefix)}": v for k, v in stats.items() if k.startswith(prefix)})

    def _data_stats(self) -> dict[str, float]:
        stats = self._source_stats()
        if not stats:
            return {}
        names = sorted(stats)
        totals = self.backend.reduce_mean(torch.tensor([float(stats[n]) for n in names], device=self.backend.device))
        return {n: v * self.backend.world_size for n, v in zip(names, totals.tolist())}

    # ---- generation: grids and evaluation ----------------------------------------------------

    @contextlib.contextmanager
    def generation_nets(self, use_ema: bool) -> Iterator[dict[str, torch.nn.Module]]:
        """The modules that generate: EMA copies (rank-local), or the players themselves with
        all parameters present (collective at ZeRO-3: every rank must enter)."""
        with contextlib.ExitStack() as stack:
            nets = {}
            for name in self.recipe.sampled:
                if use_ema and name in self.emas:
                    nets[name] = self.emas[name].module
                else:
                    nets[name] = stack.enter_context(self.backend.full_parameters(self.players[name]))
            yield nets

    def _uses_ema(self, wanted: bool = True) -> bool:
        return wanted and all(name in self.emas for name in self.recipe.sampled)

    def save_grid(self, tracker: Tracker) -> Optional[Path]:
        """Sample grid on the fixed latents (one class per row when conditional), from the EMA
        copies on the main process, else from the players on every rank under the training
        precision (an engine may hold them in bf16, or partitioned: a collective forward)."""
        use_ema = self._uses_ema()
        if self.info.kind != "image" or (use_ema and not self.backend.is_main):
            return None
        cols = self.cfg.log.grid_cols
        inputs = self._grid_inputs(cols)
        with self.generation_nets(use_ema) as nets, (contextlib.nullcontext() if use_ema else self.backend.autocast()):
            images, rows = self.recipe.grid_images(nets, self.cfg.log.grid_rows, cols, seed=self.cfg.run.seed, device=self.backend.device, inputs=inputs)
        if not self.backend.is_main:
            return None
        grid = sampling.image_grid(images, rows, cols)
        return tracker.image("fakes", grid, self.counters.nimg)

    def _grid_inputs(self, n: int) -> dict[str, torch.Tensor]:
        """The first `n` samples of each stream the recipe's grid shows (read once from a fresh
        iterator of the stream's source: the training streams stay untouched)."""
        if self._grid_cache is None:
            self._grid_cache = {}
            for s in self.recipe.grid_streams:
                parts, have = [], 0
                for batch in self.sources[s].batches(0):
                    parts.append(self._to_device(batch)["x"])
                    have += len(parts[-1])
                    if have >= n:
                        break
                self._grid_cache[s] = torch.cat(parts)[:n]
        return self._grid_cache

    def _build_evaluator(self):
        ecfg, backend = self.cfg.eval, self.backend
        if ecfg.every_kimg <= 0:
            return None
        from bigtrain.eval.evaluate import build_evaluator
        from bigtrain.eval.weights import resolve_weights

        if backend.is_main:
            resolve_weights(ecfg.inception_weights or None)  # a download, if any, happens once
        backend.barrier()
        return build_evaluator(
            ecfg.metrics, num_samples=ecfg.num_samples, ref_stats=ecfg.ref_stats or None, rank=backend.rank,
            world_size=backend.world_size, device=backend.device, seed=ecfg.seed, batch_size=ecfg.batch_size,
            weights=ecfg.inception_weights or None,
        )

    def evaluate(self, tracker: Tracker, saved: Optional[Path]) -> dict:
        """FID/IS/KID of the EMA copy (collective); a new best FID keeps its checkpoint as `best/`."""
        from bigtrain.eval.evaluate import log_record

        use_ema = self._uses_ema(self.cfg.eval.use_ema)
        precision = contextlib.nullcontext if use_ema else self.backend.autocast
        ecfg = self.cfg.eval

        with self.generation_nets(use_ema) as nets:
            def generate(indices):
                with precision():
                    return self.recipe.generate(nets, indices, seed=ecfg.seed, device=self.backend.device, batch_size=ecfg.batch_size)[0]

            result = self.evaluator(generate, ema=use_ema, kimg=self.counters.nimg / 1000, checkpoint=str(saved) if saved else None,
                                    inputs=self.recipe.generation_inputs())
        record = {"step": self.counters.step, "kimg": round(self.counters.nimg / 1000, 3), **log_record(result)}
        tracker.write(record, self.counters.step)
        if self.backend.is_main:
            for warning in result.get("warnings", []):
                warnings.warn(f"eval: {warning}", stacklevel=2)
        fid = result.get("fid")
        if fid is not None and fid < self.best_fid:
            self.best_fid = fid
            folder = saved or self.save_checkpoint()
            if self.backend.is_main:
                checkpoint.keep_as_best(self.ckpt_root, folder.name, record)
            self.backend.barrier()
        return result

    # ---- checkpoints -----------------------------------------------------------------------

    def _nonfinite_weights(self) -> Optional[str]:
        """Collective: the first player or EMA copy tensor (weights or buffers) holding a
        non-finite value, on any rank, or None."""
        bad = None
        for name, player in self.players.items():
            with self.backend.full_parameters(player) as net:
                bad = bad or first_nonfinite(net.state_dict(), f"{name}.")  # every rank enters: collective at ZeRO-3
        for name, ema in self.emas.items():
            bad = bad or first_nonfinite(ema.module.state_dict(), f"{name}_ema.")
        if self.backend.all_ranks(bad is None):
            return None
        return bad or "a tensor on another rank"

    def save_checkpoint(self) -> Path:
        backend, c = self.backend, self.counters
        self.health.check()  # a player past train.max_nonfinite (deferred flags) saves nothing
        bad = self._nonfinite_weights()
        if bad is not None:  # never written: `latest` keeps naming the last finite checkpoint
            raise TrainingDiverged(f"not writing the checkpoint of step {c.step}: {bad} is non-finite; the run's last checkpoint is kept")
        trainer_state = None
        if backend.is_main:
            trainer_state = {
                "players": {name: backend.player_state(p) for name, p in self.players.items()},
                **{f"{name}_ema": ema.state_dict() for name, ema in self.emas.items()},
                "recipe": self.recipe.state_dict(),
                "counters": {"step": c.step, "nimg": c.nimg},
                "world_size": backend.world_size,
                "health": dict(self.health.totals),
                "config": config_mod.to_dict(self.cfg),
                "data_info": self.info.to_dict(),
            }
        rank_state = {
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "latent_gen": self.latent_gen.get_state(),
            "data_pos": dict(c.data_pos),
            "data_stats": self._source_stats(),  # this rank's counters (data/skipped)
            "recipe": self.recipe.rank_state_dict(),
            # this rank's statistics since the last log line, so a resume at any step logs alike
            "tracker": self.tracker.state_dict() if self.tracker is not None else {},
        }
        return checkpoint.save(
            self.ckpt_root, checkpoint.checkpoint_name(c.step), trainer_state=trainer_state, rank_state=rank_state,
            rank=backend.rank, all_ranks=backend.all_ranks, keep_last=self.cfg.checkpoint.keep_last,
            write_engine_files=lambda folder: backend.save_engine_files(list(self.players.values()), folder),
        )

    def _restore(self, folder: Path, trainer_state: dict, rank_state: dict) -> None:
        data_pos = rank_state["data_pos"]
        if isinstance(data_pos, int):  # written before streams were named: micro-batches of the one stream
            rank_state = {**rank_state, "data_pos": {s: data_pos * self.backend.micro_batch for s in self.recipe.streams}}
        written = checkpoint.written_by(folder, trainer_state)
        if written != self.backend.world_size:
            rank_state = self._other_world(folder, written, trainer_state, rank_state)
        try:
            for name, p in self.players.items():
                self.backend.load_player(p, trainer_state["players"][name], folder, written=written)
            for name, ema in self.emas.items():
                if trainer_state.get(f"{name}_ema") is not None:
                    ema.load_state_dict(trainer_state[f"{name}_ema"])
            self.recipe.load_state_dict(trainer_state.get("recipe", trainer_state.get("objective")) or {})
            self.recipe.load_rank_state_dict(rank_state.get("recipe") or {})
        except OSError as exc:  # a file the engine reads itself, missing or unreadable
            raise CheckpointError(f"{folder}: cannot be read ({exc})") from None
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{folder}: does not fit this config ({str(exc).splitlines()[0]})") from None
        self._restore_source_stats(rank_state.get("data_stats") or {})
        self._tracker_state = rank_state.get("tracker") or {}
        self.counters = Counters(step=trainer_state["counters"]["step"], nimg=trainer_state["counters"]["nimg"], data_pos=dict(rank_state["data_pos"]))
        self.health.totals.update(trainer_state.get("health") or {})
        try:
            self.latent_gen.set_state(rank_state["latent_gen"])
        except RuntimeError as exc:  # a CUDA generator's state does not fit a CPU one, and back
            raise CheckpointError(f"rank {self.backend.rank}: the saved latent stream does not fit a {self.backend.device.type} generator (the checkpoint was made on another kind of device?): {str(exc).splitlines()[0]}") from None
        torch.set_rng_state(rank_state["torch_rng"])
        if rank_state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rank_state["cuda_rng"])

    def _other_world(self, folder: Path, written: int, trainer_state: dict, rank_state: dict) -> dict:
        """A checkpoint of `written` processes resumed on another number (docs/design.md,
        "Resume on another number of processes"): the global state loads as it is; a rank that
        existed keeps its RNG, latent stream, data positions, pools and unlogged statistics; a
        new rank starts its own augmentation and latent streams, seeded by (seed, rank, step),
        with empty per-rank recipe state, at rank 0's data positions. Positions round up to whole
        chunks of this run (a shard stream restarts only there)."""
        backend, seed = self.backend, self.cfg.run.seed
        if not backend.reshardable:
            raise CheckpointError(f"{folder}: written by {written} processes; the {self.cfg.backend.kind} backend resumes only on the same number "
                                  f"here (fp16 engines are not converted), not on {backend.world_size}")
        if backend.is_main:
            warnings.warn(f"resuming {folder.name}, written by {written} process(es), on {backend.world_size}: weights, optimizers, EMA, scalers, "
                          f"schedule and counters carry over; ranks >= {min(written, backend.world_size)} draw new data and latent streams, "
                          "so the losses follow another, equally likely path from here", stacklevel=2)
        state = dict(rank_state)
        if state.pop("new_rank", False):
            step = int(trainer_state["counters"]["step"])
            state["torch_rng"] = torch.Generator().manual_seed(derive_seed(seed, backend.rank, 0, step)).get_state()
            state["latent_gen"] = torch.Generator(device=backend.device).manual_seed(derive_seed(seed, backend.rank, LATENT_STREAM, step)).get_state()
            state.update(cuda_rng=None, recipe={}, data_stats={}, tracker={})
        m = self.chunk
        state["data_pos"] = {s: -(-int(p) // m) * m for s, p in state["data_pos"].items()}
        return state

    def _write_config(self) -> None:
        """config.yaml = the resolved config; a different earlier one is kept, not overwritten."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.yaml"
        text = config_mod.to_yaml(self.cfg)
        if path.exists() and path.read_text() != text:
            path.rename(self.run_dir / f"config-before-step{self.counters.step:08d}.yaml")
        path.write_text(text)


def _check_labels(cfg: Config, info: DataInfo) -> None:
    if cfg.model.num_classes == 0:
        return
    if info.num_classes == 0:
        raise ConfigError("model.num_classes", f"is {cfg.model.num_classes} but {cfg.data.path} has no labels")
    if info.num_classes > cfg.model.num_classes:
        raise ConfigError("model.num_classes", f"is {cfg.model.num_classes} but the data has labels up to {info.num_classes - 1}")


def train(cfg: Config) -> Trainer:
    """Run (or continue) training as configured; returns the finished Trainer."""
    trainer = Trainer(cfg)
    finished = False
    try:
        trainer.train()
        finished = True
    except Stopped:
        finished = True  # every rank stopped at the same step: a clean close
        raise
    finally:
        trainer.release()
        with contextlib.suppress(Exception):
            trainer.backend.close(wait=finished)
    return trainer
