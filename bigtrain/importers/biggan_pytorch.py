"""ajbrock/BigGAN-PyTorch's weights (`utils.save_weights`): G.pth, G_ema.pth and D.pth, each a
plain state dict (a name suffix such as G_ema_best0.pth is accepted), and state_dict.pth, whose
iteration count is kept as information. Its BigGAN.py nets are bigtrain's `arch: biggan` at
64-512 px, its BigGANdeep.py nets `arch: biggan_deep`.

Names (BigGAN.py): `blocks.i.0.{conv1,conv2,conv_sc,bn1,bn2}` -> `blocks.i.{conv1,conv2,shortcut,
bn1,bn2}`, `blocks.i.1` (self-attention) -> `attention.i`. BigGANdeep.py: G's `blocks.k.0` (k =
stage x depth + block) -> `blocks.stage.block`, `blocks.k.1` -> `attention.stage`; D's
`blocks.s.j` -> `blocks.s.j` (`conv_sc` -> `extra`), `blocks.s.depth` -> `attention.s`. Both:
G's `output_layer.0/2` -> `out_bn` / `out_conv`, BN's `stored_mean/var` -> `stats.running_mean/var`
(the output BN's `gain/bias` -> `weight/shift`), D's `linear` / `embed` -> `head.linear` /
`head.embed`; attention's scalar gamma -> [1].

Spectral norm: BGP keeps the raw weight W and one vector u0 per layer (sv0 only logs sigma) and in
eval mode computes sigma from v = normalize(u0 W), u = normalize(v W^T); torch's parametrization
keeps u and v and computes sigma = u W v. Setting v and u that way gives BGP's eval-mode sigma
exactly (docs/importing.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from bigtrain.errors import BigtrainError
from bigtrain.importers import Format, Part, load_state

SN = "parametrizations.weight."
INFO_FILE = "state_dict"


def _read(paths: list[Path]) -> tuple[list[Part], dict]:
    parts, info = [], {}
    for path in paths:
        stem = path.stem
        if stem.startswith(INFO_FILE):
            info["iteration"] = _iteration(path)
            continue
        if stem.startswith(("G_optim", "D_optim")):
            continue  # optimizer states: a new run starts its own
        match = re.fullmatch(r"(G_ema|G|D)(_.+)?", stem)
        if not match:
            raise BigtrainError(f"{path}: not a file of this format (G.pth, G_ema.pth, D.pth, state_dict.pth)")
        name = match.group(1)
        if any(p.what == name for p in parts):
            raise BigtrainError(f"{path}: a second {name} file")
        parts.append(Part("D" if name == "D" else "G", str(path), load_state(path), ema=name == "G_ema"))
    return parts, info


def _iteration(path: Path) -> Optional[int]:
    """state_dict.pth's `itr` (None where the file cannot be read as plain data)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # its `config` may hold values a weights-only load refuses; the count is information
        return None
    return int(state["itr"]) if isinstance(state, dict) and "itr" in state else None


RENAMES = (  # applied in order to every key (the blocks' names are the layout's: _blocks)
    (r"^output_layer\.0\.gain$", "out_bn.weight"),
    (r"^output_layer\.0\.bias$", "out_bn.shift"),
    (r"^output_layer\.0\.", "out_bn."),
    (r"^output_layer\.2\.", "out_conv."),
    (r"\.stored_(mean|var)$", r".stats.running_\1"),
)


def _rename(key: str, cfg) -> Optional[str]:
    if key.endswith(".sv0"):  # BGP's logged singular value: not part of the function
        return None
    for pattern, repl in RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _blocks(name: str, player: str, cfg) -> str:
    """BGP's `blocks.i.j.` -> bigtrain's blocks and attention. BigGAN.py: one list per resolution,
    [block, attention?]. BigGANdeep.py's G: one list per block, `depth` per resolution, attention
    after the stage's last block; its D: one list per resolution, [block x depth, attention?]."""
    match = re.match(r"blocks\.(\d+)\.(\d+)\.(.*)", name)
    if not match:
        return name
    i, j, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    net = cfg.model.g if player == "G" else cfg.model.d
    if net.arch == "biggan":
        return f"attention.{i}.{rest}" if j == 1 else f"blocks.{i}.{rest.replace('conv_sc.', 'shortcut.', 1)}"
    if player == "G":
        stage, block = divmod(i, net.depth)
        return f"attention.{stage}.{rest}" if j == 1 else f"blocks.{stage}.{block}.{rest}"
    return f"attention.{i}.{rest}" if j == net.depth else f"blocks.{i}.{j}.{rest.replace('conv_sc.', 'extra.', 1)}"


def _adapt(part: Part, renamed: dict, expected: dict, cfg) -> dict:
    """D's head and spectral norm's vectors (see the module docstring)."""
    out = {}
    for name, (value, key) in renamed.items():
        name = _blocks(name, part.player, cfg)
        if part.player == "D" and name.startswith(("linear.", "embed.")):
            name = "head." + name
        out[name] = (value, key)
    eps = (cfg.model.d if part.player == "D" else cfg.model.g).sn_eps
    for name in [n for n in out if n.endswith(".u0")]:
        base = name[: -len("u0")]
        u0, key = out.pop(name)
        if base + "weight" not in out:
            raise BigtrainError(f"{part.file}: {key!r} without its weight")
        if base + SN + "original" not in expected:
            continue  # the config's net has no spectral norm here: the raw weight is the weight
        weight, weight_key = out.pop(base + "weight")
        w = weight.reshape(weight.shape[0], -1).double()
        if u0.numel() != w.shape[0]:
            raise BigtrainError(f"{part.file}: {key!r} is {tuple(u0.shape)}, but its weight has {w.shape[0]} rows")
        v = F.normalize(u0.reshape(1, -1).double() @ w, eps=eps)  # [1, in]
        u = F.normalize(v @ w.t(), eps=eps)  # [1, out]
        out[base + SN + "original"] = (weight, weight_key)
        out[base + SN + "0._u"] = (u.reshape(-1).to(weight.dtype), key)
        out[base + SN + "0._v"] = (v.reshape(-1).to(weight.dtype), key)
    return out


def _refuses(cfg) -> Optional[str]:
    archs = {cfg.model.g.arch, cfg.model.d.arch}
    if len(archs) > 1 or not archs <= {"biggan", "biggan_deep"}:
        return (
            f"the biggan-pytorch format reads BigGAN.py's or BigGANdeep.py's nets (G and D both arch biggan or both "
            f"biggan_deep), not {cfg.model.g.arch} / {cfg.model.d.arch}"
        )
    return None


FORMAT = Format(
    "biggan-pytorch",
    ("biggan",),
    "G.pth, G_ema.pth, D.pth (state_dict.pth: information)",
    _read,
    _rename,
    _adapt,
    refuses=_refuses,
)
