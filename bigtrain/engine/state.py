"""A run's state in and out of checkpoints: what trainer.pt (global, written by rank 0) and
rankN.pt (each rank's) hold, the check that nothing non-finite is ever written, and the restore
of a resumed run, on the same or another number of processes (docs/design.md, "Checkpoints",
"Resume on another number of processes"). The files themselves are engine/checkpoint.py's.

After a restore, the schedule's first plan is applied against what the restored optimizers and
backend hold (Trainer.apply_plan): restoring and applying the plan are one seam, tested by
tests/unit/test_resume_plan.py at every iteration boundary of a changing schedule.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from bigtrain import config as config_mod
from bigtrain.engine import checkpoint
from bigtrain.engine.guard import first_nonfinite
from bigtrain.errors import CheckpointError, TrainingDiverged
from bigtrain.eval.provenance import code_version, hardware
from bigtrain.seeding import derive_seed

if TYPE_CHECKING:
    from bigtrain.engine.build import Run


def nonfinite_weights(run: "Run") -> Optional[str]:
    """Collective: the first player or EMA copy tensor (weights or buffers) holding a
    non-finite value, on any rank, or None."""
    bad = None
    for name, player in run.players.items():
        with run.backend.full_parameters(player) as net:
            bad = bad or first_nonfinite(net.state_dict(), f"{name}.")  # every rank enters: collective at ZeRO-3
    for name, ema in run.emas.items():
        bad = bad or first_nonfinite(ema.module.state_dict(), f"{name}_ema.")
    if run.backend.all_ranks(bad is None):
        return None
    return bad or "a tensor on another rank"


def save_checkpoint(run: "Run") -> Path:
    """Collective: write the run's checkpoint of this step (never one holding a non-finite value)."""
    backend, c = run.backend, run.counters
    run.health.check()  # a player past train.max_nonfinite (deferred flags) saves nothing
    bad = nonfinite_weights(run)
    if bad is not None:  # never written: `latest` keeps naming the last finite checkpoint
        raise TrainingDiverged(
            f"not writing the checkpoint of step {c.step}: {bad} is non-finite; the run's last checkpoint is kept"
        )
    trainer_state = None
    if backend.is_main:
        trainer_state = {
            "players": {name: backend.player_state(p) for name, p in run.players.items()},
            **{f"{name}_ema": ema.state_dict() for name, ema in run.emas.items()},
            "recipe": run.recipe.state_dict(),
            "counters": {"step": c.step, "nimg": c.nimg},
            "world_size": backend.world_size,
            "wall_clock_s": run.wall_clock_s(),  # provenance of its numbers (docs/design.md, "Protocol")
            "device": hardware(backend.device),
            "code_version": code_version(),
            "health": dict(run.health.totals),
            "config": config_mod.to_dict(run.cfg),
            "data_info": run.info.to_dict(),
        }
    rank_state = {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "latent_gen": run.latent_gen.get_state(),
        "data_pos": dict(c.data_pos),
        "data_stats": source_stats(run),  # this rank's counters (data/skipped)
        "recipe": run.recipe.rank_state_dict(),
        # this rank's statistics since the last log line, so a resume at any step logs alike
        "tracker": run.tracker.state_dict() if run.tracker is not None else {},
    }
    if run.read_sums:  # the recipe's statistics since their last read (Recipe.reads)
        rank_state["reads"] = {
            "sums": {n: v.detach().cpu() for n, v in run.read_sums.items()},
            "counts": dict(run.read_counts),
        }
    return checkpoint.save(
        run.ckpt_root,
        checkpoint.checkpoint_name(c.step),
        trainer_state=trainer_state,
        rank_state=rank_state,
        rank=backend.rank,
        all_ranks=backend.all_ranks,
        keep_last=run.cfg.checkpoint.keep_last,
        write_engine_files=lambda folder: backend.save_engine_files(list(run.players.values()), folder),
    )


def restore(run: "Run", folder: Path, trainer_state: dict, rank_state: dict) -> None:
    """Load a checkpoint into a freshly built run: players, EMA copies, recipe state, counters,
    data positions and statistics, and every RNG state (last)."""
    from bigtrain.engine.build import Counters

    backend = run.backend
    data_pos = rank_state["data_pos"]
    if isinstance(data_pos, int):  # written before streams were named: micro-batches of the one stream
        rank_state = {**rank_state, "data_pos": {s: data_pos * backend.micro_batch for s in run.recipe.streams}}
    written = checkpoint.written_by(folder, trainer_state)
    if written != backend.world_size:
        rank_state = _other_world(run, folder, written, trainer_state, rank_state)
    try:
        for name, p in run.players.items():
            backend.load_player(p, trainer_state["players"][name], folder, written=written)
        for name, ema in run.emas.items():
            if trainer_state.get(f"{name}_ema") is not None:
                ema.load_state_dict(trainer_state[f"{name}_ema"])
        run.recipe.load_state_dict(trainer_state.get("recipe", trainer_state.get("objective")) or {})
        run.recipe.load_rank_state_dict(rank_state.get("recipe") or {})
    except OSError as exc:  # a file the engine reads itself, missing or unreadable
        raise CheckpointError(f"{folder}: cannot be read ({exc})") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{folder}: does not fit this config ({str(exc).splitlines()[0]})") from None
    restore_source_stats(run, rank_state.get("data_stats") or {})
    run.tracker_state = rank_state.get("tracker") or {}
    reads = rank_state.get("reads") or {}
    run.read_sums = {n: v.to(backend.device) for n, v in (reads.get("sums") or {}).items()}
    run.read_counts = dict(reads.get("counts") or {})
    run.counters = Counters(
        step=trainer_state["counters"]["step"],
        nimg=trainer_state["counters"]["nimg"],
        data_pos=dict(rank_state["data_pos"]),
    )
    run.health.totals.update(trainer_state.get("health") or {})
    run.wall_clock_before = float(trainer_state.get("wall_clock_s") or 0.0)
    try:
        run.latent_gen.set_state(rank_state["latent_gen"])
    except RuntimeError as exc:  # a CUDA generator's state does not fit a CPU one, and back
        raise CheckpointError(
            f"rank {backend.rank}: the saved latent stream does not fit a {backend.device.type} generator (the "
            f"checkpoint was made on another kind of device?): {str(exc).splitlines()[0]}"
        ) from None
    torch.set_rng_state(rank_state["torch_rng"])
    if rank_state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rank_state["cuda_rng"])


def _other_world(run: "Run", folder: Path, written: int, trainer_state: dict, rank_state: dict) -> dict:
    """A checkpoint of `written` processes resumed on another number (docs/design.md,
    "Resume on another number of processes"): the global state loads as it is; a rank that
    existed keeps its RNG, latent stream, data positions, pools and unlogged statistics; a
    new rank starts its own augmentation and latent streams, seeded by (seed, rank, step),
    with empty per-rank recipe state, at rank 0's data positions. Positions round up to whole
    chunks of this run (a shard stream restarts only there)."""
    from bigtrain.engine.build import LATENT_STREAM

    backend, seed = run.backend, run.cfg.run.seed
    if not backend.reshardable:
        raise CheckpointError(
            f"{folder}: written by {written} processes; the {run.cfg.backend.kind} backend resumes only on the same "
            "number "
            f"here (fp16 engines are not converted), not on {backend.world_size}"
        )
    if backend.is_main:
        warnings.warn(
            f"resuming {folder.name}, written by {written} process(es), on {backend.world_size}: weights, optimizers, "
            "EMA, scalers, "
            f"schedule and counters carry over; ranks >= {min(written, backend.world_size)} draw new data and latent "
            "streams, "
            "so the losses follow another, equally likely path from here",
            stacklevel=2,
        )
    state = dict(rank_state)
    if state.pop("new_rank", False):
        step = int(trainer_state["counters"]["step"])
        state["torch_rng"] = torch.Generator().manual_seed(derive_seed(seed, backend.rank, 0, step)).get_state()
        state["latent_gen"] = (
            torch.Generator(device=backend.device)
            .manual_seed(derive_seed(seed, backend.rank, LATENT_STREAM, step))
            .get_state()
        )
        state.update(cuda_rng=None, recipe={}, data_stats={}, tracker={}, reads={})
    m = run.chunk
    state["data_pos"] = {s: -(-int(p) // m) * m for s, p in state["data_pos"].items()}
    return state


def initial_weights(path: str, names: list[str]) -> dict[str, tuple[dict, Optional[dict], tuple[str, ...]]]:
    """(weights, EMA weights or None, sub-modules it holds no weights for) by player, from a run
    directory (its latest checkpoint) or a checkpoint folder (or an export of one), for
    `train.init_from`: the nets start from them while the counters, optimizers and recipe state
    start afresh (train.resume continues a run instead). A player or sub-module that an import did
    not give (a released G without D; one direction of CycleGAN's G) starts from its initial
    weights, with a warning."""
    folder = Path(path)
    if (folder / "checkpoints").is_dir() or not (folder / checkpoint.TRAINER_FILE).is_file():
        folder = checkpoint.resolve_folder(path, None)
    trainer_state = checkpoint.read_trainer_state(folder)
    found = {}
    for name in names:
        if name not in trainer_state["players"] and trainer_state.get("imported"):
            # `bigtrain import` of files without this player (a released G without D): it starts afresh
            warnings.warn(
                f"train.init_from: {folder} holds no {name}; {name} starts from its initial weights", stacklevel=2
            )
            continue
        if name not in trainer_state["players"]:
            have = ", ".join(sorted(trainer_state["players"]))
            raise CheckpointError(f"train.init_from: {folder} has no player {name!r} (it has {have})")
        weights, _ = checkpoint.player_weights(folder, trainer_state, name, use_ema=False)
        absent = checkpoint.absent_parts(trainer_state, name)
        for part, why in absent.items():
            warnings.warn(
                f"train.init_from: {folder} {why}; {name}.{part} starts from its initial weights", stacklevel=2
            )
        found[name] = (weights, trainer_state.get(f"{name}_ema"), tuple(absent))
    return found


def load_initial(net: torch.nn.Module, weights: dict, what: str, absent: tuple[str, ...] = ()) -> None:
    """Load `weights` into `net`, refusing with the first key or shape that does not fit; the
    `absent` sub-modules, which `weights` lack, keep their initial weights."""
    mine = net.state_dict()
    for key, value in weights.items():
        if key not in mine:
            raise CheckpointError(f"train.init_from: {what} has {key!r}, which this config's net has not")
        if tuple(mine[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"train.init_from: {what}'s {key!r} is {tuple(value.shape)}, this net's {tuple(mine[key].shape)}"
            )
    missing = [k for k in mine if k not in weights and not k.startswith(tuple(f"{part}." for part in absent))]
    if missing:
        raise CheckpointError(f"train.init_from: {what} has no {missing[0]!r}, which this config's net needs")
    net.load_state_dict(weights, strict=False)  # every key checked above


def source_stats(run: "Run") -> dict[str, float]:
    """This rank's data counters: the one stream's as `data/skipped`, several as `data/A/skipped`."""
    if len(run.sources) == 1:
        return run.source.stats()
    return {f"data/{s}/{k.removeprefix('data/')}": v for s, src in run.sources.items() for k, v in src.stats().items()}


def restore_source_stats(run: "Run", stats: dict[str, float]) -> None:
    if len(run.sources) == 1:
        return run.source.restore_stats(stats)
    for s, src in run.sources.items():
        prefix = f"data/{s}/"
        src.restore_stats({f"data/{k.removeprefix(prefix)}": v for k, v in stats.items() if k.startswith(prefix)})
