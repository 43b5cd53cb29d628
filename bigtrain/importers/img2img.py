"""junyanz/pytorch-CycleGAN-and-pix2pix's checkpoints: `<epoch>_net_<name>.pth`, each a plain state
dict of one network (`torch.save(net.state_dict())`; `latest_net_G_A.pth` ...).

Names: the ResNet G and the PatchGAN Ds are `model.i` -> `net.i` (`conv_block` -> `body` inside
the residual blocks); the U-Net's nested blocks (`model.model.1.model.3.model...`) map level by
level onto `down.i` / `up.i`. CycleGAN's G_A (A -> B) and G_B are bigtrain's G_AB and G_BA, both
in the player G; the reference's D_A judges domain B (real B against G_A(A)), so it is bigtrain's
D_B, and its D_B is our D_A. The reference's released CycleGAN models are one generator each
(`latest_net_G.pth`, which its test model loads), of one direction: `--direction AB|BA` puts it in
G_AB or G_BA, and the other generator is recorded as absent (checkpoint.ABSENT), never random
weights that could translate. Two things of older or other settings are converted: instance-norm
running statistics (saved by the reference before PyTorch 0.4, and dropped by its own loader) are
dropped, and with `norm: none` the reference's convs have no bias, where bigtrain's have a zero one.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from bigtrain.errors import BigtrainError
from bigtrain.importers import UNMAPPED, Format, Part, load_state

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _read(paths: list[Path], names: dict[str, tuple[str, str]]) -> tuple[list[Part], dict]:
    """Parts of `*_net_<name>.pth` files; `names`: the reference's name -> (player, prefix)."""
    parts, seen = [], {}
    for path in paths:
        match = re.fullmatch(r"(?:.*_)?net_(.+)\.pth", path.name)
        if not match or match.group(1) not in names:
            known = ", ".join(f"latest_net_{n}.pth" for n in names)
            raise BigtrainError(f"{path}: not a network file of this format (expected {known})")
        if match.group(1) in seen:
            raise BigtrainError(f"{path}: {match.group(1)} is given twice (also {seen[match.group(1)]})")
        seen[match.group(1)] = path
        player, prefix = names[match.group(1)]
        parts.append(Part(player, str(path), load_state(path), prefix))
    return parts, {}


def _sequential(key: str, cfg) -> Optional[str]:
    """ResNet G / PatchGAN D: model.i -> net.i, conv_block -> body."""
    if not key.startswith("model."):
        return UNMAPPED + key  # not the reference's layout: fit() reports it
    return "net." + key[len("model.") :].replace(".conv_block.", ".body.")


def _unet(key: str, cfg) -> Optional[str]:
    """U-Net level i: model.model. + 1.model. (level 1) + 3.model. per further level, then the
    index of its Sequential: outermost [conv, sub, relu, convT, tanh], middle [lrelu, conv, norm,
    sub, relu, convT, norm, (dropout)], innermost [lrelu, conv, relu, convT, norm]."""
    n = cfg.model.g.downs
    match = re.fullmatch(r"model\.model\.((?:1\.model\.)?(?:3\.model\.)*)(\d+)\.(.+)", key)
    if not match:
        return UNMAPPED + key
    nested, index, leaf = match.group(1), int(match.group(2)), match.group(3)
    level = nested.count("model.")
    if level == 0:
        table = {0: "down.0.0", 3: "up.0.1"}
    elif level == n - 1:
        table = {1: f"down.{level}.1", 3: f"up.{level}.1", 4: f"up.{level}.2"}
    else:
        table = {1: f"down.{level}.1", 2: f"down.{level}.2", 5: f"up.{level}.1", 6: f"up.{level}.2"}
    return f"{table[index]}.{leaf}" if index in table else UNMAPPED + key


def _adapt(part: Part, renamed: dict, expected: dict, cfg) -> dict:
    net = cfg.model.g if part.player == "G" else cfg.model.d
    out = {}
    for name, (value, key) in renamed.items():
        if net.norm == "instance" and name.endswith(STATISTICS) and name not in expected:
            continue  # pre-0.4 instance norm's statistics: unused (the reference's loader drops them too)
        out[name] = (value, key)
    if net.norm == "none":  # the reference's convs have no bias without a norm layer; ours a zero one
        for name, mine in expected.items():
            if name.endswith(".bias") and name not in out and name[: -len("bias")] + "weight" in out:
                out[name] = (torch.zeros_like(mine), name)
    return out


def _read_pix2pix(paths: list[Path]) -> tuple[list[Part], dict]:
    return _read(paths, {"G": ("G", ""), "D": ("D", "")})


def _read_cyclegan(paths: list[Path], direction: Optional[str] = None) -> tuple[list[Part], dict]:
    """G_A, G_B, D_A, D_B; or one generator `*_net_G.pth` of `direction` (AB | BA), the other absent."""
    names = {"G_A": ("G", "G_AB."), "G_B": ("G", "G_BA."), "D_A": ("D_B", ""), "D_B": ("D_A", "")}
    single = [p for p in paths if re.fullmatch(r"(?:.*_)?net_G\.pth", p.name)]
    pair = [p for p in paths if re.fullmatch(r"(?:.*_)?net_G_[AB]\.pth", p.name)]
    if single and direction is None:
        raise BigtrainError(
            f"{single[0]}: one generator, of one direction (a released CycleGAN model); say which with --direction AB "
            "(it maps domain A to B) or --direction BA"
        )
    if direction is not None and (pair or not single):
        raise BigtrainError(
            f"--direction {direction}: is for one generator file (latest_net_G.pth); "
            + (f"{pair[0]} is one of a pair (G_A maps A to B, G_B B to A)" if pair else "none is given")
        )
    if direction is None:
        return _read(paths, names)
    other = direction[::-1]
    parts, info = _read(paths, {**names, "G": ("G", f"G_{direction}.")})
    why = (
        f"holds no {other[0]} -> {other[1]} generator (G_{other}): it was imported from one generator, "
        f"{direction[0]} -> {direction[1]} ({single[0].name}, --direction {direction})"
    )
    parts.append(Part("G", "", {}, f"G_{other}.", absent=why))
    return parts, {**info, "direction": direction}


def _direct(cfg, direction: str) -> None:
    """An import of one direction: sample and eval translate that direction (the only one it has)."""
    options = cfg.cyclegan
    if options.eval_direction != direction and options.eval_inputs:
        warnings.warn(
            f"cyclegan.eval_direction is now {direction}, the imported direction (the config says "
            f"{options.eval_direction}): sample and eval translate cyclegan.eval_inputs ({options.eval_inputs}), "
            f"which must then be domain {direction[0]} images",
            stacklevel=2,
        )
    options.eval_direction = direction


def _rename(key: str, cfg) -> Optional[str]:
    """Either layout, told apart by the key (only the U-Net nests `model.model.`), in either recipe."""
    if key.startswith("model.model.") and hasattr(cfg.model.g, "downs"):
        return _unet(key, cfg)
    return _sequential(key, cfg)


CYCLEGAN = Format(
    "cyclegan",
    ("cyclegan",),
    "latest_net_G_A.pth, latest_net_G_B.pth, latest_net_D_A.pth, latest_net_D_B.pth (or one latest_net_G.pth "
    "with --direction)",
    _read_cyclegan,
    _rename,
    _adapt,
    direct=_direct,
)
PIX2PIX = Format("pix2pix", ("pix2pix",), "latest_net_G.pth, latest_net_D.pth", _read_pix2pix, _rename, _adapt)
