"""NVlabs/stylegan2-ada-pytorch's network pickles (`network-snapshot-*.pkl`, the released FFHQ,
AFHQ, MetFaces files): a dict holding G, D, G_ema (and augment_pipe, training_set_kwargs), read by
bigtrain/importers/safe_pickle.py without running any of the pickle's code.

bigtrain's StyleGAN2 nets have the reference's module tree and parameter names, so every tensor
keeps its name; the FIR filters (`*.resample_filter`) are not stored by bigtrain (they are rebuilt
from the config's `resample_filter`). The augment pipe's p is not imported: a run started from
the import adapts its own (the reference, resuming from a pickle, restarts ADA the same way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from bigtrain.errors import BigtrainError
from bigtrain.importers import Format, Part
from bigtrain.importers.safe_pickle import Record, load, module_tensors

NETWORKS = (("G", "G", False), ("D", "D", False), ("G_ema", "G", True))


def _read(paths: list[Path]) -> tuple[list[Part], dict]:
    if len(paths) != 1 or paths[0].suffix != ".pkl":
        raise BigtrainError(f"the stylegan2-ada format reads one network .pkl, got {', '.join(map(str, paths))}")
    path = paths[0]
    data = load(str(path))
    if not isinstance(data, dict):
        raise BigtrainError(f"{path}: holds a {type(data).__name__}, not stylegan2-ada-pytorch's dict of networks")
    parts = []
    for key, player, ema in NETWORKS:
        record = data.get(key)
        if record is None:
            continue
        if not isinstance(record, Record):
            raise BigtrainError(f"{path}: its {key} is a {type(record).__name__}, not a network")
        parts.append(Part(player, f"{path} [{key}]", module_tensors(record), ema=ema))
    if not parts:
        raise BigtrainError(f"{path}: holds none of G, D, G_ema")
    return parts, {}


def _rename(key: str, cfg) -> Optional[str]:
    return None if key.endswith("resample_filter") else key


FORMAT = Format("stylegan2-ada", ("stylegan2",), "one network-snapshot-*.pkl (G, D, G_ema)", _read, _rename)
