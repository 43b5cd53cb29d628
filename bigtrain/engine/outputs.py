"""What a run writes besides checkpoints: its resolved config, sample grids and periodic
evaluations (FID / IS / KID of the EMA copies, the best FID's checkpoint kept as `best/`).
Generation goes through the recipe (`grid_images`, `generate`), so nothing here knows a family.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import torch

from bigtrain import config as config_mod
from bigtrain import sampling
from bigtrain.engine import checkpoint
from bigtrain.tracking import Tracker

if TYPE_CHECKING:
    from bigtrain.engine.build import Run


def write_config(run: "Run") -> None:
    """config.yaml = the resolved config; a different earlier one is kept, not overwritten."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    path = run.run_dir / "config.yaml"
    text = config_mod.to_yaml(run.cfg)
    if path.exists() and path.read_text() != text:
        path.rename(run.run_dir / f"config-before-step{run.counters.step:08d}.yaml")
    path.write_text(text)


@contextlib.contextmanager
def generation_nets(run: "Run", use_ema: bool) -> Iterator[dict[str, torch.nn.Module]]:
    """The modules that generate: EMA copies (rank-local), or the players themselves with
    all parameters present (collective at ZeRO-3: every rank must enter)."""
    with contextlib.ExitStack() as stack:
        nets = {}
        for name in run.recipe.sampled:
            if use_ema and name in run.emas:
                nets[name] = run.emas[name].module
            else:
                nets[name] = stack.enter_context(run.backend.full_parameters(run.players[name]))
        yield nets


def uses_ema(run: "Run", wanted: bool = True) -> bool:
    return wanted and all(name in run.emas for name in run.recipe.sampled)


def save_grid(run: "Run", tracker: Tracker) -> Optional[Path]:
    """Sample grid on the fixed latents (one class per row when conditional), from the EMA
    copies on the main process, else from the players on every rank under the training
    precision (an engine may hold them in bf16, or partitioned: a collective forward)."""
    use_ema = uses_ema(run)
    if run.info.kind != "image" or (use_ema and not run.backend.is_main):
        return None
    cols = run.cfg.log.grid_cols
    inputs = grid_inputs(run, cols)
    with generation_nets(run, use_ema) as nets, contextlib.nullcontext() if use_ema else run.backend.autocast():
        images, rows = run.recipe.grid_images(
            nets, run.cfg.log.grid_rows, cols, seed=run.cfg.run.seed, device=run.backend.device, inputs=inputs
        )
    if not run.backend.is_main:
        return None
    return tracker.image("fakes", sampling.image_grid(images, rows, cols), run.counters.nimg)


def grid_inputs(run: "Run", n: int) -> dict[str, torch.Tensor]:
    """The first `n` samples of each stream the recipe's grid shows (read once from a fresh
    iterator of the stream's source: the training streams stay untouched)."""
    if run.grid_cache is None:
        run.grid_cache = {}
        for s in run.recipe.grid_streams:
            parts, have = [], 0
            for batch in run.sources[s].batches(0):
                parts.append(run.to_device(batch)["x"])
                have += len(parts[-1])
                if have >= n:
                    break
            run.grid_cache[s] = torch.cat(parts)[:n]
    return run.grid_cache


def build_evaluator(run: "Run"):
    """The periodic evaluator of eval.* (None when eval.every_kimg is 0)."""
    ecfg, backend = run.cfg.eval, run.backend
    if ecfg.every_kimg <= 0:
        return None
    from bigtrain.eval.evaluate import build_evaluator as build
    from bigtrain.eval.weights import resolve_weights

    if backend.is_main:
        resolve_weights(ecfg.inception_weights or None)  # a download, if any, happens once
    backend.barrier()
    return build(
        ecfg.metrics,
        num_samples=ecfg.num_samples,
        ref_stats=ecfg.ref_stats or None,
        rank=backend.rank,
        world_size=backend.world_size,
        device=backend.device,
        seed=ecfg.seed,
        batch_size=ecfg.batch_size,
        weights=ecfg.inception_weights or None,
    )


def evaluate(run: "Run", tracker: Tracker, saved: Optional[Path], save_checkpoint) -> dict:
    """FID/IS/KID of the EMA copy (collective); a new best FID keeps its checkpoint as `best/`
    (`save_checkpoint()` writes one when this step has none yet)."""
    from bigtrain.eval.evaluate import log_record
    from bigtrain.eval.provenance import TRAINING_MAX_BYTES, code_version, hardware, label_sampling, training_record

    use_ema = uses_ema(run, run.cfg.eval.use_ema)
    precision = contextlib.nullcontext if use_ema else run.backend.autocast
    ecfg = run.cfg.eval

    with generation_nets(run, use_ema) as nets:

        def generate(indices):
            with precision():
                return run.recipe.generate(
                    nets, indices, seed=ecfg.seed, device=run.backend.device, batch_size=ecfg.batch_size
                )[0]

        result = run.evaluator(
            generate,
            ema=use_ema,
            kimg=run.counters.nimg / 1000,
            checkpoint=str(saved) if saved else None,
            inputs=run.recipe.generation_inputs(),
            label_sampling=label_sampling(run.cfg.model.num_classes if run.recipe.conditional_sampling else 0, None),
            training=training_record(
                config_mod.to_dict(run.cfg),
                nimg=run.counters.nimg,
                wall_clock_s=run.wall_clock_s(),
                processes=run.backend.world_size,
                device=hardware(run.backend.device),
                code=code_version(),
                max_bytes=TRAINING_MAX_BYTES,
            )
            if run.backend.is_main  # only rank 0's record is logged
            else None,
        )
    record = {"step": run.counters.step, "kimg": round(run.counters.nimg / 1000, 3), **log_record(result)}
    tracker.write(record, run.counters.step)
    if run.backend.is_main:
        for warning in result.get("warnings", []):
            warnings.warn(f"eval: {warning}", stacklevel=2)
    fid = result.get("fid")
    if fid is not None and fid < run.best_fid:
        run.best_fid = fid
        folder = saved or save_checkpoint()
        if run.backend.is_main:
            checkpoint.keep_as_best(run.ckpt_root, folder.name, record)
        run.backend.barrier()
    return result
