"""What the GPU acceptance run's checks share: a check's record, its context, its sizes. Imports no
torch: the runner reads it before it installs anything."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

STATUSES = ("pass", "fail", "error", "skip")


def result(status: str, figures: dict | None = None, reason: str | None = None) -> dict:
    """One check's record: its status, its figures and (for anything but a pass) why."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    out: dict[str, Any] = {"status": status, "figures": figures or {}}
    if reason:
        out["reason"] = reason
    return out


def describe(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Skip(Exception):
    """Raised by a check that cannot run here; its message is the reason."""


@dataclasses.dataclass
class Ctx:
    """Where a check runs: `dry` (the CPU dry run at toy sizes), its output folder, its own temp folder."""

    dry: bool
    out: Path
    tmp: Path
    partial: Path | None = None  # where `progress` leaves the figures so far, read if the check runs out of time

    def size(self, gpu: Any, cpu: Any) -> Any:
        """The GPU run's size or the dry run's."""
        return cpu if self.dry else gpu

    def progress(self, figures: dict) -> None:
        """Leave the figures measured so far: a check killed at its budget keeps them in its record."""
        if self.partial is not None:
            tmp = self.partial.with_suffix(".tmp")
            tmp.write_text(json.dumps(figures, default=str))
            tmp.replace(self.partial)


def module_of(fn: str) -> str:
    """The module of a check's "module:function": a module of bench/gpu/, or any dotted module path."""
    module = fn.split(":")[0]
    return module if "." in module else f"bench.gpu.{module}"


@dataclasses.dataclass
class Check:
    """One claim, the function that checks it ("module:function", ctx -> record; `module_of`) and its
    time budgets in seconds."""

    name: str
    claim: str
    fn: str
    gpu_s: float
    cpu_s: float

    def budget(self, ctx: Ctx) -> float:
        return ctx.size(self.gpu_s, self.cpu_s)

    def run(self, ctx: Ctx) -> dict:
        check = getattr(importlib.import_module(module_of(self.fn)), self.fn.split(":")[1])
        try:
            return check(ctx)
        except Skip as why:
            return result("skip", {}, str(why))
