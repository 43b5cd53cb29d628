"""The `bigtrain` command: train, sample, demo (and the data/eval tools).

Works the same when started by `accelerate launch -m bigtrain ...` or `torchrun -m bigtrain ...`:
the backend reads the process group from the environment those launchers set.
Bad input (BigtrainError) -> one line on stderr naming the culprit, exit code 2; a run that
diverged (TrainingDiverged: non-finite values it could not skip past) -> one line, exit code 3;
a run stopped on request (a signal, RUN_DIR/STOP, the time budget) after writing its checkpoint
-> one line, exit code 75 (run the same command again to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import math
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional

from bigtrain.errors import EXIT_STOPPED, BigtrainError, Stopped, TrainingDiverged

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def cmd_train(args: argparse.Namespace) -> int:
    from bigtrain.config import to_yaml
    from bigtrain.families import load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_run_dir:  # for scripts (slurm/train.sbatch): where stopped.json and STOP live
        print(Path(cfg.run.out_dir) / cfg.run.name)
        return 0
    if args.dry_run:
        print(to_yaml(cfg), end="")
        print(_parameter_counts(cfg))
        return 0
    from bigtrain.engine.loop import train

    trainer = train(cfg)
    if trainer.backend.is_main:
        _print_summary(trainer)
    return 0


def _parameter_counts(cfg) -> str:
    """`# parameters: G 1,234,567  D ...`: every player of the recipe, built on the data's shape;
    without readable data, on the shape the config describes (data.assumed_info), saying so."""
    import torch

    from bigtrain.data import assumed_info, build_sources
    from bigtrain.families import build_recipe, recipe_class

    streams = recipe_class(cfg).streams
    assumed = ""
    try:
        sources = build_sources(
            cfg.data, streams, micro_batch=1, rank=0, world_size=1, seed=cfg.run.seed, num_classes=cfg.model.num_classes
        )
        infos = {s: src.info for s, src in sources.items()}
    except BigtrainError as exc:
        info = assumed_info(cfg.data, cfg.model.num_classes)
        infos = {s: info for s in streams}
        c, h, w = info.shape
        assumed = (
            f"  (the data cannot be read ({exc}); assumed {c}x{h}x{w} images"
            f"{f' with {info.num_classes} classes' if info.num_classes else ''}: data.channels, data.resolution)"
        )
    try:
        recipe = build_recipe(cfg, next(iter(infos.values())))
        recipe.check_streams(infos)
        counts = []
        with torch.random.fork_rng(devices=[]):
            for spec in recipe.players():
                net = spec.build()
                # a net's parts worth a count of their own (`counted_parts`: names of its children)
                counted = getattr(net, "counted_parts", ())
                parts = [(f"{spec.name}.{name}", _count(m)) for name, m in net.named_children() if name in counted]
                counts.append((spec.name, _count(net), parts))
    except BigtrainError as exc:
        if not assumed:
            raise
        return f"# parameters: not counted {assumed[2:]}, and the nets cannot be built on that ({exc})"
    text = "  ".join(
        f"{name} {n:,}" + (f" ({', '.join(f'{k} {v:,}' for k, v in parts)})" if parts else "")
        for name, n, parts in counts
    )
    return "# parameters: " + text + assumed


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


def _print_summary(trainer) -> None:
    run_dir = trainer.run_dir
    latest = run_dir / "checkpoints" / "latest"
    print(f"run directory:  {run_dir}")
    if getattr(trainer, "last_grid", None):
        print(f"sample grid:    {trainer.last_grid}")
    print(f"tensorboard:    tensorboard --logdir {run_dir / 'tb'}")
    if latest.is_file():
        print(f"checkpoint:     {run_dir / 'checkpoints' / latest.read_text().strip()}")
    print(f"metrics:        {run_dir / 'metrics.jsonl'}")


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from bigtrain import sampling
    from bigtrain.engine.generation import load_generation
    from bigtrain.eval.commands import check_standing_arguments
    from bigtrain.tracking import save_png

    out = Path(args.out)
    kind = "npz" if out.suffix == ".npz" else "grid" if out.suffix == ".png" else "dir"
    if kind != "dir" and out.exists():
        raise BigtrainError(f"{out} already exists; refusing to overwrite it")
    if kind == "dir" and out.exists() and any(out.iterdir()):
        raise BigtrainError(f"{out} is a non-empty folder; refusing to write into it")
    if args.mix and args.num is not None:
        raise BigtrainError(f"--num does not apply to --mix {args.mix}: the grid holds ROWS + COLS samples")
    if not args.mix and args.num is None:
        raise BigtrainError("sample needs --num N (the number of samples; with --interp, the number of rows)")
    if args.num is not None and args.num <= 0:
        raise BigtrainError(f"--num must be > 0, got {args.num}")
    check_standing_arguments(args)
    loaded = load_generation(args.run, args.checkpoint, use_ema=not args.no_ema)
    if args.class_idx is not None and not 0 <= args.class_idx < max(loaded.num_classes, 1):
        raise BigtrainError(f"--class {args.class_idx} is out of range for a model with {loaded.num_classes} classes")
    if args.class_idx is not None and loaded.num_classes == 0:
        raise BigtrainError("--class given but the model is unconditional")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    options = {}
    accepted = inspect.signature(loaded.recipe.generate).parameters
    for key, flag in FAMILY_SAMPLE_OPTIONS.items():  # options only some families' generate takes
        if getattr(args, key) is not None:
            if key not in accepted:
                family = loaded.recipe.__class__.__name__
                raise BigtrainError(f"{flag}: {loaded.path} holds a {family} model, whose sampling takes no {flag}")
            options[key] = getattr(args, key)
    loaded.to(device)
    if args.standing_stats:
        loaded.standing_statistics(
            args.standing_stats, args.standing_batch_size, seed=args.seed, truncation=args.truncation, device=device
        )
    if args.mix:
        return _style_mixing_grid(args, loaded, out, kind, device, options)
    if args.interp:
        if kind != "grid" or args.class_idx is not None:
            raise BigtrainError(
                f"--interp writes a PNG grid of --num rows x --steps columns (and takes no --class); got --out {out}"
            )
        x = loaded.interpolation(
            args.num, args.steps, kind=args.interp, seed=args.seed, truncation=args.truncation, device=device
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        save_png(sampling.image_grid(sampling.to_uint8(x), args.num, args.steps), out)
        print(
            f"wrote a {args.interp} interpolation of {args.num} rows x {args.steps} steps from {loaded.path} "
            f"({'EMA' if loaded.ema else 'raw'} weights, {loaded.kimg:g} kimg) to {out}"
        )
        return 0
    x, y = loaded.generate(
        range(args.num), seed=args.seed, truncation=args.truncation, class_idx=args.class_idx, device=device, **options
    )
    is_image = loaded.info.kind == "image"
    if kind != "npz" and not is_image:
        raise BigtrainError(f"{out}: the model generates vectors; write them to a .npz file")
    if kind == "npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"x": sampling.to_uint8(x).permute(0, 2, 3, 1).numpy() if is_image else x.numpy().astype(np.float32)}
        if y is not None:
            arrays["y"] = y.numpy()
        np.savez(out, **arrays)
    elif kind == "grid":
        out.parent.mkdir(parents=True, exist_ok=True)
        cols = math.ceil(math.sqrt(args.num))
        save_png(sampling.image_grid(sampling.to_uint8(x), math.ceil(args.num / cols), cols), out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        images = sampling.to_uint8(x).permute(0, 2, 3, 1).numpy()
        for i, image in enumerate(images):
            name = f"{i:06d}" + (f"_class{int(y[i])}" if y is not None else "")
            save_png(image, out / f"{name}.png")
    print(
        f"wrote {args.num} samples from {loaded.path} ({'EMA' if loaded.ema else 'raw'} weights, {loaded.kimg:g} kimg) "
        f"to {out}"
    )
    return 0


# sampling options some families' `generate` takes: argparse dest -> the flag
FAMILY_SAMPLE_OPTIONS = {"head": "--head", "noise_mode": "--noise-mode", "truncation_cutoff": "--truncation-cutoff"}


def _style_mixing_grid(args: argparse.Namespace, loaded, out: Path, kind: str, device: str, options: dict) -> int:
    """`sample --mix ROWS,COLS`: a grid whose cell (r, c) takes sample c's coarse styles over sample r's."""
    from bigtrain import sampling
    from bigtrain.tracking import save_png

    try:
        rows, cols = (int(v) for v in args.mix.split(","))
    except ValueError:
        raise BigtrainError(f"--mix takes ROWS,COLS (two whole numbers), got {args.mix!r}") from None
    if kind != "grid" or rows < 1 or cols < 1:
        raise BigtrainError(
            f"--mix writes a PNG grid of (ROWS + 1) x (COLS + 1) images; got --mix {args.mix} --out {out}"
        )
    x = loaded.style_mixing(rows, cols, seed=args.seed, truncation=args.truncation, device=device, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(sampling.image_grid(sampling.to_uint8(x), rows + 1, cols + 1), out)
    print(f"wrote a style-mixing grid of {rows} x {cols} samples from {loaded.path} to {out}")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """`bigtrain translate`: a run's generator (G_ema if kept) applied to a folder or npz of images."""
    import numpy as np
    import torch

    from bigtrain import sampling
    from bigtrain.data.inputs import read_images
    from bigtrain.engine.generation import load_generation
    from bigtrain.tracking import save_png

    out = Path(args.out)
    to_npz = out.suffix == ".npz"
    if (to_npz and out.exists()) or (not to_npz and out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise BigtrainError(
            f"{out} already exists{' and is not an empty folder' if not to_npz else ''}; refusing to overwrite it"
        )
    loaded = load_generation(args.run, args.checkpoint, use_ema=not args.no_ema)
    recipe = loaded.recipe
    if not hasattr(recipe, "translate"):
        raise BigtrainError(
            f"{loaded.path} holds a {recipe.cfg.recipe} model, which generates from z; translate is for the cyclegan "
            "and pix2pix recipes (use `bigtrain sample`)"
        )
    recipe.generator(loaded.nets, args.direction)  # ConfigError for a direction the run has no generator for
    x, names = read_images(
        args.inputs, loaded.info.shape[-1], channels=recipe.image_info().shape[0], paired=args.paired
    )
    if args.paired:
        x = recipe.input_half(x, args.direction)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.to(device)
    y = recipe.translate(
        loaded.nets, x.float().div(127.5).sub(1.0), args.direction, device=device, batch_size=args.batch_size
    )
    if not torch.isfinite(y).all():
        raise BigtrainError(f"{loaded.path}: the generator produces non-finite output; nothing written")
    images = sampling.to_uint8(y).permute(0, 2, 3, 1).numpy()  # [N, H, W, C]
    out.parent.mkdir(parents=True, exist_ok=True)
    if to_npz:
        np.savez(out, x=images)
    else:
        out.mkdir(exist_ok=True)
        for name, image in zip(names, images):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            save_png(image, out / f"{name}.png")
    print(
        f"translated {len(images)} images {args.direction[0]} -> {args.direction[1]} from {args.inputs} with "
        f"{loaded.path} "
        f"({'EMA' if loaded.ema else 'raw'} weights, {loaded.kimg:g} kimg) to {out}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bigtrain.demo import run_demo

    return run_demo(args.out_dir, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    from bigtrain.eval import commands as ev

    parser = argparse.ArgumentParser(prog="bigtrain", description="Distributed, large-batch GAN training.")
    # the deepspeed launcher passes --local_rank=N before the command (unless --no_local_rank);
    # the process's GPU comes from LOCAL_RANK, which that launcher sets as well
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) a GAN from a YAML config")
    p.add_argument("config", help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.total_kimg=100")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--print-run-dir", action="store_true", help="print the run directory (run.out_dir/run.name) and exit"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate samples from a run's checkpoint")
    p.add_argument("--run", help="run directory (its latest checkpoint is used)")
    p.add_argument("--checkpoint", help="a checkpoint folder (instead of the run's latest)")
    p.add_argument("--num", type=int, default=None, help="number of samples (not with --mix)")
    p.add_argument("--out", required=True, help="FILE.npz (x uint8 N,H,W,C; y), GRID.png, or a folder of PNGs")
    p.add_argument("--truncation", type=float, default=None, help="redraw |z| > PSI (truncation trick)")
    p.add_argument("--class", dest="class_idx", type=int, default=None, help="generate only this class")
    p.add_argument("--no-ema", action="store_true", help="use G's raw weights instead of G_ema")
    p.add_argument("--seed", type=int, default=0, help="sample i depends only on (seed, i)")
    p.add_argument("--head", type=int, default=None, help="madgan: sample only generator K (default: all, in turn)")
    p.add_argument(
        "--interp",
        choices=("z", "class"),
        default=None,
        help="a GRID.png of --num rows, each interpolating z (fixed class) or the class embedding (fixed z; biggan)",
    )
    p.add_argument("--steps", type=int, default=8, help="--interp: images per row")
    p.add_argument("--truncation-cutoff", type=int, default=None, help="stylegan2: truncate only the first N layers' w")
    p.add_argument("--noise-mode", choices=("random", "const", "none"), default=None, help="stylegan2: noise inputs")
    p.add_argument("--mix", default=None, metavar="ROWS,COLS", help="stylegan2: a style-mixing GRID.png")
    ev.add_standing_arguments(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("translate", help="apply a cyclegan / pix2pix run's generator to a folder or npz of images")
    p.add_argument("--run", help="run directory (its latest checkpoint is used)")
    p.add_argument("--checkpoint", help="a checkpoint folder (instead of the run's latest)")
    p.add_argument(
        "--direction",
        choices=("AB", "BA"),
        default="AB",
        help="AB: G_AB (domain A in, B out); BA: G_BA (cyclegan; pix2pix has the direction it was trained in)",
    )
    p.add_argument(
        "--in",
        dest="inputs",
        required=True,
        help="images to translate: a folder, an .npz (x uint8 N,H,W,C) or make-shards output",
    )
    p.add_argument("--out", required=True, help="FILE.npz (x uint8 N,H,W,C) or a folder of PNGs named as the inputs")
    p.add_argument(
        "--paired", action="store_true", help="the inputs are side-by-side A|B pairs: translate the input half"
    )
    p.add_argument("--no-ema", action="store_true", help="use G's raw weights instead of G_ema")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("demo", help="train a class-conditional DCGAN on the scikit-learn digits (a few CPU minutes)")
    p.add_argument("--out-dir", default="runs", help="parent folder of the demo's run directory")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config")
    p.set_defaults(func=cmd_demo)

    for name, help_text, add_args, run in _tool_commands():
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def _tool_commands() -> list[tuple[str, str, Callable, Callable]]:
    """Commands whose arguments and work live next to their code (data and eval tools)."""
    from bigtrain.data import shard_writer, toy
    from bigtrain.engine import export as ex
    from bigtrain.engine.backends import process_group
    from bigtrain.engine.checkpoint import kept_checkpoints
    from bigtrain.engine.generation import load_generation
    from bigtrain.eval import commands as ev
    from bigtrain.eval import report
    from bigtrain.importers import add_import_arguments, run_import

    return [
        (
            "make-shards",
            "write WebDataset tar shards + dataset.json from an image folder, npz or CIFAR batches",
            shard_writer.add_make_shards_arguments,
            shard_writer.run_make_shards,
        ),
        (
            "eval",
            "FID / IS / KID of a run's checkpoint; prints one JSON object",
            ev.add_eval_arguments,
            lambda args: ev.run_eval(args, load_generation, process_group, kept_checkpoints),
        ),
        (
            "fid",
            "FID between two of: data set, samples npz, statistics npz; prints one JSON object",
            ev.add_fid_arguments,
            ev.run_fid,
        ),
        (
            "ref-stats",
            "reference statistics (mu, sigma) of a data set for FID",
            ev.add_ref_stats_arguments,
            ev.run_ref_stats,
        ),
        (
            "report",
            "runs' evaluations as one table (md, csv, json) with their protocol; --plot: metrics against kimg",
            report.add_report_arguments,
            report.run_report,
        ),
        (
            "make-toy",
            "write a 2-D toy data set (grid25: 25 Gaussians, VEEGAN / PacGAN) as an npz of float vectors",
            toy.add_make_toy_arguments,
            toy.run_make_toy,
        ),
        (
            "export",
            "plain weights of a checkpoint (DeepSpeed partitions joined) for sample/eval",
            ex.add_export_arguments,
            ex.run_export,
        ),
        (
            "import",
            "a network trained by BigGAN-PyTorch, pytorch-CycleGAN-and-pix2pix or stylegan2-ada-pytorch -> a run",
            add_import_arguments,
            run_import,
        ),
    ]


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"bigtrain: warning: {message}\n"


def main(argv: Optional[list[str]] = None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parse_arguments(parser, sys.argv[1:] if argv is None else argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        code = _run(args)
    except Exception:
        if _one_rank_of_many():  # a crash: its traceback, then the same hard exit
            traceback.print_exc()
            leave_process(1)
        raise
    return leave_process(code)


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`argv` parsed by `parser`, with `key=value` overrides accepted anywhere after the
    command's positionals (`bigtrain train CONFIG --dry-run a=1 b=2`): argparse hands the
    ones after an option back as unrecognised, and they join the overrides in order."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = isinstance(getattr(args, "overrides", None), list)
        if not takes_overrides or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except BigtrainError as exc:
        print(f"bigtrain: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as exc:
        print(f"bigtrain: error: training diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except Stopped as exc:
        print(f"bigtrain: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("bigtrain: interrupted", file=sys.stderr)
        return 130


def leave_process(code: int) -> int:
    """Return `code`, or, in one rank of a multi-process launch, end the process with it now.

    A rank's gloo worker threads outlive destroy_process_group while DDP still holds the group,
    and one that drops its last tensor during interpreter shutdown aborts the process
    (SIGABRT, "terminate called without an active exception"; about 1 run in 40 on 2 CPU
    ranks). So a rank flushes its output and exits without the interpreter's teardown; every
    file was closed before (docs/design.md, "Process exit").
    """
    if not _one_rank_of_many():
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _one_rank_of_many() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by torchrun / accelerate launch
