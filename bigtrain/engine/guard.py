"""The non-finite guard (docs/design.md, "Non-finite guard"): which player's step a non-finite
loss or gradient skipped, counted without a host read where the optimizer can skip on the
device (fused), and the run stopped when one player skips `train.max_nonfinite` steps in a row.
The backends ask `nonfinite_gradients` for the flag; the loop keeps one `Health`."""

from __future__ import annotations

from typing import Any, Optional

import torch

from bigtrain.engine.players import Player
from bigtrain.errors import TrainingDiverged

# codes of a deferred skip's cause (a 0-d long tensor the backend leaves in Player.nonfinite)
NONFINITE_WHAT = {1: "the loss", 2: "a gradient", 3: "a gradient (fp16 overflow)"}


def first_nonfinite(state: dict[str, torch.Tensor], prefix: str = "") -> Optional[str]:
    """`prefix` + the name of the first floating-point tensor of a state dict holding a NaN or
    inf, or None."""
    return next((prefix + k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def nonfinite_gradients(player: Player, finite_loss: torch.Tensor) -> torch.Tensor:
    """1 (a 0-d float tensor, on the device) when the loss or a gradient of the player is
    non-finite, else 0: one fused check of every gradient, GradScaler's own (it multiplies by
    1.0: exact)."""
    found = (~finite_loss).float().reshape(1)
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in player.net.parameters():
        if p.grad is not None:
            by_device.setdefault(p.grad.device, []).append(p.grad)
    for device, grads in by_device.items():
        flag = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, torch.ones(1, device=device))
        found = torch.maximum(found, flag.to(found.device))
    return found.reshape(())


def name_nonfinite(player: Player, finite_loss: torch.Tensor) -> str:
    """What made a step non-finite (called only on a skip): the loss, or the first parameter
    with a non-finite gradient."""
    if not finite_loss.item():
        return "the loss"
    bad = next(
        (n for n, p in player.net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()), None
    )
    return f"the gradient of {bad}"


class Health:
    """Skipped steps per player (non-finite loss or gradient, fp16 overflow): a total for the
    logs, and the run stops when one player has skipped `limit` steps in a row
    (docs/design.md, "Non-finite guard").

    A flag the backend read on the host is checked at once. A deferred one (a fused optimizer
    skipped the step on the device) is only folded into tensors here, and `check()` reads them
    at the log interval and before any checkpoint: no host read per step."""

    def __init__(self, limit: int, totals: Optional[dict[str, int]] = None):
        self.limit = limit
        self.totals: dict[str, int] = dict(totals or {})
        self.streak: dict[str, int] = {}
        self.first: dict[str, str] = {}  # where the current streak began
        self.deferred: dict[str, dict[str, torch.Tensor]] = {}  # player -> device counters
        self.count: dict[str, int] = {}  # deferred: observations per player so far
        self.log: dict[
            str, dict[int, tuple[int, str]]
        ] = {}  # deferred: observation index -> (step, phase), since the last check
        self.pending = False  # deferred observations not read yet

    def observe(
        self, player: str, phase: str, step: int, skipped: torch.Tensor, what: Any, deferred: bool = False
    ) -> None:
        if deferred:
            return self._observe_on_device(player, phase, step, skipped, what)
        if not bool(skipped):
            self.streak[player] = 0
            return
        if not self.streak.get(player):
            self.first[player] = f"step {step}, phase {phase}: {what or 'a non-finite value'}"
        self.streak[player] = self.streak.get(player, 0) + 1
        self.totals[player] = self.totals.get(player, 0) + 1
        if self.streak[player] >= self.limit:
            self._raise(player, self.streak[player], self.first[player])

    def _observe_on_device(self, player: str, phase: str, step: int, skipped: torch.Tensor, what: torch.Tensor) -> None:
        # only device ops on device tensors and Python scalars: no host read and no host-to-device
        # copy (a blocking copy would wait for the GPU as a read does). The device holds the
        # index of an observation; `log` maps it back to (step, phase) when check() reads it.
        n = self.count.get(player, 0)
        self.count[player] = n + 1
        self.log.setdefault(player, {})[n] = (step, phase)
        c = self.deferred.get(player)
        if c is None:
            zero = torch.zeros((), dtype=torch.long, device=skipped.device)
            c = self.deferred[player] = {
                "streak": zero,
                "total": zero,
                "start": zero,
                "start_what": zero,
                "tripped": zero.bool(),
                "trip": zero,
                "trip_what": zero,
            }
        hit = skipped.reshape(()) > 0
        c["streak"] = torch.where(hit, c["streak"] + 1, 0)
        c["total"] = c["total"] + hit.long()
        first = hit & (c["streak"] == 1)
        c["start"], c["start_what"] = (
            torch.where(first, n, c["start"]),
            torch.where(first, what.reshape(()).long(), c["start_what"]),
        )
        trips = (c["streak"] >= self.limit) & ~c["tripped"]
        c["trip"], c["trip_what"] = (
            torch.where(trips, c["start"], c["trip"]),
            torch.where(trips, c["start_what"], c["trip_what"]),
        )
        c["tripped"] = c["tripped"] | trips
        self.pending = True

    def check(self) -> None:
        """Read the deferred counters (one host read for all players, none when nothing was
        observed since the last check): add their skips to the totals and stop the run if a
        player reached `limit` skips in a row."""
        if not self.pending:
            return
        self.pending = False
        keys = ("total", "tripped", "trip", "trip_what", "streak", "start")
        read = dict(
            zip(
                self.deferred,
                torch.stack([torch.stack([c[k].long() for k in keys]) for c in self.deferred.values()]).tolist(),
            )
        )
        for name, (total, *_) in read.items():  # every player's skips counted before any stop
            self.totals[name] = self.totals.get(name, 0) + total
            self.deferred[name]["total"] = torch.zeros_like(self.deferred[name]["total"])
        for name, (_, tripped, trip, trip_what, streak, start) in read.items():
            if tripped:
                step, phase = self.log[name][trip]
                self._raise(
                    name,
                    self.limit,
                    f"step {step}, phase {phase}: {NONFINITE_WHAT.get(trip_what, 'a non-finite value')}",
                )
            # keep only the entries a later check can still name: those of the current streak
            self.log[name] = {i: v for i, v in self.log[name].items() if streak and i >= start}

    def _raise(self, player: str, streak: int, first: str) -> None:
        raise TrainingDiverged(
            f"{player} skipped {streak} steps in a row for non-finite values (train.max_nonfinite={self.limit}); "
            f"the first at {first}. No checkpoint was written after it"
        )

    def stats(self) -> dict[str, float]:
        return {f"health/nonfinite_{name}": float(n) for name, n in sorted(self.totals.items())}
