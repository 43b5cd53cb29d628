"""`bigtrain import`: networks trained by the reference code bases -> a bigtrain run directory.

A format (FORMATS) names the files it reads and how their tensors map onto the nets of a bigtrain
config: BigGAN-PyTorch's G.pth / G_ema.pth / D.pth, pytorch-CycleGAN-and-pix2pix's
latest_net_*.pth, stylegan2-ada-pytorch's network pickles. The nets are built from the config,
every tensor of the files must find its place with its shape (else one error naming the file's
key and both shapes), and the result is written as a weights-only checkpoint (step 0) that
`sample`, `eval`, `translate` and `export` read and `train.init_from` starts a new run from.
docs/importing.md describes the formats; the name mappings are in each format's module.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from bigtrain.errors import BigtrainError, CheckpointError

REFERENCE_OUTPUTS = "reference_outputs.pt"  # beside the weights: what --check compares with
UNMAPPED = "?"  # a format's rename marks a key of a layout it does not know with this prefix
CHECK_TOLERANCE = 1e-5  # max |ours - reference| relative to max(1, max |reference|), fp32, eval mode


@dataclass
class Part:
    """The tensors of one reference network, and where they go: player `player` (its EMA copy
    when `ema`), under `prefix` inside it (CycleGAN's G_AB. and G_BA. of the one player G). A part
    with `absent` (why) stands for a sub-network no file gives (the other direction of a released
    CycleGAN generator): the checkpoint records it (checkpoint.ABSENT), and no reader runs it."""

    player: str
    file: str
    tensors: dict[str, torch.Tensor]
    prefix: str = ""
    ema: bool = False
    absent: str = ""

    @property
    def what(self) -> str:
        """How messages name the target: G, G_ema, G.G_AB, D_A."""
        return f"{self.player}{'_ema' if self.ema else ''}{'.' + self.prefix[:-1] if self.prefix else ''}"


@dataclass
class Format:
    """A reference code base's files: `read(paths) -> (parts, information)`; `rename(key, cfg)`
    -> bigtrain's name of a file's key (None: not stored by bigtrain); `adapt(part, renamed,
    expected, cfg)` converts what is not a plain renaming (spectral norm's vectors, scalars)."""

    name: str
    recipes: tuple[str, ...]
    files: str  # which files, for messages
    read: Callable[[list[Path]], tuple[list[Part], dict]]
    rename: Callable[[str, object], Optional[str]]
    adapt: Callable[[Part, dict, dict, object], dict] = lambda part, renamed, expected, cfg: renamed
    refuses: Callable[[object], Optional[str]] = lambda cfg: None  # why a config of its recipes does not fit
    # --direction (one generator of a pair): read(paths, direction) then reads its files, and direct(cfg,
    # direction) makes the config translate that direction in sample and eval; None: the format takes none
    direct: Optional[Callable[[object, str], None]] = None


def _formats() -> dict[str, Format]:
    from bigtrain.importers import biggan_pytorch, img2img, stylegan2_ada

    return {f.name: f for f in (biggan_pytorch.FORMAT, img2img.CYCLEGAN, img2img.PIX2PIX, stylegan2_ada.FORMAT)}


def format_names() -> list[str]:
    """The formats `bigtrain import` reads."""
    return sorted(_formats())


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A torch.save'd state dict (read with weights_only: it runs nothing)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors of a corrupt file, or a pickle naming code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(state)


def fit(part: Part, fmt: Format, expected: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The part's tensors under bigtrain's names, checked against `expected` (the config's net's
    state under the part's prefix): BigtrainError naming the first key that does not fit."""
    renamed: dict[str, tuple[torch.Tensor, str]] = {}
    for key, value in part.tensors.items():
        name = fmt.rename(key, cfg)
        if name is not None:
            renamed[name] = (value, key)
    renamed = fmt.adapt(part, renamed, expected, cfg)
    for name, (value, key) in renamed.items():  # scalars that bigtrain keeps as [1] (DeepSpeed broadcasts no 0-d)
        if value.dim() == 0 and name in expected and tuple(expected[name].shape) == (1,):
            renamed[name] = (value.reshape(1), key)
    for name, (value, key) in renamed.items():
        if name not in expected:
            where = "no bigtrain name" if name.startswith(UNMAPPED) else f"it would be {name!r}"
            raise CheckpointError(
                f"{part.file}: {key!r} {tuple(value.shape)} has no place in the config's {part.what} "
                f"({where}); is the config's net the one that was trained?"
            )
        if tuple(value.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{part.file}: {key!r} is {tuple(value.shape)}, but the config's {part.what} has {name!r} "
                f"{tuple(expected[name].shape)}"
            )
    out = {}
    for name, mine in expected.items():
        if name in renamed:
            out[name] = renamed[name][0].to(mine.dtype)
        elif name.endswith("num_batches_tracked"):  # files without the counter (BGP's BN): no effect in eval
            out[name] = torch.zeros_like(mine)
        else:
            raise CheckpointError(f"{part.file}: has nothing for the config's {part.what} {name!r} {tuple(mine.shape)}")
    return out


def _nets(cfg, info):
    """(recipe, {player: (built net, keeps an EMA copy)}) of the config."""
    from bigtrain.families import build_recipe

    recipe = build_recipe(cfg, info)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; leave the caller's RNG alone
        return recipe, {spec.name: (spec.build(), spec.ema) for spec in recipe.players()}


def convert(
    fmt: Format, parts: list[Part], cfg, nets: dict, sampled: tuple[str, ...]
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, str]]]:
    """Weights by player (and `<player>_ema`) from the parts, and the sub-modules by player that the
    `absent` parts stand for (sub-module -> why). The `sampled` players need a file; another player may
    be left out (released generators come without D), with a warning: a run started from the import
    (train.init_from) initialises it afresh."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    absent: dict[str, dict[str, str]] = {}
    for part in parts:
        if part.absent:
            absent.setdefault(part.player, {})[part.prefix[:-1]] = part.absent
            continue
        if part.player not in nets:
            raise BigtrainError(f"{part.file}: holds {part.what}, which config's recipe has no player for")
        net, ema = nets[part.player]
        if part.ema and not ema:
            raise BigtrainError(
                f"{part.file}: holds {part.what}, but the config keeps no EMA copy of {part.player} (ema.enabled)"
            )
        state = net.state_dict()
        expected = {k[len(part.prefix) :]: v for k, v in state.items() if k.startswith(part.prefix)}
        target = found.setdefault(f"{part.player}_ema" if part.ema else part.player, {})
        target.update({part.prefix + k: v for k, v in fit(part, fmt, expected, cfg).items()})
    for name, (net, _) in nets.items():
        for key in (name, f"{name}_ema"):
            if key not in found:
                continue
            gaps = tuple(f"{sub}." for sub in absent.get(name, {}))
            missing = [k for k in net.state_dict() if k not in found[key] and not k.startswith(gaps)]
            if missing:
                raise BigtrainError(f"no file gives {key}'s {missing[0]!r} (the {fmt.name} format reads {fmt.files})")
        if name in found:
            continue
        if f"{name}_ema" in found:  # only the EMA copy was given (G_ema.pth alone): the raw weights start as it
            found[name] = dict(found[f"{name}_ema"])
        elif name in sampled:
            raise BigtrainError(f"no file holds player {name} (the {fmt.name} format reads {fmt.files})")
        else:
            warnings.warn(
                f"no file holds player {name}: the run has none, and a run started from it (train.init_from) "
                f"initialises {name} afresh",
                stacklevel=2,
            )
    return found, absent


def check(nets: dict, weights: dict, absent: dict, reference: Path) -> dict[str, float]:
    """Max |ours - reference| of every output stored in `reference` (reference_outputs.pt: entry
    "<player>[_ema][.<part>]" -> inputs, kwargs, output), the nets in eval mode; BigtrainError above
    CHECK_TOLERANCE (relative to max(1, max |reference|)), or for an entry of an `absent` sub-module."""
    from bigtrain.engine.generation import load_present

    if not reference.is_file():
        raise BigtrainError(f"--check: {reference} not found (the reference outputs to compare with)")
    entries = torch.load(reference, map_location="cpu", weights_only=True)
    diffs = {}
    for entry, record in entries.items():
        head, _, part = entry.partition(".")
        player = head[: -len("_ema")] if head.endswith("_ema") and head not in nets else head
        if player not in nets or head not in weights:
            raise BigtrainError(f"--check: {reference}: {entry!r} names no imported network")
        net = load_present(nets[player][0], weights[head], absent.get(player, {}), "the import")
        module = net.get_submodule(part) if part else net
        with torch.no_grad():
            out = module.eval()(*record["inputs"], **record.get("kwargs", {}))
        ref = record["output"]
        if tuple(out.shape) != tuple(ref.shape):
            raise BigtrainError(f"--check: {entry} gives {tuple(out.shape)}, the reference {tuple(ref.shape)}")
        diffs[entry] = float((out.double() - ref.double()).abs().max())
        if not diffs[entry] <= CHECK_TOLERANCE * max(1.0, float(ref.abs().max())):
            raise BigtrainError(
                f"--check: {entry} differs from the reference by {diffs[entry]:.3g} (max abs; tolerance "
                f"{CHECK_TOLERANCE:g} relative); its weights do not reproduce the reference network"
            )
    return diffs


def import_run(
    fmt_name: str, paths: list[str], config: str, out: str, do_check: bool = False, direction: Optional[str] = None
) -> dict:
    """Import `paths` of format `fmt_name` with the nets of `config` into run directory `out`;
    `direction` (AB | BA) says which a single generator of a pair maps. Returns a summary (players,
    information, --check's differences)."""
    from bigtrain.config import to_dict, to_yaml
    from bigtrain.data import assumed_info
    from bigtrain.engine import checkpoint
    from bigtrain.engine.generation import load_present
    from bigtrain.families import load_config

    formats = _formats()
    if fmt_name not in formats:
        raise BigtrainError(f"unknown import format {fmt_name!r}; formats: {', '.join(sorted(formats))}")
    fmt = formats[fmt_name]
    if direction is not None and fmt.direct is None:
        raise BigtrainError(
            f"--direction is for one generator of a pair (cyclegan's latest_net_G.pth); the {fmt.name} format takes "
            "none"
        )
    run_dir = Path(out)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise BigtrainError(f"{run_dir} exists and is not an empty folder; refusing to write into it")
    cfg = load_config(config, [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"])
    if cfg.recipe not in fmt.recipes:
        raise BigtrainError(
            f"{config}: recipe {cfg.recipe!r}, but {fmt.name} files hold {' or '.join(fmt.recipes)} nets"
        )
    if fmt.refuses(cfg):
        raise BigtrainError(f"{config}: {fmt.refuses(cfg)}")
    files = [Path(p) for p in paths]
    for path in files:
        if not path.exists():
            raise BigtrainError(f"{path}: file not found")
    parts, info = fmt.read(files, direction) if fmt.direct else fmt.read(files)
    if direction is not None:
        fmt.direct(cfg, direction)
    data_info = assumed_info(cfg.data, cfg.model.num_classes)
    recipe, nets = _nets(cfg, data_info)
    weights, absent = convert(fmt, parts, cfg, nets, recipe.sampled)
    for name, w in weights.items():  # every tensor in its place (fit checked them one by one)
        player = name.removesuffix("_ema") if name not in nets else name
        load_present(nets[player][0], w, absent.get(player, {}), "the import")
    diffs = check(nets, weights, absent, files[0].parent / REFERENCE_OUTPUTS) if do_check else None
    imported = {"format": fmt.name, "files": [str(p) for p in files], **info}
    state = {
        "players": {name: {"net": weights[name]} for name in nets if name in weights},
        **{f"{name}_ema": weights.get(f"{name}_ema") for name, (_, ema) in nets.items() if ema},
        "recipe": {},
        "counters": {"step": 0, "nimg": 0},
        "world_size": 1,
        "health": {},
        "config": to_dict(cfg),
        "data_info": data_info.to_dict(),
        "imported": imported,
        checkpoint.ABSENT: absent,
    }
    folder = checkpoint.write_imported(run_dir, state)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    summary = {"run_dir": str(run_dir), "checkpoint": str(folder), **imported}
    summary["players"] = {
        name: sum(v.numel() for v in w.values() if v.is_floating_point()) for name, w in weights.items()
    }
    if diffs is not None:
        summary["check"] = {k: (v if math.isfinite(v) else str(v)) for k, v in diffs.items()}
    json.dumps(summary)  # every value printable
    return summary


def add_import_arguments(p) -> None:
    """`bigtrain import FORMAT FILE... --config CONFIG --out RUN_DIR [--check]`."""
    p.add_argument("format", choices=format_names(), help="whose files: " + ", ".join(format_names()))
    p.add_argument("files", nargs="+", help="the reference's files (G.pth D.pth ...; latest_net_*.pth; one .pkl)")
    p.add_argument(
        "--config", required=True, help="a bigtrain config whose nets are the files' (see docs/importing.md)"
    )
    p.add_argument("--out", required=True, help="the run directory to write (must not exist, or be empty)")
    p.add_argument(
        "--direction",
        choices=("AB", "BA"),
        default=None,
        help="cyclegan's one released generator (latest_net_G.pth): AB if it maps domain A to B, BA if B to A",
    )
    p.add_argument(
        "--check", action="store_true", help=f"compare outputs with {REFERENCE_OUTPUTS} beside the first file"
    )


def run_import(args) -> int:
    """The `import` command: prints one JSON object (run directory, players, --check's differences)."""
    summary = import_run(args.format, args.files, args.config, args.out, args.check, args.direction)
    print(json.dumps(summary))
    return 0
