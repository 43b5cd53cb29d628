"""Checkpoint files: the only module that reads or writes them.

Layout inside `RUN_DIR/checkpoints/`:
    step-00001200/trainer.pt   every player's weights, optimizer and scaler states, EMA copies
                               (`<name>_ema`), the recipe's state, counters, resolved config,
                               data info (written by rank 0)
    step-00001200/rank0.pt     one per rank: RNG states, latent generator, data positions, the
                               recipe's per-rank state
    latest                     text file naming the newest complete checkpoint folder
A checkpoint is written into `.tmp-step-...` and renamed when every rank has finished, so a
folder without the temp prefix is always complete. Files are read with
`torch.load(weights_only=True)`: loading a checkpoint never runs code.

Under the DeepSpeed backend each player's engine also writes its own folder (`<name>/`, in
DeepSpeed's layout) and trainer.pt only names it; `export` turns such a checkpoint into a plain
one (`RUN_DIR/export/step-.../trainer.pt`, weights only) that needs no DeepSpeed to read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from bigtrain.errors import CheckpointError

TRAINER_FILE = "trainer.pt"
LATEST = "latest"
BEST = "best"
BEST_RECORD = "eval.json"
# trainer.pt's {player: {sub-module: why}}: parts of a player it holds no weights for (`bigtrain import` of
# one released generator of a pair); readers refuse to run them (engine/generation.py) or start them afresh
ABSENT = "absent"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save(
    ckpt_root: Path,
    name: str,
    *,
    trainer_state: Optional[dict],
    rank_state: dict,
    rank: int,
    keep_last: int,
    all_ranks: Callable[[bool], bool] = bool,
    write_engine_files: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Write one checkpoint from every rank (collective: all ranks call it); returns its folder.

    `trainer_state` is only needed on rank 0. `write_engine_files(folder)` is called on every
    rank for engines that save their own files (DeepSpeed). Older checkpoints beyond
    `keep_last` are deleted. After each stage the ranks agree through `all_ranks(ok)` (which
    is also their barrier): a write that fails on one rank (a full disk, say) stops every rank
    with the same CheckpointError instead of leaving the others waiting in a collective.
    """
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}"

    def stage(what: str, action: Callable[[], None]) -> None:
        error = None
        try:
            action()
        except (OSError, RuntimeError) as exc:  # torch.save reports write failures as RuntimeError
            error = exc
        if not all_ranks(error is None):
            where = (
                f"this process: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                if error
                else "another process"
            )
            raise CheckpointError(f"{tmp}: {what} failed on {where}; the previous checkpoints are untouched")

    def prepare() -> None:
        if rank != 0:
            return
        if final.exists():
            # only after resuming from an older checkpoint (a fallback or an explicit PATH):
            # keep the later one of the abandoned timeline aside instead of overwriting it
            aside = _free_name(ckpt_root, f"replaced-{name}")
            os.replace(final, aside)
            warnings.warn(f"{final} already existed; moved it to {aside.name}", stacklevel=2)
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of an interrupted save
        tmp.mkdir(parents=True)

    def write_own_files() -> None:
        torch.save(rank_state, tmp / f"rank{rank}.pt")
        if rank == 0:
            torch.save(trainer_state, tmp / TRAINER_FILE)

    def publish() -> None:
        if rank == 0:
            os.replace(tmp, final)
            _write_pointer(ckpt_root / LATEST, name)
            _prune(ckpt_root, keep_last)

    stage("preparing the folder", prepare)
    stage("writing", write_own_files)
    if write_engine_files is not None:  # collectives inside: only entered when every rank got here
        stage("writing the engine files", lambda: write_engine_files(tmp))
    stage("publishing", publish)
    return final


def _free_name(folder: Path, stem: str) -> Path:
    candidate, k = folder / stem, 1
    while candidate.exists():
        candidate, k = folder / f"{stem}-{k}", k + 1
    return candidate


def _write_pointer(path: Path, name: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(name + "\n")
    os.replace(tmp, path)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not Path(ckpt_root).is_dir():
        return []
    return sorted(p for p in Path(ckpt_root).iterdir() if p.is_dir() and p.name.startswith("step-"))


def kept_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint a run keeps: its step folders, oldest first, then `best/` if any."""
    root = Path(run_dir) / "checkpoints"
    best = root / BEST
    return list_checkpoints(root) + ([best] if (best / TRAINER_FILE).is_file() else [])


def _prune(ckpt_root: Path, keep_last: int) -> None:
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old)


def keep_as_best(ckpt_root: Path, name: str, record: dict) -> None:
    """Copy checkpoint `name` to `best/` with its evaluation in `best/eval.json` (replacing the
    previous best), atomically."""
    src, dst, tmp = ckpt_root / name, ckpt_root / BEST, ckpt_root / f".tmp-{BEST}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / BEST_RECORD).write_text(json.dumps(record) + "\n")
    old = ckpt_root / f".old-{BEST}"
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def best_fid(ckpt_root: Path) -> float:
    """The FID of the kept best checkpoint, or infinity when there is none."""
    record = Path(ckpt_root) / BEST / BEST_RECORD
    if not record.is_file():
        return math.inf
    try:
        return float(json.loads(record.read_text())["eval/fid"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _load_file(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing; the checkpoint is incomplete")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors: truncated, corrupt or not a checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a bigtrain checkpoint")
    return state


def written_by(folder: Path, trainer_state: dict) -> int:
    """How many processes wrote a checkpoint (older ones do not say: their rank files count)."""
    return int(trainer_state.get("world_size") or len(list(Path(folder).glob("rank*.pt"))))


def load(folder: Path, rank: int) -> tuple[dict, dict]:
    """(trainer_state, rank_state) of a checkpoint folder, for `rank`. A rank the checkpoint
    has no state for (a resume on more processes) gets `{"new_rank": True}` and rank 0's data
    positions; the Trainer derives the rest (docs/design.md, "Resume on another number of
    processes")."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    trainer_state = read_trainer_state(folder)
    rank_file = folder / f"rank{rank}.pt"
    if rank_file.is_file():
        return trainer_state, _load_file(rank_file)
    written = written_by(folder, trainer_state)
    if rank < written:
        raise CheckpointError(f"{folder}: written by {written} processes, but {rank_file.name} is missing")
    first = _load_file(folder / "rank0.pt")
    return trainer_state, {"new_rank": True, "data_pos": first["data_pos"]}


def latest(ckpt_root: Path) -> Optional[Path]:
    """The folder the `latest` pointer names (or the newest folder if the pointer is missing)."""
    pointer = Path(ckpt_root) / LATEST
    if pointer.is_file():
        folder = Path(ckpt_root) / pointer.read_text().strip()
        if folder.is_dir():
            return folder
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def load_for_resume(
    ckpt_root: Path, resume: str, rank: int, all_ranks: Callable[[bool], bool] = bool
) -> Optional[tuple[Path, dict, dict]]:
    """Resolve `train.resume` (auto | none | PATH) and load the checkpoint for `rank`.

    With `auto`, an unreadable newest checkpoint is skipped with a warning in favour of the one
    before it; an explicitly named checkpoint that cannot be read is an error. The choice is
    collective: `all_ranks(ok)` is True on every rank when every rank could read its part (each
    rank reads its own rankN.pt), so all ranks resume from the same checkpoint or all stop.
    """
    if resume == "none":
        return None
    if resume != "auto":
        folder = Path(resume)
        loaded, error = _try_load(folder, rank)
        if not all_ranks(loaded is not None):
            raise error or CheckpointError(f"{folder}: another process cannot read its part of this checkpoint")
        return loaded
    newest = latest(ckpt_root)
    candidates = [p for p in reversed(list_checkpoints(ckpt_root))]
    if newest is not None and newest in candidates:
        candidates = candidates[candidates.index(newest) :]
    for folder in candidates:
        loaded, error = _try_load(folder, rank)
        if all_ranks(loaded is not None):
            return loaded
        warnings.warn(
            f"skipping checkpoint: {error or f'{folder}: another process cannot read its part of it'}", stacklevel=2
        )
    if candidates:
        raise CheckpointError(f"{ckpt_root}: no readable checkpoint to resume from")
    return None


def _try_load(folder: Path, rank: int) -> tuple[Optional[tuple[Path, dict, dict]], Optional[CheckpointError]]:
    try:
        return (folder, *load(folder, rank)), None
    except CheckpointError as exc:
        return None, exc


def resolve_folder(run_dir: Optional[str], checkpoint: Optional[str]) -> Path:
    """The checkpoint folder named by --checkpoint, else the run's latest."""
    if checkpoint:
        return Path(checkpoint)
    if not run_dir:
        raise CheckpointError("give --run RUN_DIR or --checkpoint PATH")
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    folder = latest(Path(run_dir) / "checkpoints")
    if folder is None:
        raise CheckpointError(f"{run_dir}: the run has no checkpoint yet")
    return folder


def read_trainer_state(folder: Path) -> dict:
    """trainer.pt of a checkpoint (or an export), checked to be a bigtrain checkpoint."""
    state = _load_file(Path(folder) / TRAINER_FILE)
    for key in ("config", "data_info", "players", "counters"):
        if key not in state:
            raise CheckpointError(f"{Path(folder) / TRAINER_FILE}: missing '{key}'; not a bigtrain checkpoint")
    return state


def player_weights(folder: Path, state: dict, name: str, use_ema: bool) -> tuple[dict, bool]:
    """(weights, from the EMA copy) of player `name`: its EMA copy when asked for and kept,
    else its own weights from trainer.pt or (DeepSpeed) from the checkpoint's export."""
    if use_ema and state.get(f"{name}_ema") is not None:
        return state[f"{name}_ema"], True
    if name not in state["players"]:
        raise CheckpointError(f"{folder}: has no player {name!r}")
    player = state["players"][name]
    if "net" in player:
        return player["net"], False
    exported = export_folder(folder) / TRAINER_FILE
    if exported.is_file():
        return _load_file(exported)["players"][name]["net"], False
    raise CheckpointError(
        f"{folder}: {name}'s raw weights are in DeepSpeed's engine files; run `bigtrain export --checkpoint {folder}` "
        "first (the EMA copy, the default, needs no export)"
    )


def absent_parts(state: dict, name: str) -> dict[str, str]:
    """Sub-modules of player `name` whose weights the checkpoint does not hold, each with the reason
    (a CycleGAN import of one direction: G's other generator); {} when it holds every weight."""
    return dict((state.get(ABSENT) or {}).get(name, {}))


def export_folder(folder: Path) -> Path:
    """Where `bigtrain export` writes the plain copy of checkpoint `folder` by default:
    RUN_DIR/export/<checkpoint name> (outside checkpoints/, so pruning and resume ignore it)."""
    folder = Path(folder)
    return folder.parent.parent / "export" / folder.name


def export(folder: Path, out: Path, engine_weights: Callable[[Path, dict], dict]) -> Path:
    """Write checkpoint `folder` as a plain one into `out`: trainer.pt with every player's
    weights (no optimizer state), EMA copies, counters, config and data info. Players whose weights
    live in engine files are read by `engine_weights(folder / name, player_state)`.
    Returns the file written; an existing export is never overwritten."""
    folder, out = Path(folder), Path(out)
    state = read_trainer_state(folder)
    target = out / TRAINER_FILE
    if target.exists():
        raise CheckpointError(f"{target} already exists; refusing to overwrite it")
    players = {}
    for name, player_state in state["players"].items():
        weights = player_state["net"] if "net" in player_state else engine_weights(folder / name, player_state)
        players[name] = {"net": weights}
    plain = {key: value for key, value in state.items() if key != "players"}
    plain["players"] = players
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (TRAINER_FILE + ".tmp")
    torch.save(plain, tmp)
    os.replace(tmp, target)
    return target


def write_imported(run_dir: Path, trainer_state: dict) -> Path:
    """Write an imported network (`bigtrain import`) as the run's one checkpoint, step 0: a plain
    trainer.pt (weights and EMA copies, no optimizer or rank state, like an export) and the `latest`
    pointer. Returns the checkpoint folder; the folder must not exist yet."""
    ckpt_root = Path(run_dir) / "checkpoints"
    name = checkpoint_name(0)
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    if final.exists():
        raise CheckpointError(f"{final} already exists; refusing to overwrite it")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(trainer_state, tmp / TRAINER_FILE)
    os.replace(tmp, final)
    _write_pointer(ckpt_root / LATEST, name)
    return final
