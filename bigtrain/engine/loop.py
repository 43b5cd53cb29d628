"""The training loop over a built run (engine/build.py), until `train.total_kimg`.

Reads top to bottom: for each iteration the schedule's plan for `nimg` is applied, every phase
of the recipe runs its accumulation rounds and steps the players it updates, the statistics the
recipe reads are handed to it when due, EMA copies follow their players; statistics, sample
grids, checkpoints and evaluations happen when their kimg interval is crossed, and a stop the
ranks agree on ends the run with a checkpoint. The loop never does GAN maths (the recipes, in
bigtrain/families/) and never names a family or player; the distributed engine is behind the
backend (engine/backends/). See docs/design.md, "Engine".
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Optional

import torch

from bigtrain.config import Config
from bigtrain.engine import outputs, state
from bigtrain.engine.build import Run
from bigtrain.engine.stopping import NONE, STOPPED_FILE, StopRequests, write_stopped
from bigtrain.errors import EXIT_STOPPED, Stopped
from bigtrain.families.base import Phase, Round
from bigtrain.schedule import Plan, make_plan
from bigtrain.tracking import Tracker


def crossed(nimg: int, batch: int, every_kimg: float) -> bool:
    """True when going from nimg - batch to nimg passes a multiple of every_kimg."""
    every = max(int(round(every_kimg * 1000)), 1)
    return nimg // every > (nimg - batch) // every


class Trainer(Run):
    """One training run: the built run (backend, recipe, players, streams, counters) and its loop."""

    # ---- one phase -------------------------------------------------------------------------

    def _draw(self, stream: str, size: int) -> dict[str, torch.Tensor]:
        """The next `size` samples of `stream`: one chunk, or several joined."""
        parts = [next(self.streams[stream]) for _ in range(size // self.chunk)]
        batch = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self.counters.data_pos[stream] += len(batch["x"])  # samples taken (a prefetched one is not yet)
        return batch

    def run_phase(self, phase: Phase, tracker: Tracker) -> None:
        backend, rounds = self.backend, self.backend.rounds
        micro = int(backend.micro_batch * phase.batch_fraction)  # whole: checked when the run was built
        for name in phase.frozen:
            self.players[name].freeze()
        # drawn for a whole phase at once, so micro-batch 8 x 2 rounds sees the same latents as 16 x 1
        drawn = self.recipe.latents(micro * rounds, self.latent_gen, backend.device)
        updated = [self.players[name] for name in phase.updates]
        finite = {
            p.name: torch.ones((), dtype=torch.bool, device=backend.device) for p in updated
        }  # on the device: no sync
        for r in range(rounds):
            inputs = Round(
                {s: self._draw(s, micro) for s in phase.streams},
                {k: v[r * micro : (r + 1) * micro] for k, v in drawn.items()},
                step=self.counters.step,
                gain=phase.interval,
                micro_batch=micro,
            )
            with backend.accumulate(list(self.players.values())):
                with backend.autocast():
                    losses, stats = phase.compute(inputs)
                for p in updated:
                    finite[p.name] &= torch.isfinite(losses[p.name].detach()).all()
                backend.backward([(p, losses[p.name]) for p in updated])
            for name, value in stats.items():
                tracker.report(name, value)
                if name in self.recipe.reads:
                    self.read_sums[name] = self.read_sums.get(name, 0.0) + value.detach().float()
                    self.read_counts[name] = self.read_counts.get(name, 0) + 1
        for player in updated:
            skipped = backend.step(player, phase.before_step, finite[player.name])
            if skipped is not None:
                if backend.precision == "fp16":
                    tracker.report(f"fp16/{player.name}_skipped", skipped)
                self.health.observe(
                    player.name,
                    phase.name,
                    self.counters.step,
                    skipped,
                    player.nonfinite,
                    deferred=player.deferred_guard,
                )
            if phase.clamp_weights > 0:
                backend.clamp_parameters(player, phase.clamp_weights)
        for name in phase.frozen:
            self.players[name].unfreeze()

    # ---- one iteration ---------------------------------------------------------------------

    def apply_plan(self) -> Plan:
        """The schedule's plan for this iteration, applied where it changed."""
        cfg = self.cfg
        base_lr = {n: p.base_lr for n, p in self.players.items()}
        plan = make_plan(
            cfg.schedule,
            self.counters.nimg,
            base_lr=base_lr,
            default_batch=cfg.train.batch_size,
            total_kimg=cfg.train.total_kimg,
            values=self.recipe.plan_values(self.counters.nimg),
        )
        own = self.recipe.schedule(self.counters.nimg, base_lr)
        if own is not None:
            plan = dataclasses.replace(plan, batch_size=own[0], lr=dict(own[1]))
        plan = dataclasses.replace(
            plan, micro_batch=self.recipe.micro_batch(self.counters.nimg) or self.config_micro_batch
        )
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
        self._hand_over_statistics()
        for name, ema in self.emas.items():
            with self.backend.full_parameters(self.players[name]) as net:
                ema.update(net, self.counters.nimg, plan.batch_size)

    def _hand_over_statistics(self) -> None:
        """Collective when due: the means over ranks of the statistics the recipe reads
        (Recipe.reads), one reduction for all that are due after this iteration."""
        due = [
            n for n, every in self.recipe.reads.items() if self.counters.step % every == 0 and self.read_counts.get(n)
        ]
        if not due:
            return
        means = self.backend.reduce_mean(torch.stack([self.read_sums[n] / self.read_counts[n] for n in due]))
        for n in due:
            del self.read_sums[n], self.read_counts[n]
        self.recipe.read_statistics(self.counters.step, dict(zip(due, means)))

    # ---- the loop --------------------------------------------------------------------------

    def train(self) -> Path:
        """Train to train.total_kimg; Stopped (after a checkpoint) when a stop was asked for."""
        cfg, backend, counters = self.cfg, self.backend, self.counters
        total_img = int(round(cfg.train.total_kimg * 1000))
        if backend.is_main:
            outputs.write_config(self)
            (self.run_dir / STOPPED_FILE).unlink(missing_ok=True)  # it describes the previous run
        tracker = Tracker(
            self.run_dir,
            is_main=backend.is_main,
            reduce_mean=backend.reduce_mean,
            total_img=total_img,
            start_img=counters.nimg,
            progress_bar=cfg.log.progress_bar,
            rank=backend.rank,
            world_size=backend.world_size,
            device=backend.device,
            start_step=counters.step,
        )
        tracker.load_state_dict(self.tracker_state)
        self.tracker = tracker
        t = cfg.train
        stopper = StopRequests(
            t.stop_signals,
            self.run_dir,
            is_main=backend.is_main,
            max_minutes=t.max_minutes,
            min_margin_s=60.0 * t.exit_margin_minutes,
            slurm_deadline=t.slurm_deadline,
        )
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
                every = (
                    cfg.log.every_kimg,
                    cfg.log.samples_every_kimg,
                    cfg.checkpoint.every_kimg,
                    cfg.eval.every_kimg if self.evaluator else 0,
                )
                if done or any(e > 0 and crossed(counters.nimg, batch, e) for e in every):
                    self.health.check()  # deferred skip flags: read before logging or saving anything
                if done or crossed(counters.nimg, batch, cfg.log.every_kimg):
                    tracker.flush(
                        step=counters.step,
                        nimg=counters.nimg,
                        extra={**self._data_stats(), **self.health.stats(), **self._learning_rates()},
                    )
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
            write_stopped(
                self.run_dir,
                {
                    "reason": reason,
                    "step": c.step,
                    "kimg": round(c.nimg / 1000, 3),
                    "checkpoint": str(saved),
                    "exit_code": EXIT_STOPPED,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "longest_checkpoint_s": round(stopper.longest_checkpoint_s, 3),
                    "longest_pass_s": round(stopper.longest_pass_s, 3),
                },
            )
        self.backend.barrier()  # stopped.json is down before any rank leaves
        raise Stopped(reason, c.step, saved)

    # ---- what the loop logs, saves and shows ---------------------------------------------------

    def _learning_rates(self) -> dict[str, float]:
        """`lr/<player>`: the rate each optimizer holds now (the schedule's, as applied)."""
        return {f"lr/{name}": self.backend.get_lr(p) for name, p in self.players.items()}

    def _data_stats(self) -> dict[str, float]:
        stats = state.source_stats(self)
        if not stats:
            return {}
        names = sorted(stats)
        totals = self.backend.reduce_mean(torch.tensor([float(stats[n]) for n in names], device=self.backend.device))
        return {n: v * self.backend.world_size for n, v in zip(names, totals.tolist())}

    def save_checkpoint(self) -> Path:
        return state.save_checkpoint(self)

    def save_grid(self, tracker: Tracker) -> Optional[Path]:
        return outputs.save_grid(self, tracker)

    def evaluate(self, tracker: Tracker, saved: Optional[Path]) -> dict:
        return outputs.evaluate(self, tracker, saved, self.save_checkpoint)


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
