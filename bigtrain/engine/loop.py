"""The training loop: build players and phases, then iterate until `train.total_kimg`.

Reads top to bottom: setup -> resume -> for each iteration, every phase of the objective runs
its accumulation rounds and steps its player; G_ema follows G; statistics, sample grids and
checkpoints happen when their kimg interval is crossed. The loop never does GAN maths
(engine/gan.py) and never touches the distributed engine directly (engine/backend.py).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from bigtrain import config as config_mod
from bigtrain.config import Config
from bigtrain.data import Batch, DataInfo, Source, build_source
from bigtrain.engine import checkpoint, sampling
from bigtrain.engine.backend import build_backend
from bigtrain.engine.gan import Phase, RoundInputs, build_objective
from bigtrain.engine.players import EMA, Player
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.models import build_discriminator, build_generator
from bigtrain.seeding import derive_seed, generator
from bigtrain.tracking import Tracker

LATENT_STREAM = 1  # seed-part that keeps the latent stream apart from data streams


@dataclass
class Counters:
    step: int = 0  # iterations done (each: d_steps D updates + one G update)
    nimg: int = 0  # images trained on: batch_size per iteration
    data_pos: int = 0  # micro-batches this rank has taken from its data stream


def crossed(nimg: int, batch: int, every_kimg: float) -> bool:
    """True when going from nimg - batch to nimg passes a multiple of every_kimg."""
    every = max(int(round(every_kimg * 1000)), 1)
    return nimg // every > (nimg - batch) // every


class Trainer:
    """One training run: owns the backend, players, data stream, tracker and counters."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.ckpt_root = self.run_dir / "checkpoints"
        self.backend = build_backend(cfg.backend, cfg.train)
        backend = self.backend

        resumed = checkpoint.load_for_resume(self.ckpt_root, cfg.train.resume, backend.rank, backend.all_ranks)
        if resumed is None and checkpoint.list_checkpoints(self.ckpt_root):
            raise ConfigError("train.resume", f"{self.run_dir} already holds checkpoints; use train.resume=auto to continue, or another run.name")

        self.source: Source = build_source(cfg.data, micro_batch=backend.micro_batch, rank=backend.rank, world_size=backend.world_size, seed=cfg.run.seed)
        self.info: DataInfo = self.source.info
        self.conditional = cfg.model.num_classes > 0
        _check_labels(cfg, self.info)

        torch.manual_seed(derive_seed(cfg.run.seed))  # identical initial weights on every rank
        G_net = build_generator(cfg.model, self.info).to(backend.device)
        # G_ema copies G before the backend wraps it: an engine may cast G to bf16 or partition it
        self.ema: Optional[EMA] = EMA(G_net, cfg.ema) if cfg.ema.enabled else None
        self.G: Player = backend.make_player("G", G_net, cfg.optim.g)
        D_net = build_discriminator(cfg.model, self.info)
        _check_no_batchnorm_in_d(D_net)
        self.D: Player = backend.make_player("D", D_net, cfg.optim.d)
        self.players = [self.G, self.D]
        self.objective = build_objective(self.G, self.D, cfg, backend.reduce_mean)
        if self.objective.penalizes_d_gradient and not backend.supports_second_order(self.D):
            raise ConfigError("loss", "gradient penalties (gp_weight, dragan_weight, r1_gamma) need a second backward through D, which this engine cannot do at its setting (DeepSpeed ZeRO-3 releases D's weights before it); train D at ZeRO 0-2 (backend.zero_stage or backend.d_config)")
        self.evaluator = self._build_evaluator()
        self.best_fid = checkpoint.best_fid(self.ckpt_root)
        self.counters = Counters()
        self.latent_gen = generator(cfg.run.seed, backend.rank, LATENT_STREAM)
        if resumed is not None:
            self._restore(*resumed)  # every rank's torch RNG as it was when the checkpoint was saved
        else:
            torch.manual_seed(derive_seed(cfg.run.seed, backend.rank, 0))  # each rank its own augmentations
        self.batches: Iterator[Batch] = self.source.batches(self.counters.data_pos)

    # ---- one iteration -------------------------------------------------------------------

    def _real(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x, y = next(self.batches)
        self.counters.data_pos += 1
        x = x.to(self.backend.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(127.5).sub_(1.0)  # [B, C, H, W] in [-1, 1]
        y = y.to(self.backend.device, non_blocking=True) if (self.conditional and y is not None) else None
        return x, y

    def _fakes(self, n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        # drawn for a whole phase at once, so micro-batch 8 x 2 rounds sees the same latents as 16 x 1
        z = torch.randn(n, self.cfg.model.z_dim, generator=self.latent_gen)
        y = torch.randint(self.cfg.model.num_classes, (n,), generator=self.latent_gen) if self.conditional else None
        device = self.backend.device
        return z.to(device), (y.to(device) if y is not None else None)

    def run_phase(self, phase: Phase, tracker: Tracker) -> None:
        backend, micro = self.backend, self.backend.micro_batch
        for p in phase.frozen:
            p.freeze(True)
        z_all, y_all = self._fakes(micro * backend.rounds)
        for r in range(backend.rounds):
            real, y_real = self._real() if phase.needs_real else (None, None)
            sl = slice(r * micro, (r + 1) * micro)
            inputs = RoundInputs(real, y_real, z_all[sl], y_all[sl] if y_all is not None else None)
            with backend.accumulate(self.players):
                with backend.autocast():
                    loss, stats = phase.compute(inputs)
                backend.backward(phase.player, loss)
            for name, value in stats.items():
                tracker.report(name, value)
        skipped = backend.step(phase.player)
        if skipped is not None:
            tracker.report(f"fp16/{phase.player.name}_skipped", skipped)
        if phase.clamp_weights > 0:
            self.backend.clamp_parameters(phase.player, phase.clamp_weights)
        for p in phase.frozen:
            p.freeze(False)

    def iteration(self, tracker: Tracker) -> None:
        for phase in self.objective.phases:
            if self.counters.step % phase.interval == 0:
                for _ in range(phase.repeats):
                    self.run_phase(phase, tracker)
        for name, value in self.objective.end_iteration().items():
            tracker.report(name, value)
        self.counters.step += 1
        self.counters.nimg += self.cfg.train.batch_size
        if self.ema is not None:
            with self.backend.full_parameters(self.G) as G:
                self.ema.update(G, self.counters.nimg, self.cfg.train.batch_size)

    # ---- the loop --------------------------------------------------------------------------

    def train(self) -> Path:
        cfg, backend, counters = self.cfg, self.backend, self.counters
        total_img = int(round(cfg.train.total_kimg * 1000))
        batch = cfg.train.batch_size
        if backend.is_main:
            self._write_config()
        tracker = Tracker(self.run_dir, is_main=backend.is_main, reduce_mean=backend.reduce_mean, total_img=total_img, start_img=counters.nimg, progress_bar=cfg.log.progress_bar)
        grid_path = None
        try:
            if counters.nimg == 0:
                grid_path = self.save_grid(tracker)
            while counters.nimg < total_img:
                self.iteration(tracker)
                tracker.advance(counters.nimg)
                done = counters.nimg >= total_img
                if done or crossed(counters.nimg, batch, cfg.log.every_kimg):
                    tracker.flush(step=counters.step, nimg=counters.nimg, extra=self._data_stats())
                if done or crossed(counters.nimg, batch, cfg.log.samples_every_kimg):
                    grid_path = self.save_grid(tracker) or grid_path
                saved = None
                if done or crossed(counters.nimg, batch, cfg.checkpoint.every_kimg):
                    saved = self.save_checkpoint()
                if self.evaluator is not None and (done or crossed(counters.nimg, batch, cfg.eval.every_kimg)):
                    self.evaluate(tracker, saved)
        finally:
            tracker.close()
        backend.barrier()
        self.last_grid = grid_path
        return self.run_dir

    def _data_stats(self) -> dict[str, float]:
        stats = self.source.stats()
        if not stats:
            return {}
        names = sorted(stats)
        totals = self.backend.reduce_mean(torch.tensor([float(stats[n]) for n in names], device=self.backend.device))
        return {n: v * self.backend.world_size for n, v in zip(names, totals.tolist())}

    def save_grid(self, tracker: Tracker) -> Optional[Path]:
        """Sample grid from G_ema on the fixed latents (one class per row when conditional).

        Without EMA, G itself is sampled on every rank and under the training precision: an
        engine may hold it in bf16, or partitioned across ranks (ZeRO-3: a collective forward).
        """
        if self.info.kind != "image" or (self.ema is not None and not self.backend.is_main):
            return None
        rows, cols = self.cfg.log.grid_rows, self.cfg.log.grid_cols
        G, precision = (self.ema.module, contextlib.nullcontext()) if self.ema is not None else (self.G.net, self.backend.autocast())
        images = []
        with precision:
            for r in range(rows):
                cls = r % self.cfg.model.num_classes if self.conditional else None
                x, _ = sampling.generate(G, z_dim=self.cfg.model.z_dim, num_classes=self.cfg.model.num_classes, indices=range(r * cols, (r + 1) * cols), seed=self.cfg.run.seed, class_idx=cls, device=self.backend.device)
                images.append(sampling.to_uint8(x))
        if not self.backend.is_main:
            return None
        grid = sampling.image_grid(torch.cat(images), rows, cols)
        return tracker.image("fakes", grid, self.counters.nimg)

    # ---- evaluation ------------------------------------------------------------------------

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
        """FID/IS/KID of G_ema (collective); a new best FID keeps its checkpoint as `best/`."""
        from bigtrain.eval.evaluate import log_record

        use_ema = self.cfg.eval.use_ema and self.ema is not None
        # G itself may be partitioned (ZeRO-3): gather it only when it is the one evaluated
        with contextlib.nullcontext(self.ema.module) if use_ema else self.backend.full_parameters(self.G) as G:
            result = self.evaluator(
                G, z_dim=self.cfg.model.z_dim, num_classes=self.cfg.model.num_classes,
                ema=use_ema, kimg=self.counters.nimg / 1000, checkpoint=str(saved) if saved else None,
                precision=contextlib.nullcontext if use_ema else self.backend.autocast,
            )
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

    def save_checkpoint(self) -> Path:
        backend, c = self.backend, self.counters
        trainer_state = None
        if backend.is_main:
            trainer_state = {
                "players": {p.name: backend.player_state(p) for p in self.players},
                "G_ema": self.ema.state_dict() if self.ema is not None else None,
                "objective": self.objective.state_dict(),
                "counters": {"step": c.step, "nimg": c.nimg},
                "config": config_mod.to_dict(self.cfg),
                "data_info": self.info.to_dict(),
            }
        rank_state = {
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "latent_gen": self.latent_gen.get_state(),
            "data_pos": c.data_pos,
        }
        return checkpoint.save(
            self.ckpt_root, checkpoint.checkpoint_name(c.step), trainer_state=trainer_state, rank_state=rank_state,
            rank=backend.rank, all_ranks=backend.all_ranks, keep_last=self.cfg.checkpoint.keep_last,
            write_engine_files=lambda folder: backend.save_engine_files(self.players, folder),
        )

    def _restore(self, folder: Path, trainer_state: dict, rank_state: dict) -> None:
        try:
            for p in self.players:
                self.backend.load_player(p, trainer_state["players"][p.name], folder)
            if self.ema is not None and trainer_state.get("G_ema") is not None:
                self.ema.load_state_dict(trainer_state["G_ema"])
            self.objective.load_state_dict(trainer_state.get("objective") or {})
        except OSError as exc:  # a file the engine reads itself, missing or unreadable
            raise CheckpointError(f"{folder}: cannot be read ({exc})") from None
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{folder}: does not fit this config ({str(exc).splitlines()[0]})") from None
        self.counters = Counters(step=trainer_state["counters"]["step"], nimg=trainer_state["counters"]["nimg"], data_pos=rank_state["data_pos"])
        self.latent_gen.set_state(rank_state["latent_gen"])
        torch.set_rng_state(rank_state["torch_rng"])
        if rank_state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rank_state["cuda_rng"])
        self.resumed_from = folder

    def _write_config(self) -> None:
        """config.yaml = the resolved config; a different earlier one is kept, not overwritten."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.yaml"
        text = config_mod.to_yaml(self.cfg)
        if path.exists() and path.read_text() != text:
            path.rename(self.run_dir / f"config-before-step{self.counters.step:08d}.yaml")
        path.write_text(text)


def _check_no_batchnorm_in_d(D: torch.nn.Module) -> None:
    # D's update forwards cat([real, fake]) once (one buffer update per step, see DESIGN.md), so
    # batch statistics would mix real and fake there but see only fakes in G's update: D's
    # scores for G would mean something else than what D learned.
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules()):
        raise ConfigError("model.d.norm", "batch norm in D is not supported (real and fake share its batch statistics); use none")


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
    finally:
        with contextlib.suppress(Exception):
            trainer.backend.close(wait=finished)
    return trainer
