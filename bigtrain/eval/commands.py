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
from bigtrain.eval.prdc import DC_K, PR_K

DEFAULT_EVAL_SAMPLES = 50_000  # what published FIDs use


def _add_inception_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", default=None,
        help="Inception weights file (default: $BIGTRAIN_INCEPTION_WEIGHTS, the torch hub cache, then download)",
    )  # fmt: skip
    p.add_argument("--no-download", action="store_true", help="never download the Inception weights")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument(
        "--resize", choices=("legacy", "clean"), default="legacy",
        help="how images reach Inception's 299x299: legacy = TF1 bilinear (published FIDs), clean = clean-fid's "
        "clean mode (PIL bicubic on floats); reference statistics must use the same mode",
    )  # fmt: skip


def _device(args: argparse.Namespace, local_rank: int = 0) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _inception(args: argparse.Namespace, device: torch.device):
    from bigtrain.eval.inception import load_inception

    if args.batch_size <= 0:
        raise BigtrainError(f"--batch-size must be > 0, got {args.batch_size}")
    return load_inception(args.weights, device=device, download=not args.no_download, resize=args.resize)


def _emit(result: dict) -> None:
    for line in result.get("warnings", []):
        print(f"bigtrain: warning: {line}", file=sys.stderr)
    print(json.dumps(result))


# ---- bigtrain eval ----------------------------------------------------------------------------


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run directory (its latest checkpoint is used)")
    p.add_argument("--checkpoint", help="a checkpoint folder (instead of the run's latest)")
    p.add_argument(
        "--metrics", default="fid",
        help="comma-separated: fid, is, kid, precision, recall, density, coverage, intra_fid (class-conditional: "
        "needs per-class statistics, `ref-stats --per-class`)",
    )  # fmt: skip
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
    p.add_argument(
        "--repeats", type=int, default=1, metavar="K",
        help="evaluate K times with seeds seed .. seed+K-1: every metric as the mean, with std and values in 'repeats'",
    )  # fmt: skip
    p.add_argument(
        "--split", default=None,
        help="score against held-out statistics: the reference must have been made with `ref-stats --split` SPLIT",
    )  # fmt: skip
    p.add_argument("--pr-k", type=int, default=PR_K, help=f"k of precision and recall (default {PR_K})")
    p.add_argument("--dc-k", type=int, default=DC_K, help=f"k of density and coverage (default {DC_K})")
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
    from bigtrain.eval.intra_fid import class_stats_paths, reference_file, samples_per_class
    from bigtrain.eval.metrics import NEEDS_REFERENCE
    from bigtrain.eval.ref_stats import load_ref_stats
    from bigtrain.eval.repeats import summarize

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    main_metrics = [m for m in metrics if m != "intra_fid"]  # intra_fid runs one FID per class
    psis = truncations(args.truncation)
    check_standing_arguments(args)
    if args.repeats < 1:
        raise BigtrainError(f"--repeats must be >= 1, got {args.repeats}")
    loaded = load_generation(args.run, args.checkpoint, use_ema=not args.no_ema)
    if args.class_idx is not None and not 0 <= args.class_idx < loaded.num_classes:
        raise BigtrainError(f"--class {args.class_idx} is out of range for a model with {loaded.num_classes} classes")
    run_ref = _run_ref_stats(loaded.path)
    ref_path = args.ref_stats or run_ref
    needs_ref = any(m in NEEDS_REFERENCE for m in main_metrics)
    if (needs_ref or "intra_fid" in metrics) and not ref_path:
        raise BigtrainError(f"{', '.join(metrics)} need --ref-stats (or eval.ref_stats in the run's config)")
    per_class_n = 0
    if "intra_fid" in metrics:
        if loaded.num_classes == 0:
            raise BigtrainError("intra_fid needs a class-conditional generator; this run is unconditional")
        if args.class_idx is not None:
            raise BigtrainError("intra_fid scores every class; leave out --class")
        class_stats_paths(ref_path, loaded.num_classes)
        per_class_n = samples_per_class(args.num, loaded.num_classes)
    reference = load_ref_stats(reference_file(ref_path)) if needs_ref else None
    warnings_ = _check_split(args.split, reference, ref_path, run_ref)
    with process_group() as (rank, world_size, local_rank):
        device = _device(args, local_rank)
        inception = _inception(args, device)

        def evaluator(names: list[str], num: int, ref) -> Evaluator:
            return Evaluator(
                names, num_samples=num, reference=ref, inception=inception, rank=rank, world_size=world_size,
                device=device, seed=args.seed, batch_size=args.batch_size, pr_k=args.pr_k, dc_k=args.dc_k,
            )  # fmt: skip

        main = evaluator(main_metrics, args.num, reference) if main_metrics else None
        loaded.to(device)
        results = []
        for psi in psis:
            seeds = [args.seed + j for j in range(args.repeats)]
            runs = [
                _evaluate_once(args, loaded, main, evaluator, psi, seed, device, ref_path, per_class_n)
                for seed in seeds
            ]
            result = summarize(runs, seeds)
            result["warnings"] = list(dict.fromkeys(result.get("warnings", []) + warnings_))
            if args.split is not None:
                result["protocol"]["split"] = args.split
            results.append(result)
    if rank != 0:
        return None
    if len(results) == 1:
        return results[0]
    notes = sorted({w for r in results for w in r.get("warnings", [])})  # one object: one evaluation per psi
    return {"truncation_curve": [{k: v for k, v in r.items() if k != "warnings"} for r in results], "warnings": notes}


def _evaluate_once(args, loaded, main, evaluator, psi, seed, device, ref_path, per_class_n) -> dict:
    """One evaluation (every rank at once) at truncation `psi` with `seed`: the main metrics and,
    when `per_class_n`, intra-FID with that many samples of each class."""
    from bigtrain.eval.intra_fid import intra_fid

    if args.standing_stats:  # every rank alike: the same draws give the same statistics
        loaded.standing_statistics(
            args.standing_stats, args.standing_batch_size, seed=seed, truncation=psi, device=device
        )

    def generator(class_idx: Optional[int]) -> Callable:
        def generate(indices: list[int]):
            return loaded.generate(
                indices, seed=seed, truncation=psi, class_idx=class_idx, device=device, batch_size=args.batch_size
            )[0]

        return generate

    fields = dict(
        ema=loaded.ema,
        kimg=loaded.kimg,
        checkpoint=loaded.path,
        inputs=loaded.recipe.generation_inputs(),
        training=loaded.training,
    )
    result: dict = {}
    if main is not None:
        result = main(
            generator(args.class_idx),
            truncation=psi,
            class_idx=args.class_idx,
            seed=seed,
            label_sampling=loaded.label_sampling(args.class_idx),
            **fields,
        )
    if per_class_n:

        def fid_of_class(c: int, reference) -> dict:
            one = evaluator(["fid"], per_class_n, reference)
            return one(
                generator(c), truncation=psi, class_idx=c, seed=seed, label_sampling=loaded.label_sampling(c), **fields
            )

        scores = intra_fid(fid_of_class, ref_path, loaded.num_classes)
        first = scores.pop("first")
        if not result:  # intra_fid alone: the protocol of class 0's evaluation, for all classes
            result = {"protocol": first["protocol"], "warnings": first["warnings"]}
            result["protocol"]["generated"].update(class_idx=None, num_images=per_class_n * loaded.num_classes)
        result.update(scores)
        result["protocol"]["intra_fid"] = {"class_stats": str(ref_path), "samples_per_class": per_class_n}
    if args.standing_stats:
        result["standing_stats"] = {"batches": args.standing_stats, "batch_size": args.standing_batch_size}
    return result


def _check_split(split: Optional[str], reference, ref_path, run_ref) -> list[str]:
    """--split: the reference must say it is that split; warnings when it is the run's own
    eval.ref_stats (the one its best checkpoint was chosen with)."""
    if split is None:
        return []
    from bigtrain.eval.intra_fid import reference_file
    from bigtrain.eval.ref_stats import load_ref_stats

    if not ref_path:
        raise BigtrainError(f"--split {split} needs the held-out statistics: pass them as --ref-stats")
    meta = (reference or load_ref_stats(reference_file(ref_path))).meta
    if meta.get("split") != split:
        raise BigtrainError(
            f"--split {split}: {ref_path} holds statistics of split {meta.get('split')!r}; make held-out statistics "
            f"with `bigtrain ref-stats DATA OUT.npz --split {split}` and pass them as --ref-stats"
        )
    if run_ref and Path(run_ref).resolve() == Path(ref_path).resolve():
        return [f"--split {split}: {ref_path} is the run's eval.ref_stats, which chose its best checkpoint"]
    return []


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
    p.add_argument(
        "out", help="statistics file to write (.npz: mu, sigma, meta[, features]); with --per-class, a new folder"
    )
    p.add_argument(
        "--resolution", type=int, default=None, help="resize images to this first (use the training resolution)"
    )
    p.add_argument("--split", default=None, help="which split the data is (train, test, ...), recorded in the file")
    p.add_argument("--num", type=int, default=None, help="use only the first N images")
    p.add_argument(
        "--features", action="store_true", help="also store the features (KID, PRDC need them; ~8 KB per image)"
    )
    p.add_argument(
        "--per-class", action="store_true",
        help="also per-class statistics, for intra_fid (labels: the npz's y): OUT is a folder of all.npz and "
        "class-0000.npz, ...",
    )  # fmt: skip
    _add_inception_arguments(p)


def run_ref_stats(args: argparse.Namespace) -> int:
    from bigtrain.eval.images import open_images
    from bigtrain.eval.intra_fid import compute_class_ref_stats, save_class_ref_stats
    from bigtrain.eval.ref_stats import compute_ref_stats, save_ref_stats

    out = Path(args.out)
    if args.per_class:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BigtrainError(f"{out} already exists and is not an empty folder; refusing to overwrite it")
    elif out.suffix != ".npz":
        raise BigtrainError(f"{out}: the statistics file must end in .npz (or pass --per-class for a folder)")
    elif out.exists():
        raise BigtrainError(f"{out} already exists; refusing to overwrite it")
    if args.num is not None and args.num <= 0:
        raise BigtrainError(f"--num must be > 0, got {args.num}")
    images = open_images(args.data, args.resolution)
    device = _device(args)
    kwargs = dict(batch_size=args.batch_size, device=device, max_images=args.num, keep_features=args.features,
                  split=args.split)  # fmt: skip
    if args.per_class:
        stats, classes = compute_class_ref_stats(images, _inception(args, device), **kwargs)
        save_class_ref_stats(stats, classes, out)
    else:
        stats, classes = compute_ref_stats(images, _inception(args, device), **kwargs), []
        save_ref_stats(stats, out)
    result = {"out": str(out), "num_images": stats.num_images, "protocol": stats.meta, "warnings": []}
    if args.per_class:
        result["class_num_images"] = [c.num_images for c in classes]
    _emit(result)
    return 0
