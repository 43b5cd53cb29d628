"""What the GPU acceptance run's checks share: a check's record, its context, its sizes. Imports no
torch: the runner reads it before it installs anything."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

STATUSES = ("pass", "fail", "error", "skip")


def result(status: str, figures: dict | None = None, reason: str | None = None) -> dict:
    """One check's record: its status, its figures and (for anything but a pass) why."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    out: dict[str, Any] = {"status": status, "figures": figures or {}}
    if reason:
        out["reason"] = reason
    return out


class Skip(Exception):
    """Raised by a check that cannot run here; its message is the reason."""


@dataclasses.dataclass
class Ctx:
    """Where a check runs: `dry` (the CPU dry run at toy sizes), its output folder, its own temp folder."""

    dry: bool
    out: Path
    tmp: Path

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def size(self, gpu: Any, cpu: Any) -> Any:
        """The GPU run's size or the dry run's."""
        return cpu if self.dry else gpu


@dataclasses.dataclass
class Check:
    """One claim, the function that checks it (ctx -> record) and its time budgets in seconds."""

    name: str
    claim: str
    fn: Callable[[Ctx], dict]
    gpu_s: float
    cpu_s: float

    def budget(self, ctx: Ctx) -> float:
        return ctx.size(self.gpu_s, self.cpu_s)

    def run(self, ctx: Ctx) -> dict:
        try:
            return self.fn(ctx)
        except Skip as why:
            return result("skip", {}, str(why))
