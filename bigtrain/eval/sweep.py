"""`bigtrain eval --run RUN --all-checkpoints`: score every kept checkpoint of a run, so the
curve of a metric against kimg can be drawn after training (`bigtrain report --plot`).

Each score is stored as RUN/evals/<checkpoint>-<settings>.json: the JSON object `bigtrain eval`
prints for that checkpoint, plus `settings` (the eval options that change the number) and
`checkpoint`. <settings> is the first 10 hex digits of the settings' sha256, so scores made with
other options (another --num, --seed, reference) sit beside each other instead of replacing one
another. A second call with the same options skips the checkpoints already scored (resumable:
a job that was stopped continues where it was). `--part I/N` scores only the checkpoints whose
index is I modulo N (the tasks of a SLURM job array, slurm/eval.sbatch), so tasks never write
the same file. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from bigtrain.errors import BigtrainError

EVALS_DIR = "evals"
# options that do not change the number: left out of the settings a stored score is keyed by
NOT_SETTINGS = {
    "run", "checkpoint", "all_checkpoints", "part", "device", "batch_size", "no_download", "func", "command",
    "local_rank",
}  # fmt: skip


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """--all-checkpoints and --part I/N for `bigtrain eval`."""
    p.add_argument(
        "--all-checkpoints",
        action="store_true",
        help=f"score every kept checkpoint of --run into RUN/{EVALS_DIR}/ (resumable: scored ones are skipped)",
    )
    p.add_argument(
        "--part",
        default=None,
        metavar="I/N",
        help="--all-checkpoints: only the checkpoints whose index is I modulo N (a job array's task I of N)",
    )


def parse_part(text: Optional[str]) -> tuple[int, int]:
    """--part I/N as (I, N); (0, 1) when not given; BigtrainError for anything else."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n > 0 and 0 <= i < n):
        raise BigtrainError(f"--part takes I/N with 0 <= I < N (a job array's task and size), got {text!r}")
    return i, n


def settings(args: argparse.Namespace) -> dict:
    """The eval options a score depends on (every option but those in NOT_SETTINGS)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS and not callable(v)}


def settings_key(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_all_checkpoints(
    args: argparse.Namespace, evaluation: Callable, list_checkpoints: Callable, process_group: Callable
) -> int:
    """Score the checkpoints of `args.run` (those of `--part`) not scored yet with these
    settings; `evaluation(args)` is one `bigtrain eval` (rank 0: its JSON object, else None),
    `list_checkpoints(run)` the run's kept checkpoint folders, oldest first. Prints one JSON
    object: the run, where the scores are, and per checkpoint its file and status."""
    if not args.run:
        raise BigtrainError("--all-checkpoints needs --run RUN_DIR")
    if args.checkpoint:
        raise BigtrainError("--all-checkpoints scores every checkpoint of --run; leave out --checkpoint")
    run = Path(args.run)
    if not run.is_dir():
        raise BigtrainError(f"{run}: run directory not found")
    part, parts = parse_part(args.part)
    folders = list_checkpoints(run)
    if not folders:
        raise BigtrainError(f"{run}: the run has no checkpoint to score")
    values = settings(args)
    key = settings_key(values)
    out_dir = run / EVALS_DIR
    done, seen = [], {}
    with process_group() as (rank, _, _):
        for index, folder in enumerate(folders):
            if index % parts != part:
                continue
            target = out_dir / f"{folder.name}-{key}.json"
            entry = {"checkpoint": str(folder), "file": str(target)}
            if target.is_file():
                images = (_generated(_read_json(target)).get("training") or {}).get("images_seen")
                seen.setdefault(images, folder.name)
                done.append({**entry, "status": "skipped: scored already"})
                continue
            one = copy.copy(args)
            one.checkpoint, one.all_checkpoints = str(folder), False
            result = evaluation(one)
            generated = _generated(result)
            images = (generated.get("training") or {}).get("images_seen")
            if images is not None and images in seen:  # best/ is a copy of a kept step folder
                done.append({**entry, "status": f"same checkpoint as {seen[images]}: not stored"})
                continue
            seen[images] = folder.name
            if rank == 0:
                _write_json(target, {**(result or {}), "checkpoint": folder.name, "settings": values})
            done.append({**entry, "status": "scored", "kimg": generated.get("kimg")})
    if rank == 0:
        print(json.dumps({"run": str(run), "evals": str(out_dir), "part": f"{part}/{parts}", "checkpoints": done}))
        for item in done:
            print(f"bigtrain: {Path(item['checkpoint']).name}: {item['status']}", file=sys.stderr)
    return 0


def _generated(result: Optional[dict]) -> dict:
    """The generated side of a result (of its first evaluation for a truncation curve)."""
    if not result:
        return {}
    first = result["truncation_curve"][0] if "truncation_curve" in result else result
    return (first.get("protocol") or {}).get("generated") or {}


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(value) + "\n")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BigtrainError(f"{path}: not a readable score ({exc})") from None


def stored_scores(run: Path) -> list[dict]:
    """Every score stored by --all-checkpoints in `run`, in file-name order."""
    folder = Path(run) / EVALS_DIR
    return [{**_read_json(p), "file": str(p)} for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
