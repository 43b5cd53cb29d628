"""The Accelerate backend: plain modules and optimizers under DDP (one process or many), with
mixed precision done here rather than by Accelerate so that each player owns its own loss
scaler: Accelerate's fp16 shares one GradScaler between optimizers, and an overflow in D would
then skip G's step too."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Iterator, Optional, Sequence

import torch
from torch import nn

from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
from bigtrain.engine.backends.base import Backend, BeforeStep, split_batch
from bigtrain.engine.guard import name_nonfinite, nonfinite_gradients
from bigtrain.engine.players import Player, build_optimizer, uses_fused
from bigtrain.errors import CheckpointError


class ParamGrads:
    """GradAccess over plain `.grad` tensors (DDP, one process)."""

    def get(self, param: nn.Parameter) -> Optional[torch.Tensor]:
        return param.grad

    def set(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        param.grad.copy_(grad)


class AccelerateBackend(Backend):
    """Plain PyTorch modules and optimizers, DDP through Accelerate (one process or many)."""

    def __init__(self, backend_cfg: BackendConfig, train_cfg: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        ddp = DistributedDataParallelKwargs(find_unused_parameters=backend_cfg.find_unused_parameters)
        self.accelerator = Accelerator(mixed_precision="no", kwargs_handlers=[ddp])
        self.precision = train_cfg.precision
        self.device: torch.device = self.accelerator.device
        self.rank: int = self.accelerator.process_index
        self.local_rank: int = self.accelerator.local_process_index
        self.world_size: int = self.accelerator.num_processes
        self.is_main: bool = self.accelerator.is_main_process
        self.micro_batch, self.rounds = split_batch(train_cfg, self.world_size)
        self.accelerator.gradient_accumulation_steps = self.rounds

    def make_player(
        self,
        name: str,
        net: nn.Module,
        opt_cfg: OptimConfig,
        *,
        local_buffers: Sequence[str] = (),
        unused_parameters: bool = False,
    ) -> Player:
        """Move `net` to the device, wrap it for DDP and give it its own optimizer and scaler.
        `local_buffers`: buffers DDP must not broadcast before each forward (each rank sets them);
        `unused_parameters`: DDP looks for parameters a forward left unused (for this player, on
        top of backend.find_unused_parameters)."""
        net = net.to(self.device)
        keep_buffers_local(net, local_buffers)
        handler = self.accelerator.ddp_handler
        find_unused = handler.find_unused_parameters
        handler.find_unused_parameters = find_unused or unused_parameters
        try:
            engine = self.accelerator.prepare_model(net)
        finally:
            handler.find_unused_parameters = find_unused
        fused = uses_fused(opt_cfg, self.device)
        optimizer = build_optimizer(net.parameters(), opt_cfg, fused=fused)
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        return Player(
            name=name,
            net=net,
            engine=engine,
            optimizer=optimizer,
            scaler=scaler,
            grad_clip=opt_cfg.grad_clip,
            base_lr=opt_cfg.lr,
            deferred_guard=fused,
            backend=self,
        )

    def set_batch(self, micro_batch: int, rounds: int) -> None:
        """Micro-batch and accumulation rounds from the next phase on (called between
        iterations, where Accelerate's round counter is a whole number of phases, so restarting
        it is exact)."""
        self.micro_batch, self.rounds = micro_batch, rounds
        self.accelerator.gradient_accumulation_steps = rounds
        self.accelerator.step = 0

    def accumulate(self, players: list[Player]) -> ContextManager:
        """One context for every player per accumulation round: gradients are all-reduced only
        in the last round of each phase."""
        return self.accelerator.accumulate(*[p.engine for p in players])

    def backward(self, losses: Sequence[tuple[Player, torch.Tensor]]) -> None:
        """One backward of one round's mean losses (each player's scaled by its own fp16
        scaler); Accelerate divides by the number of rounds. The players' losses come from
        separate graphs (or their sum is what each should minimise), so one backward serves all."""
        scaled = [p.scaler.scale(loss) if p.scaler is not None else loss for p, loss in losses]
        total = scaled[0]
        for loss in scaled[1:]:
            total = total + loss
        self.accelerator.backward(total)

    def step(
        self, player: Player, before_step: BeforeStep = None, finite_loss: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]:
        """Optimizer step of one player, after `before_step(name, net, grads)` (unscaled
        gradients, before clipping). Returns a 0-d tensor that is 1 when the step was skipped:
        with fp16 by the player's own scaler (inf/NaN gradients); otherwise, given
        `finite_loss` (the phase's losses were finite), when the loss or any gradient is
        non-finite, the way the scaler skips (docs/design.md, "Non-finite guard"). A skip
        leaves what was non-finite in `player.nonfinite`."""
        skipped = None
        if player.scaler is not None:
            player.scaler.unscale_(player.optimizer)
        if before_step is not None:
            before_step(player.name, player.net, ParamGrads())
        if player.scaler is None and finite_loss is not None:
            skipped = nonfinite_gradients(player, finite_loss)
            if player.deferred_guard:
                # a fused kernel skips the step on the device when found_inf is 1 (as it does
                # for GradScaler): no host read; the loop reads the flags at the log interval
                player.optimizer.found_inf, player.optimizer.grad_scale = skipped, None
                player.nonfinite = torch.where(finite_loss, 2, 1)  # NONFINITE_WHAT
            else:
                # the one host read of the guard (GradScaler's own step reads its flag likewise);
                # the flag goes back on the host, so the loop's bool() costs nothing more
                skipped = torch.tensor(skipped.item())
                if skipped:
                    player.nonfinite = name_nonfinite(player, finite_loss)
        self._clip(player)
        if player.scaler is not None:
            scale_before = player.scaler._scale.clone()  # the tensor, not get_scale(): no sync
            player.scaler.step(player.optimizer)  # fused: found_inf goes to the kernel, no sync
            player.scaler.update()
            skipped = (player.scaler._scale < scale_before).float()
            player.nonfinite = (
                torch.full((), 3, device=skipped.device) if player.deferred_guard else "a gradient (fp16 overflow)"
            )  # full: no host-to-device copy
        elif skipped is None or player.deferred_guard or not skipped:
            player.optimizer.step()
            player.optimizer.found_inf = None
        player.optimizer.zero_grad(set_to_none=True)
        return skipped

    @staticmethod
    def _clip(player: Player) -> None:
        if player.grad_clip > 0:
            nn.utils.clip_grad_norm_(player.net.parameters(), player.grad_clip)

    @contextlib.contextmanager
    def full_parameters(self, player: Player) -> Iterator[nn.Module]:
        """The player's plain module with all of its parameters present (ZeRO-3 gathers them)."""
        yield player.net

    def player_state(self, player: Player) -> dict:
        """What goes into trainer.pt for this player (rank 0 writes it)."""
        state = {"net": player.net.state_dict(), "optimizer": player.optimizer.state_dict()}
        if player.scaler is not None:
            state["scaler"] = player.scaler.state_dict()
        return state

    def save_engine_files(self, players: list[Player], folder: Path) -> None:
        """Collective: engines that keep their own checkpoint files write them into `folder`.
        DDP players live entirely in trainer.pt, so there is nothing to do here."""

    def load_player(self, player: Player, state: dict, folder: Path, written: Optional[int] = None) -> None:
        """Restore a player from its trainer.pt entry (and its own files in `folder`, if any);
        `written`: the number of processes that wrote it (every rank holds full states here)."""
        if state.get("engine") == "deepspeed":
            raise CheckpointError(
                f"{folder}: {player.name} was saved by the deepspeed backend; resume with backend.kind=deepspeed"
            )
        player.net.load_state_dict(state["net"])
        player.optimizer.load_state_dict(state["optimizer"])
        if player.scaler is not None and "scaler" in state:
            player.scaler.load_state_dict(state["scaler"])

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (identity on one process)."""
        if self.world_size == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction="mean")

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self, wait: bool = True) -> None:
        """With `wait` (a normal end; collective), every rank arrives before any tears the
        process group down: gloo can abort a process whose group goes while a peer still uses
        it. After an error, no barrier: the other ranks may never arrive."""
        if wait and self.world_size > 1:
            self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def keep_buffers_local(net: nn.Module, local_buffers: Sequence[str]) -> list[str]:
    """Tell DDP not to broadcast these buffers of `net` (by name, or by the last part of their
    name) before each forward; returns the names it found."""
    from torch.nn.parallel import DistributedDataParallel

    names = [n for n, _ in net.named_buffers() if n in local_buffers or n.rsplit(".", 1)[-1] in local_buffers]
    if names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(net, names)
    return names
