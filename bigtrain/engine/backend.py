"""The distributed engine behind the players. The ONLY module that imports accelerate/deepspeed.

The loop sees a backend through a small interface: make players, enter one accumulation context
for all players, backward and step one player, autocast, reduce statistics, barrier. Mixed
precision is done here rather than by Accelerate so that each player owns its own loss scaler:
Accelerate's fp16 shares one GradScaler between optimizers, and an overflow in D would then
skip G's step too.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, Optional

import torch
from torch import nn

from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
from bigtrain.engine.players import Player, build_optimizer
from bigtrain.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AccelerateBackend:
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

    def make_player(self, name: str, net: nn.Module, opt_cfg: OptimConfig) -> Player:
        """Move `net` to the device, wrap it for DDP and give it its own optimizer and scaler."""
        net = net.to(self.device)
        engine = self.accelerator.prepare_model(net)
        optimizer = build_optimizer(net.parameters(), opt_cfg)
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        return Player(name=name, net=net, engine=engine, optimizer=optimizer, scaler=scaler, grad_clip=opt_cfg.grad_clip)

    def accumulate(self, players: list[Player]) -> ContextManager:
        """One context for every player per accumulation round: gradients are all-reduced only
        in the last round of each phase."""
        return self.accelerator.accumulate(*[p.engine for p in players])

    def autocast(self) -> ContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def backward(self, player: Player, loss: torch.Tensor) -> None:
        """Backward of one round's mean loss; Accelerate divides it by the number of rounds."""
        self.accelerator.backward(player.scaler.scale(loss) if player.scaler is not None else loss)

    def step(self, player: Player) -> Optional[torch.Tensor]:
        """Optimizer step of one player. With fp16, returns a 0-d tensor that is 1 when the
        player's own scaler skipped the step (inf/NaN gradients), without a host sync."""
        skipped = None
        if player.scaler is not None:
            player.scaler.unscale_(player.optimizer)
            self._clip(player)
            scale_before = player.scaler._scale.clone()  # the tensor, not get_scale(): no sync
            player.scaler.step(player.optimizer)
            player.scaler.update()
            skipped = (player.scaler._scale < scale_before).float()
        else:
            self._clip(player)
            player.optimizer.step()
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
        state = {"net": player.net.state_dict(), "optimizer": player.optimizer.state_dict()}
        if player.scaler is not None:
            state["scaler"] = player.scaler.state_dict()
        return state

    def load_player_state(self, player: Player, state: dict) -> None:
        player.net.load_state_dict(state["net"])
        player.optimizer.load_state_dict(state["optimizer"])
        if player.scaler is not None and "scaler" in state:
            player.scaler.load_state_dict(state["scaler"])

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (identity on one process)."""
        if self.world_size == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction="mean")

    def broadcast_object(self, obj: object) -> object:
        """`obj` as rank 0 has it, on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        self.accelerator.end_training()


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


def build_backend(backend_cfg: BackendConfig, train_cfg: TrainConfig) -> AccelerateBackend:
    """The backend named by `backend.kind`."""
    if backend_cfg.kind == "accelerate":
        return AccelerateBackend(backend_cfg, train_cfg)
    raise ConfigError("backend.kind", f"{backend_cfg.kind!r} is not available yet in this version")
