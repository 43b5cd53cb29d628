"""`bigtrain export`: a checkpoint as plain weights that `bigtrain sample` / `bigtrain eval`
(and any PyTorch code) read without DeepSpeed.

    bigtrain export --run RUN_DIR [--checkpoint PATH] [--out FOLDER]

Writes FOLDER/trainer.pt (default RUN_DIR/export/<checkpoint name>/) holding every player's
weights in fp32 (ZeRO partitions joined), G_ema, counters, config and data info; no optimizer
state, so it is not a resume point. `bigtrain sample --no-ema` finds the default export by
itself; `--checkpoint FOLDER` reads any export. Reading DeepSpeed's files needs deepspeed
installed; one process is enough.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bigtrain.engine import checkpoint
from bigtrain.errors import CheckpointError


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `bigtrain export`."""
    p.add_argument("--run", help="run directory (its latest checkpoint is exported)")
    p.add_argument("--checkpoint", help="a checkpoint folder (instead of the run's latest)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export/<checkpoint name>)")


def _engine_weights(engine_dir: Path, player_state: dict) -> dict[str, torch.Tensor]:
    if player_state.get("engine") != "deepspeed":
        raise CheckpointError(
            f"{engine_dir}: no weights for this player in trainer.pt and no engine folder bigtrain knows"
        )
    if not engine_dir.is_dir():
        raise CheckpointError(f"{engine_dir}: DeepSpeed folder missing; the checkpoint is incomplete")
    from bigtrain.engine.backends.deepspeed_files import deepspeed_weights  # imports deepspeed only when called

    return deepspeed_weights(engine_dir, player_state)


def run_export(args: argparse.Namespace) -> int:
    """Export the checkpoint named by --run/--checkpoint; prints where it went."""
    folder = checkpoint.resolve_folder(args.run, args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.export_folder(folder)
    try:
        written = checkpoint.export(folder, out, _engine_weights)
    except ModuleNotFoundError as exc:
        raise CheckpointError(f"{folder}: reading DeepSpeed files needs deepspeed installed ({exc})") from None
    print(f"exported {folder} to {written} (plain weights; read by bigtrain sample/eval --checkpoint {out})")
    return 0
