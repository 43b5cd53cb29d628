"""DeepSpeed's checkpoint files: checked before any is loaded (every file an engine wrote is
there and loads with weights_only, naming only the few DeepSpeed classes allowed), and turned
into plain weights for `bigtrain export` without a process group."""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path
from typing import Optional

import torch

from bigtrain.errors import CheckpointError

ENGINE_TAG = "engine"  # DeepSpeed's tag inside each player's folder: step-.../G/engine/


def _deepspeed_safe_globals() -> list:
    """The few DeepSpeed classes its checkpoint files pickle (next to tensors and plain data)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def verify_deepspeed_files(folder: Path, zero_stage: Optional[int] = None, world_size: int = 1) -> None:
    """Refuse a DeepSpeed checkpoint folder unless it holds every file an engine at
    `zero_stage` with `world_size` ranks wrote (when given) and each of its .pt files loads with
    `torch.load(weights_only=True)` allowing only `_deepspeed_safe_globals()`.

    Every rank checks every file, so on a shared filesystem all ranks reach the same verdict
    before any of them enters DeepSpeed's loading (which has collectives). DeepSpeed itself
    loads the files with weights_only=False; after this check nothing in them can name other
    code to run (a bounded departure from docs/design.md, "Checkpoints"; see docs/deepspeed.md).
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise CheckpointError(f"{folder}: no DeepSpeed checkpoint files; the checkpoint is incomplete")
    if zero_stage is not None:
        names = {p.name for p in files}
        model = (
            ["mp_rank_00_model_states.pt"]
            if zero_stage < 3
            else [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)]
        )
        required = [(name,) for name in model]
        if zero_stage > 0:  # one optimizer partition per rank (bf16_ prefix with the bf16 optimizer)
            required += [
                (f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
                for r in range(world_size)
            ]
        for options in required:
            if not names.intersection(options):
                raise CheckpointError(f"{folder / options[0]}: file missing; the checkpoint is incomplete")
    allowed = _deepspeed_safe_globals()
    with torch.serialization.safe_globals(allowed):
        for path in files:
            if not zipfile.is_zipfile(path):  # torch.save writes zip archives
                raise CheckpointError(
                    f"{path}: refusing to load this DeepSpeed file (not a PyTorch checkpoint: corrupt or truncated)"
                )
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # an unlisted global, or a corrupt file
                raise CheckpointError(
                    f"{path}: refusing to load this DeepSpeed file ({_why_unsafe(path, allowed, exc)})"
                ) from None


def _why_unsafe(path: Path, allowed: list, exc: Exception) -> str:
    names = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    try:
        unlisted = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - names)
    except Exception:  # not even a readable pickle
        unlisted = []
    if unlisted:
        return f"it names {', '.join(unlisted)}, which bigtrain does not allow in checkpoints"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def deepspeed_weights(engine_dir: Path, state: dict) -> dict[str, torch.Tensor]:
    """Plain fp32 state dict (parameters and buffers) of one player from its DeepSpeed folder.

    ZeRO 1-3: DeepSpeed's zero_to_fp32 joins the partitions (the fp32 master weights). ZeRO-0
    has one file holding the module's weights as trained (bf16 weights under bf16). Needs no
    process group.
    """
    tag_dir = Path(engine_dir) / state["tag"]
    verify_deepspeed_files(tag_dir)
    try:
        if state["zero_stage"] == 0:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                weights = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)[
                    "module"
                ]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):  # its progress output
                weights = get_fp32_state_dict_from_zero_checkpoint(str(engine_dir), tag=state["tag"])
    except (OSError, KeyError, ValueError, RuntimeError) as exc:  # missing or mismatched partition files
        text = str(exc).strip()
        raise CheckpointError(
            f"{tag_dir}: cannot read the weights from DeepSpeed's files "
            f"({text.splitlines()[0] if text else type(exc).__name__})"
        ) from None
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous() for k, v in weights.items()}
