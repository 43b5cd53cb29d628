"""The `bigtrain eval`, `bigtrain fid` and `bigtrain ref-stats` commands.

Each has `add_<name>_arguments(parser)` and `run_<name>(args) -> exit code`; bigtrain.cli wires
them up. Each prints one JSON object on stdout; protocol warnings also go to stderr, one line
each. Bad input raises BigtrainError (the CLI prints one line and exits 2).
`bigtrain eval` also runs under torchrun: every rank generates its share, rank 0 prints.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from bigtrain.errors import BigtrainError

DEFAULT_EVAL_SAMPLES = 50_000  # what published FIDs use


def _add_inception_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", default=None,
        help="Inception weights file (default: $BIGTRAIN_INCEPTION_WEIGHTS, the torch hub cache, then download)",
    )  # fmt: skip
    p.add_argument("--no-download", action="store_true", help="never download the Inception weights")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def _device(args: argparse.Namespace, local_rank: int = 0) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _inception(args: argparse.Namespace, device: torch.device):
    from bigtrain.eval.inception import load_inception

    if args.batch_size <= 0:
        raise BigtrainError(f"--batch-size must be > 0, got {args.batch_size}")
    return load_inception(args.weights, device=device, download=not args.no_download)


def _emit(result: dict) -> None:
    for line in result.get("warnings", []):
        print(f"bigtrain: warning: {line}", file=sys.stderr)
    print(json.dumps(result))


# ---- bigtrain eval ----------------------------------------------------------------------------


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run directory (its latest checkpoint is used)")
    p.add_argument("--checkpoint", help="a checkpoint folder (instead of the run's latest)")
    p.add_argument("--metrics", default="fid", help="comma-separated: fid, is, kid")
    p.add_argument("--num", type=int, default=DEFAULT_EVAL_SAMPLES, help="generated samples (published FIDs use 50000)")
    p.add_argument("--ref-stats", default=None, help="reference statistics npz (default: the run's eval.ref_stats)")
    p.add_argument(
        "--truncation",
        default=None,
        metavar="PSI[,PSI...]",
        help="redraw |z| > PSI (truncation trick); several values: one evaluation each (a truncation curve)",
    )
    p.add_argument("--class", dest="class_idx", type=int, default=None, help="generate only this class")
    p.add_argument("--no-ema", action="store_true", help="use G's raw weights instead of G_ema")
    p.add_argument("--seed", type=int, default=0, help="sample i depends only on (seed, i)")
    add_standing_arguments(p)
    _add_inception_arguments(p)
    from bigtrain.eval.sweep import add_sweep_arguments

    add_sweep_arguments(p)


def add_standing_arguments(p: argparse.ArgumentParser) -> None:
    """--standing-stats N [--standing-batch-size B], for `sample` and `eval`."""
    p.add_argument(
        "--standing-stats",
        type=int,
        default=0,
        metavar="N",
        help="re-estimate G's batch-norm statistics over N batches of its own samples first (BigGAN's standing "
        "statistics; with --truncation, of truncated samples); 0 = off",
    )
    p.add_argument("--standing-batch-size", type=int, default=64, help="--standing-stats: samples per batch")


def check_standing_arguments(args: argparse.Namespace) -> None:
    if args.standing_stats < 0:
        raise BigtrainError(f"--standing-stats must be >= 0 batches, got {args.standing_stats}")
    if args.standing_batch_size <= 0:
        raise BigtrainError(f"--standing-batch-size must be > 0, got {args.standing_batch_size}")


def truncations(text: Optional[str]) -> list[Optional[float]]:
    """--truncation's values: [None] when not given; BigtrainError for a value that is no number > 0."""
    if text is None:
        return [None]
    values = []
    for part in text.split(","):
        try:
            psi = float(part)
        except ValueError:
            psi = -1.0
        if not psi > 0:
            raise BigtrainError(f"--truncation: {part.strip()!r} is not a number > 0 (give PSI or PSI,PSI,...)")
        values.append(psi)
    return values


def run_eval(
    args: argparse.Namespace,
    load_generation: Callable,
    process_group: Callable,
    list_checkpoints: Optional[Callable] = None,
) -> int:
    """`bigtrain eval`; `load_generation(run, checkpoint, use_ema)` gives the checkpoint's
    generator (bigtrain.engine.generation) and `process_group()` the (rank, world size, local
    rank) of the processes torchrun started (bigtrain.engine.backends), both passed in so that
    eval imports no engine or distributed code. With --all-checkpoints, bigtrain.eval.sweep
    scores each of `list_checkpoints(run)` (bigtrain.engine.checkpoint.kept_checkpoints)."""
    if getattr(args, "all_checkpoints", False):
        from bigtrain.eval.sweep import run_all_checkpoints

        if list_checkpoints is None:
            raise BigtrainError("--all-checkpoints: no way to list the run's checkpoints was given")
        one = functools.partial(evaluation, load_generation=load_generation, process_group=process_group)
        return run_all_checkpoints(args, one, list_checkpoints, process_group)
    result = evaluation(args, load_generation, process_group)
    if result is not None:
        _emit(result)
    return 0


def evaluation(args: argparse.Namespace, load_generation: Callable, process_group: Callable) -> Optional[dict]:
    """The one JSON object `bigtrain eval` prints (on rank 0; None on the other ranks)."""
    from bigtrain.eval.evaluate import Evaluator
    from bigtrain.eval.ref_stats import load_ref_stats

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    psis = truncations(args.truncation)
    check_standing_arguments(args)
    loaded = load_generation(args.run, args.checkpoint, use_ema=not args.no_ema)
    if args.class_idx is not None and not 0 <= args.class_idx < loaded.num_classes:
        raise BigtrainError(f"--class {args.class_idx} is out of range for a model with {loaded.num_classes} classes")
    ref_path = args.ref_stats or _run_ref_stats(loaded.path)
    needs_ref = any(m in ("fid", "kid") for m in metrics)
    if needs_ref and not ref_path:
        raise BigtrainError("FID/KID need --ref-stats (or eval.ref_stats in the run's config)")
    with process_group() as (rank, world_size, local_rank):
        device = _device(args, local_rank)
        evaluator = Evaluator(
            metrics,
            num_samples=args.num,
            reference=load_ref_stats(ref_path) if needs_ref else None,
            inception=_inception(args, device),
            rank=rank,
            world_size=world_size,
            device=device,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        loaded.to(device)
        results = []
        for psi in psis:
            if args.standing_stats:  # every rank alike: the same draws give the same statistics
                loaded.standing_statistics(
                    args.standing_stats, args.standing_batch_size, seed=args.seed, truncation=psi, device=device
                )

            def generate(indices: list[int], psi=psi):
                return loaded.generate(
                    indices,
                    seed=args.seed,
                    truncation=psi,
                    class_idx=args.class_idx,
                    device=device,
                    batch_size=args.batch_size,
                )[0]

            result = evaluator(
                generate,
                truncation=psi,
                class_idx=args.class_idx,
                ema=loaded.ema,
                kimg=loaded.kimg,
                checkpoint=loaded.path,
                inputs=loaded.recipe.generation_inputs(),
                label_sampling=loaded.label_sampling(args.class_idx),
                training=loaded.training,
            )
            if args.standing_stats:
                result["standing_stats"] = {"batches": args.standing_stats, "batch_size": args.standing_batch_size}
            results.append(result)
    if rank != 0:
        return None
    if len(results) == 1:
        return results[0]
    notes = sorted({w for r in results for w in r.get("warnings", [])})  # one object: one evaluation per psi
    return {"truncation_curve": [{k: v for k, v in r.items() if k != "warnings"} for r in results], "warnings": notes}


def _run_ref_stats(checkpoint_folder: str) -> Optional[str]:
    """eval.ref_stats of the run that holds a checkpoint folder (RUN/checkpoints/step-...)."""
    from bigtrain.config_merge import load_yaml

    config = Path(checkpoint_folder).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return None
    return (load_yaml(config).get("eval") or {}).get(
        "ref_stats"
    ) or None  # the run's resolved config: no need to validate it again


# ---- bigtrain fid -----------------------------------------------------------------------------


def add_fid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="data set (shards, .npz, image folder), samples .npz, or statistics .npz")
    p.add_argument("b", help="the other side, of any of the same kinds")
    p.add_argument(
        "--resolution", type=int, default=None, help="resize data set images to this first (as training does)"
    )
    p.add_argument("--num", type=int, default=None, help="use only the first N images of each data set")
    _add_inception_arguments(p)


def run_fid(args: argparse.Namespace) -> int:
    from bigtrain.eval.protocol import compare

    if args.num is not None and args.num <= 0:
        raise BigtrainError(f"--num must be > 0, got {args.num}")
    device = _device(args)
    inception = None
    fid = None
    records = {}
    for name, path in (("a", args.a), ("b", args.b)):
        stats, inception = _side_stats(path, args, device, inception)
        from bigtrain.eval.metrics import new_fid, set_fid_stats  # torchmetrics: import only when used

        fid = fid or new_fid(len(stats.mu), device)
        dim = fid.real_features_sum.shape[0]
        if len(stats.mu) != dim:
            raise BigtrainError(f"{path}: {len(stats.mu)}-d statistics cannot be compared with {dim}-d ones")
        set_fid_stats(fid, stats.mu, stats.sigma, max(stats.num_images or 2, 2), real=name == "a")
        records[name] = stats.meta
    with warnings.catch_warnings():  # both sides were set from statistics, none by `update`
        warnings.filterwarnings("ignore", message=".*called before the ``update`` method")
        value = float(fid.compute())
    result = {
        "fid": value,
        "protocol": records,
        "warnings": compare(records["a"], records["b"], f"A ({args.a})", f"B ({args.b})"),
    }
    _emit(result)
    return 0


def _side_stats(path: str, args: argparse.Namespace, device: torch.device, inception):
    """Statistics of one side: read from a statistics file, or computed from its images."""
    from bigtrain.eval.images import open_images
    from bigtrain.eval.ref_stats import compute_ref_stats, is_stats_file, load_ref_stats

    if is_stats_file(path):
        return load_ref_stats(path), inception
    images = open_images(path, args.resolution)
    inception = inception or _inception(args, device)
    stats = compute_ref_stats(images, inception, batch_size=args.batch_size, device=device, max_images=args.num)
    return stats, inception


# ---- bigtrain ref-stats -----------------------------------------------------------------------


def add_ref_stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="data set: shards (.tar, pattern, folder, dataset.json), .npz with x, or image folder")
    p.add_argument("out", help="statistics file to write (.npz: mu, sigma, meta[, features])")
    p.add_argument(
        "--resolution", type=int, default=None, help="resize images to this first (use the training resolution)"
    )
    p.add_argument("--split", default=None, help="which split the data is (train, test, ...), recorded in the file")
    p.add_argument("--num", type=int, default=None, help="use only the first N images")
    p.add_argument("--features", action="store_true", help="also store the features (KID needs them; ~8 KB per image)")
    _add_inception_arguments(p)


def run_ref_stats(args: argparse.Namespace) -> int:
    from bigtrain.eval.images import open_images
    from bigtrain.eval.ref_stats import compute_ref_stats, save_ref_stats

    out = Path(args.out)
    if out.suffix != ".npz":
        raise BigtrainError(f"{out}: the statistics file must end in .npz")
    if out.exists():
        raise BigtrainError(f"{out} already exists; refusing to overwrite it")
    if args.num is not None and args.num <= 0:
        raise BigtrainError(f"--num must be > 0, got {args.num}")
    images = open_images(args.data, args.resolution)
    device = _device(args)
    stats = compute_ref_stats(
        images, _inception(args, device), batch_size=args.batch_size, device=device,
        max_images=args.num, keep_features=args.features, split=args.split,
    )  # fmt: skip
    save_ref_stats(stats, out)
    _emit({"out": str(out), "num_images": stats.num_images, "protocol": stats.meta, "warnings": []})
    return 0
