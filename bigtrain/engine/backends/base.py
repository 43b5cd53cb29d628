"""The backend interface: what the loop and the players may ask of the distributed engine
behind them (docs/design.md, "Layout and boundaries"). Two backends implement it, each in its own
module of this package: Accelerate (DDP) and DeepSpeed (ZeRO 0-3, one engine per player)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from bigtrain.config import OptimConfig, TrainConfig
from bigtrain.engine.players import Player
from bigtrain.errors import ConfigError
from bigtrain.families.base import EngineCaps, GradAccess

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BeforeStep = Optional[Callable[[str, nn.Module, GradAccess], None]]


def _differentiable_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the default process group; its backward sums the gradients likewise."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


class Agreement:
    """The pending result of Backend.max_over_ranks."""

    def __init__(self, value, work=None):
        self.value, self.work = value, work

    def result(self) -> int:
        if self.work is not None:
            self.work.wait()
            self.work = None
            self.value = int(self.value.numpy()[0])  # a CPU tensor: no device wait
        return self.value


class Backend:
    """What the loop may use. Subclasses set the attributes and implement the methods."""

    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    is_main: bool
    micro_batch: int  # per process per accumulation round
    rounds: int  # accumulation rounds per optimizer step
    precision: str  # fp32 | bf16 | fp16
    reshardable: bool = True  # a checkpoint of N processes resumes on M (every rank holds full states)

    def autocast(self) -> ContextManager:
        """Mixed precision for forwards: inputs stay fp32, matmuls and convs run in bf16/fp16."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def attach_cross_replica(self, net: nn.Module) -> int:
        """Give every module of `net` asking for cross-replica statistics (`cross_replica`, e.g.
        biggan's batch norm with model.g.cross_replica) a differentiable sum over all processes,
        `all_reduce`; on one process it gets none and stays plain BN. Returns how many asked."""
        modules = [m for m in net.modules() if getattr(m, "cross_replica", False) and hasattr(m, "all_reduce")]
        for m in modules:
            m.all_reduce = _differentiable_sum if self.world_size > 1 else None
        return len(modules)

    def capabilities(self, name: str, opt_cfg: OptimConfig) -> EngineCaps:
        """What the engine of player `name` will be able to do (Recipe.check_engine), before it
        starts."""
        return EngineCaps(engine="DDP" if self.world_size > 1 else "one process")

    def differentiable_forward(
        self, player: Player, *inputs: Any, anchor: bool = False, **options: Any
    ) -> tuple[Any, Optional[torch.Tensor]]:
        """(outputs, anchor) of the player for a loss that differentiates through its input
        gradients (autograd.grad with create_graph, then the phase's backward).

        The outputs come from the player's plain module in eval mode: an engine treats any
        backward through its outputs as the training backward (DeepSpeed divides by the rounds,
        starts its reduction, and fails inside autograd.grad), and eval mode lets spectral norm
        reuse the power iteration of the phase's own forward. With `anchor`, the engine first
        runs a forward of its own whose zero share the phase adds to its loss, so that DDP's
        reducer and DeepSpeed's bookkeeping see a phase that has no other forward of it.
        `options` go to both forwards; a player returning several tensors anchors on its first.
        Refused where the engine cannot (ZeRO-3)."""
        if not self.supports_second_order(player):
            raise ConfigError(
                "backend",
                f"{player.name}: a loss through its input gradients needs a second backward, which its engine cannot "
                "do (ZeRO-3)",
            )
        zero = None
        if anchor:
            seen = player.engine(*inputs, **options)
            zero = (seen[0] if isinstance(seen, (tuple, list)) else seen).float().sum() * 0.0
        net = player.net
        was_training = net.training
        net.eval()
        try:
            out = net(*inputs, **options)
        finally:
            net.train(was_training)
        return out, zero

    def supports_second_order(self, player: Player) -> bool:
        """Whether a loss may backpropagate through the player's input gradients."""
        return True

    @torch.no_grad()
    def clamp_parameters(self, player: Player, bound: float) -> None:
        """Clamp every weight of the player to [-bound, bound] (WGAN weight clipping)."""
        for p in player.net.parameters():
            p.clamp_(-bound, bound)

    def all_ranks(self, ok: bool) -> bool:
        """Collective: True on every rank when `ok` is True on every rank."""
        if self.world_size == 1:
            return ok
        flag = torch.tensor(1.0 if ok else 0.0, device=self.device)
        return bool(self.reduce_mean(flag).item() == 1.0)

    _control_group = None  # a gloo group for control values, created on first use

    def max_over_ranks(self, value: int) -> "Agreement":
        """Collective, started now and read with `.result()` later: the largest `value` of the
        ranks. It runs on a CPU gloo group of its own, so it never waits for the device and its
        latency hides behind the next iteration (docs/design.md, "Preemption and requeue")."""
        if self.world_size == 1:
            return Agreement(value)
        import torch.distributed as dist

        if self._control_group is None:  # every rank gets here at the same call
            self._control_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        flag = torch.full((1,), value, dtype=torch.int64)
        return Agreement(flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control_group, async_op=True))

    def rounds_for(self, batch_size: int, micro_batch: int) -> int:
        """Accumulation rounds that make `batch_size` images with `micro_batch` per process."""
        per_round = micro_batch * self.world_size
        if batch_size % per_round:
            raise ConfigError(
                "schedule.batch",
                f"batch size {batch_size} is not a multiple of micro_batch ({micro_batch}) x world size "
                f"({self.world_size})",
            )
        return batch_size // per_round

    def get_lr(self, player: Player) -> float:
        """The learning rate the player's optimizer holds (every group has the same one)."""
        return float(player.optimizer.param_groups[0]["lr"])

    def set_lr(self, player: Player, lr: float) -> None:
        """Set the learning rate of every parameter group of the player's optimizer."""
        for group in player.optimizer.param_groups:
            group["lr"] = lr

    def reset_optimizer(self, player: Player) -> None:
        """Forget the optimizer's state (Adam's moments and step count), as at the start."""
        player.optimizer.state.clear()


def split_batch(train_cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro_batch, accumulation rounds) with batch_size = micro_batch x rounds x world_size."""
    batch = train_cfg.batch_size
    micro = train_cfg.micro_batch or batch // world_size
    if micro == 0 or batch % (micro * world_size):
        raise ConfigError(
            "train.batch_size",
            f"{batch} is not a multiple of micro_batch ({micro}) x world size ({world_size})",
        )
    return micro, batch // (micro * world_size)
