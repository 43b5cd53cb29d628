"""Reading stylegan2-ada-pytorch's network pickles without running any of their code.

A `.pkl` of NVlabs/stylegan2-ada-pytorch is a plain pickle whose networks are "persistent"
objects: each is stored as a call of `torch_utils.persistence._reconstruct_persistent_obj(meta)`,
where `meta` holds the class's whole source code (`module_src`, which the reference executes) and
the module's `__dict__` (`state`: its `_parameters`, `_buffers` and `_modules`). A pickle may call
any importable function, so loading one with `pickle.load` runs whatever it names.

`SafeUnpickler` resolves only the few names such a file uses, and for those that would run code
it substitutes a function of its own: a persistent object becomes a `Record` of its class name and
state (the source text is kept as a string, never compiled); a tensor storage is read by
`torch.load(weights_only=True)`; EasyDict and numpy scalars become inert values. Any other name is
refused with `UnsafePickle` before anything is called: the same standard as bigtrain's own
`weights_only` checkpoint loads.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from bigtrain.errors import CheckpointError


class UnsafePickle(CheckpointError):
    """A pickle names something other than tensors and the reference's network records."""


@dataclass
class Record:
    """A persistent object of the reference (a network, a layer): its class name and __dict__."""

    class_name: str
    state: dict


class Inert(dict):
    """Stands for a value the import does not need (EasyDict options, numpy scalars): holds the
    pickle's items and attributes as data, has no behaviour."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


def _record(meta: dict) -> Record:
    """`_reconstruct_persistent_obj`'s stand-in: keep the state, never run `meta['module_src']`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise UnsafePickle(f"a persistent object whose record is not a class with a state: {type(meta).__name__}")
    return Record(str(meta.get("class_name")), meta["state"])


def _storage_from_bytes(data: bytes) -> Any:
    """`torch.storage._load_from_bytes`'s stand-in: the bytes are a torch.save file of one storage."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _inert(*args: Any, **kwargs: Any) -> Inert:
    return Inert()


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record,
    ("dnnlib.util", "EasyDict"): Inert,
    ("numpy", "dtype"): _inert,
    ("numpy.core.multiarray", "scalar"): _inert,
    ("numpy._core.multiarray", "scalar"): _inert,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ALLOWED names (or torch dtypes) and refuses the rest."""

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafePickle(
            f"{self.source}: names {module}.{name}, which is neither a tensor nor a network record of "
            "stylegan2-ada-pytorch; refusing to read it (nothing in it was run)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(f"{self.source}: holds a persistent id ({type(pid).__name__}); not a network pickle")


def load(path: str) -> Any:
    """The object of pickle file `path`, read by SafeUnpickler (CheckpointError if it is not one)."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, path).load()
    except UnsafePickle:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated or corrupt pickles raise many kinds
        raise CheckpointError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def module_tensors(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """A Record of an nn.Module -> its state dict (parameters and persistent buffers, by dotted name)."""
    state, out = record.state, {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach().clone()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise CheckpointError(f"{prefix}{name} is a {type(child).__name__}, not a network record")
        out.update(module_tensors(child, f"{prefix}{name}."))
    return out
