"""The distributed engine behind the players. The ONLY module that imports accelerate/deepspeed.

The loop sees a backend through a small interface: make players, enter one accumulation context
for all players, backward and step one player, autocast, gather a player's full parameters,
save and load players, reduce statistics, barrier. Two backends implement it:

- `AccelerateBackend`: plain modules under DDP. Mixed precision is done here rather than by
  Accelerate so that each player owns its own loss scaler: Accelerate's fp16 shares one
  GradScaler between optimizers, and an overflow in D would then skip G's step too.
- `DeepSpeedBackend`: every player is its own DeepSpeed engine (ZeRO 0-3) with its own config,
  so each has its own partitioning, clipping and (fp16) loss scaler. deepspeed is imported
  lazily, inside it: the Accelerate path never needs deepspeed installed.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import warnings
import zipfile
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
from bigtrain.engine.players import Player, build_optimizer, uses_fused
from bigtrain.recipes.base import GradAccess
from bigtrain.errors import CheckpointError, ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BeforeStep = Optional[Callable[[str, nn.Module, GradAccess], None]]


class ParamGrads:
    """GradAccess over plain `.grad` tensors (DDP, one process)."""

    def get(self, param: nn.Parameter) -> Optional[torch.Tensor]:
        return param.grad

    def set(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        param.grad.copy_(grad)


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

    def supports_second_order(self, player: Player) -> bool:
        """Whether a loss may backpropagate through the player's input gradients (gradient
        penalties: autograd.grad with create_graph, then the training backward)."""
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
            raise ConfigError("schedule.batch", f"batch size {batch_size} is not a multiple of micro_batch ({micro_batch}) x world size ({self.world_size})")
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

    def make_player(self, name: str, net: nn.Module, opt_cfg: OptimConfig) -> Player:
        """Move `net` to the device, wrap it for DDP and give it its own optimizer and scaler."""
        net = net.to(self.device)
        engine = self.accelerator.prepare_model(net)
        fused = uses_fused(opt_cfg, self.device)
        optimizer = build_optimizer(net.parameters(), opt_cfg, fused=fused)
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        return Player(name=name, net=net, engine=engine, optimizer=optimizer, scaler=scaler, grad_clip=opt_cfg.grad_clip, base_lr=opt_cfg.lr,
                      deferred_guard=fused)

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

    def step(self, player: Player, before_step: BeforeStep = None, finite_loss: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
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
            skipped = _nonfinite_gradients(player, finite_loss)
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
                    player.nonfinite = _name_nonfinite(player, finite_loss)
        self._clip(player)
        if player.scaler is not None:
            scale_before = player.scaler._scale.clone()  # the tensor, not get_scale(): no sync
            player.scaler.step(player.optimizer)  # fused: found_inf goes to the kernel, no sync
            player.scaler.update()
            skipped = (player.scaler._scale < scale_before).float()
            player.nonfinite = torch.full((), 3, device=skipped.device) if player.deferred_guard else "a gradient (fp16 overflow)"  # full: no host-to-device copy
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
            raise CheckpointError(f"{folder}: {player.name} was saved by the deepspeed backend; resume with backend.kind=deepspeed")
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


# ---- DeepSpeed ----------------------------------------------------------------------------

ENGINE_TAG = "engine"  # DeepSpeed's tag inside each player's folder: step-.../G/engine/
ACCELERATE_DS_CONFIG_FILE = "ACCELERATE_DEEPSPEED_CONFIG_FILE"  # set by `accelerate launch`
ACCELERATE_DS_ZERO_STAGE = "ACCELERATE_DEEPSPEED_ZERO_STAGE"
# Mirrors torch.amp.GradScaler's defaults, so fp16 behaves alike under both backends.
FP16_LOSS_SCALING = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 2000, "hysteresis": 1, "min_loss_scale": 1}


class DeepSpeedBackend(Backend):
    """Every player is its own engine from `deepspeed.initialize`, with its own config.

    The loop's accumulation maps onto DeepSpeed's own: `gradient_accumulation_steps` is the
    number of rounds, `backward` runs `engine.backward` then `engine.step` each round (DeepSpeed
    only updates on the accumulation boundary), and `step` merely checks that the phase ended on
    that boundary and reports an fp16 skip.
    """

    @property
    def reshardable(self) -> bool:
        """A checkpoint of N processes resumes on M in fp32 and bf16 at every ZeRO stage: the
        per-process partitions go through DeepSpeed's universal checkpoint (`load_player`).
        fp16 is refused: its loss scaler's conversion is untested here, where DeepSpeed runs no
        fp16 (docs/design.md, "Resume on another number of processes")."""
        return self.precision != "fp16"

    def __init__(self, backend_cfg: BackendConfig, train_cfg: TrainConfig, env: Mapping[str, str] = os.environ):
        import deepspeed
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        self.ds = deepspeed
        # DeepSpeed 0.19 calls collectives that torch 2.13 deprecates, once per call site
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        self.backend_cfg, self.train_cfg, self.env = backend_cfg, train_cfg, env
        self.precision = train_cfg.precision
        accel = get_accelerator()
        on_cpu = accel.device_name() == "cpu"
        _check_precision_supported(self.precision, accel)
        if "RANK" not in os.environ and not dist.is_initialized():  # no launcher: a group of one process
            for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
                os.environ.setdefault(key, value)
        self.local_rank: int = int(os.environ.get("LOCAL_RANK", 0))
        if on_cpu:
            self.device = torch.device("cpu")
        else:  # the device first, so that NCCL binds each process to its own GPU
            accel.set_device(self.local_rank)
            self.device = torch.device(accel.device_name(self.local_rank))
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend="gloo" if on_cpu else accel.communication_backend_name(), verbose=False)
        self.rank: int = dist.get_rank()
        self.world_size: int = dist.get_world_size()
        self.is_main: bool = self.rank == 0
        self.micro_batch, self.rounds = split_batch(train_cfg, self.world_size)
        self.zero_stages: dict[str, int] = {}
        self.engines: list = []

    def reset_optimizer(self, player: Player) -> None:
        raise ConfigError("progan.reset_optimizer", f"resetting {player.name}'s optimizer state is not supported under DeepSpeed (its ZeRO partitions hold it); set it to false")

    def make_player(self, name: str, net: nn.Module, opt_cfg: OptimConfig) -> Player:
        """Wrap `net` in its own DeepSpeed engine; the optimizer is built from `optim.<name>`
        (exactly as under Accelerate) unless the player's DeepSpeed JSON names one."""
        ds_config, _ = deepspeed_config(name, opt_cfg, self.backend_cfg, self.train_cfg, self.world_size, self.env)
        if "optimizer" in ds_config:
            kwargs = {"model_parameters": [p for p in net.parameters() if p.requires_grad]}
        else:
            kwargs = {"optimizer": build_optimizer(net.parameters(), opt_cfg)}
        engine, optimizer, _, _ = self.ds.initialize(model=net, config=ds_config, **kwargs)
        dtype = next(engine.module.parameters()).dtype
        if dtype != torch.float32:
            # DeepSpeed casts parameters only; BatchNorm then fails on bf16 weights with fp32
            # running statistics. Older DeepSpeed cast the whole module, buffers included.
            # A module computing its statistics in fp32 (`keeps_fp32_buffers`: biggan's) keeps them.
            for module in engine.module.modules():
                if getattr(module, "keeps_fp32_buffers", False):
                    continue
                for buffer in module.buffers(recurse=False):
                    if buffer.is_floating_point():
                        buffer.data = buffer.data.to(dtype)
        self.zero_stages[name] = engine.zero_optimization_stage()
        self.engines.append(engine)
        lr = float(ds_config.get("optimizer", {}).get("params", {}).get("lr", opt_cfg.lr))
        return Player(name=name, net=engine.module, engine=engine, optimizer=optimizer, scaler=None, grad_clip=float(ds_config.get("gradient_clipping", 0.0)), base_lr=lr)

    def set_batch(self, micro_batch: int, rounds: int) -> None:
        """Micro-batch and accumulation rounds from the next phase on, through each engine's
        own API (`set_train_micro_batch_size`, then `set_train_batch_size`, which keeps the
        micro-batch and sets the accumulation steps)."""
        self.micro_batch, self.rounds = micro_batch, rounds
        for engine in self.engines:
            engine.set_train_micro_batch_size(micro_batch)
            engine.set_train_batch_size(micro_batch * rounds * self.world_size)
            # DeepSpeed finds the accumulation boundary by its count of micro-steps modulo the
            # rounds; a count of whole phases of the old rounds (or a restored engine's, which
            # restarts at 0) need not be whole phases of the new ones: start a whole cycle here
            engine.micro_steps = -(-engine.micro_steps // rounds) * rounds

    def accumulate(self, players: list[Player]) -> ContextManager:
        """DeepSpeed counts accumulation rounds itself (one `engine.step` per `backward`)."""
        return contextlib.nullcontext()

    def backward(self, losses: Sequence[tuple[Player, torch.Tensor]]) -> None:
        """engine.backward for each player (it divides by the rounds and scales fp16 losses),
        then engine.step, except on the accumulation boundary: that step is `step()`'s, so
        that a hook can see the gradients between backward and update."""
        for player, loss in losses:
            player.engine.backward(loss)
        for player, _ in losses:
            if not player.engine.is_gradient_accumulation_boundary():
                player.engine.step()

    def step(self, player: Player, before_step: BeforeStep = None, finite_loss: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The boundary's engine.step, after `before_step(name, net, grads)` (grads: the fp32
        gradients as DeepSpeed keeps them, at any ZeRO stage). Returns a 0-d tensor that is 1
        when the step was skipped: with fp16 by the engine's own loss scaler (DeepSpeed has
        already synchronised to check for overflow, so reading its flag costs nothing more).
        Otherwise, given `finite_loss`, a non-finite loss zeroes the gradients before the
        engine's step (DeepSpeed cannot skip a step outside fp16): the weights then move by the
        optimizer's momentum only, never by a NaN (docs/design.md, "Non-finite guard")."""
        engine = player.engine
        if before_step is not None:
            before_step(player.name, player.net, _DeepSpeedGrads())
        skipped = None
        if self.precision != "fp16" and finite_loss is not None:
            skipped = torch.tensor((~finite_loss).float().item())  # on the host: read once
            if skipped:
                grads = _DeepSpeedGrads()
                for p in player.net.parameters():  # collective at ZeRO-3, like the hook's access
                    if grads.get(p) is not None:
                        grads.set(p, torch.zeros_like(grads.get(p)))
                player.nonfinite = "the loss"
        engine.step()
        if engine.micro_steps % engine.gradient_accumulation_steps() != 0:
            raise RuntimeError(f"{player.name}: {engine.micro_steps} backward calls are not a whole number of {engine.gradient_accumulation_steps()}-round phases")
        if self.precision != "fp16":
            return skipped
        player.nonfinite = "a gradient (fp16 overflow)"
        return torch.tensor(0.0 if engine.was_step_applied() else 1.0, device=self.device)

    def supports_second_order(self, player: Player) -> bool:
        """Not at ZeRO-3: it releases the gathered weights after each submodule's forward, and
        the second backward of a gradient penalty needs the weights its first backward saved
        (a convolution then fails on an empty weight)."""
        return self.zero_stages[player.name] != 3

    @torch.no_grad()
    def clamp_parameters(self, player: Player, bound: float) -> None:
        """Clamp the weights the optimizer updates and every copy the forwards read: the fp32
        master copy (this rank's fragment at ZeRO 1-2 and with the bf16 optimizer, its partition
        at ZeRO-3, the whole of it under ZeRO-0's fp16/bf16 optimizer), the module's weights,
        and at ZeRO-3 this rank's partition plus the parameters it keeps whole (persistent).
        Clamping is elementwise, so clamping each rank's piece clamps the whole; no collective.
        """
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        for p in player.net.parameters():
            if hasattr(p, "ds_id"):  # ZeRO-3
                master = safe_get_local_fp32_param(p)
                if master is not None:
                    safe_set_local_fp32_param(p, master.clamp(-bound, bound))
                p.ds_tensor.clamp_(-bound, bound)
            else:
                mapping = getattr(p, "_hp_mapping", None)
                if mapping is not None:
                    mapping.get_hp_fragment().clamp_(-bound, bound)
            if p.numel():  # empty between gathers at ZeRO-3, unless persistent
                p.clamp_(-bound, bound)
        # ZeRO-0 in fp16/bf16: DeepSpeed's FP16(_Unfused)_Optimizer keeps its own fp32 copies
        for name in ("fp32_groups", "fp32_groups_flat"):
            for group in getattr(player.optimizer, name, None) or []:
                for t in group if isinstance(group, (list, tuple)) else [group]:
                    t.clamp_(-bound, bound)

    @contextlib.contextmanager
    def full_parameters(self, player: Player) -> Iterator[nn.Module]:
        """Collective at ZeRO-3 (every rank must enter): the partitioned parameters are gathered
        for reading and partitioned again on exit. At ZeRO 0-2 every rank holds them already."""
        params = list(player.net.parameters())
        with self.ds.zero.GatheredParameters(params, modifier_rank=None, enabled=self.zero_stages[player.name] == 3):
            yield player.net

    def player_state(self, player: Player) -> dict:
        """A small record: the weights and optimizer state live in the engine's own folder."""
        return {"engine": "deepspeed", "zero_stage": self.zero_stages[player.name], "precision": self.precision, "tag": ENGINE_TAG}

    def save_engine_files(self, players: list[Player], folder: Path) -> None:
        """Collective: each engine writes `folder/<name>/` (DeepSpeed's layout, one file per
        rank for the ZeRO partitions); DeepSpeed waits for every rank before it returns."""
        for p in players:
            p.engine.save_checkpoint(str(Path(folder) / p.name), tag=ENGINE_TAG, client_state={})

    def load_player(self, player: Player, state: dict, folder: Path, written: Optional[int] = None) -> None:
        """Collective: restore an engine from `folder/<name>/` after checking its files (see
        `verify_deepspeed_files`). Written by another number of processes (`written`), the
        partitions are first converted to DeepSpeed's universal checkpoint, once, by rank 0
        (`folder/<name>/universal/`, beside the files it reads), and loaded from there."""
        if state.get("engine") != "deepspeed":
            raise CheckpointError(f"{folder}: {player.name} was saved by the accelerate backend; resume with backend.kind=accelerate")
        stage = self.zero_stages[player.name]
        if (state["zero_stage"], state["precision"]) != (stage, self.precision):
            raise CheckpointError(f"{folder}: {player.name} was saved at ZeRO-{state['zero_stage']} in {state['precision']} but this run uses ZeRO-{stage} in {self.precision}")
        engine_dir = Path(folder) / player.name
        saved_world = self.world_size if written is None else written
        verify_deepspeed_files(engine_dir / state["tag"], stage, saved_world)
        engine = player.engine
        # an engine that saved no optimizer partitions (ZeRO-0: every rank holds whole states in
        # mp_rank_00_model_states.pt) loads on any number of processes as it is
        partitioned = any((engine_dir / state["tag"]).glob("*optim_states.pt"))
        universal = saved_world != self.world_size and partitioned
        if universal:
            engine_dir = self._universal(engine_dir, state["tag"])
        # DeepSpeed reads this flag from its config at load time; set for this one load
        engine._config.load_universal_checkpoint = universal
        try:
            path, _ = engine.load_checkpoint(str(engine_dir), tag=state["tag"], load_optimizer_states=True, load_lr_scheduler_states=True)
        finally:
            engine._config.load_universal_checkpoint = False
        if path is None:
            raise CheckpointError(f"{engine_dir}: DeepSpeed found no checkpoint to load")

    def _universal(self, engine_dir: Path, tag: str) -> Path:
        """Collective: `engine_dir/universal/` holding `engine_dir/tag` as a universal checkpoint,
        made by rank 0 with DeepSpeed's own converter (`deepspeed.checkpoint.ds_to_universal`;
        `--inject_missing_state` supplies the layout record a Megatron client would save) unless
        an earlier resume made it. A failed conversion fails every rank."""
        import subprocess
        import sys

        out = engine_dir / "universal"
        ok = True
        if self.is_main and not (out / "latest_universal").exists():
            tmp = engine_dir / "universal.partial"
            cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(engine_dir / tag), "--output_folder", str(tmp / tag),
                   "--num_extract_workers", "1", "--num_merge_workers", "1", "--inject_missing_state"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                (tmp / "latest_universal").write_text(tag)
                tmp.rename(out)
            else:
                ok = False
                warnings.warn(f"{engine_dir}: ds_to_universal failed:\n{done.stderr[-2000:]}", stacklevel=2)
        if not self.all_ranks(ok):
            raise CheckpointError(f"{engine_dir}: converting the ZeRO partitions to a universal checkpoint failed (see the warning above on rank 0)")
        return out

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (identity on one process)."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self, wait: bool = True) -> None:
        """As under Accelerate: a barrier at a normal end, then the process group goes."""
        import torch.distributed as dist

        if dist.is_initialized():
            if wait and self.world_size > 1:
                dist.barrier()
            dist.destroy_process_group()


class _DeepSpeedGrads:
    """GradAccess through DeepSpeed's API for gradients between backward and step."""

    def get(self, param: nn.Parameter) -> Optional[torch.Tensor]:
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param)

    def set(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        from deepspeed.utils import safe_set_full_grad

        safe_set_full_grad(param, grad)


def _check_precision_supported(precision: str, accel) -> None:
    supported = {"bf16": accel.is_bf16_supported, "fp16": accel.is_fp16_supported}
    if precision in supported and not supported[precision]():
        # e.g. fp16 on most CPUs: DeepSpeed needs AVX512-FP16/AMX for it there
        raise ConfigError("train.precision", f"DeepSpeed does not support {precision} on this device ({accel.device_name()}); use {'bf16 or ' if precision == 'fp16' else ''}fp32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_config(
    name: str, opt_cfg: OptimConfig, backend_cfg: BackendConfig, train_cfg: TrainConfig, world_size: int, env: Mapping[str, str] = os.environ
) -> tuple[dict, str]:
    """(DeepSpeed config, where it came from) for player `name` ("G", "D", ...).

    The JSON named by `backend.configs.<name>` (or `backend.g_config` / `d_config`) wins, else the one `accelerate launch` passes
    (ACCELERATE_DEEPSPEED_CONFIG_FILE), else a config generated from the YAML. A JSON keeps its
    own ZeRO, optimizer and clipping settings; missing or "auto" keys are filled from the YAML.
    Batch sizes and precision must agree with `train.*`, which the loop follows.
    """
    micro, rounds = split_batch(train_cfg, world_size)
    key, path = player_config_path(backend_cfg, name)
    if not path and env.get(ACCELERATE_DS_CONFIG_FILE):
        key, path = ACCELERATE_DS_CONFIG_FILE, env[ACCELERATE_DS_CONFIG_FILE]
    if path:
        cfg = _read_json(key, path)
    else:
        key, cfg = "backend.zero_stage", {"zero_optimization": {"stage": backend_cfg.zero_stage}}
        launcher_stage = env.get(ACCELERATE_DS_ZERO_STAGE)
        if launcher_stage not in (None, "", str(backend_cfg.zero_stage)):
            raise ConfigError("backend.zero_stage", f"is {backend_cfg.zero_stage} but accelerate launch asks for ZeRO-{launcher_stage} ({ACCELERATE_DS_ZERO_STAGE}); make them agree")
    for ds_key, want, yaml_key in (
        ("train_batch_size", train_cfg.batch_size, "train.batch_size"),
        ("train_micro_batch_size_per_gpu", micro, "train.micro_batch"),
        ("gradient_accumulation_steps", rounds, "accumulation rounds (train.batch_size / micro_batch / world size)"),
    ):
        got = cfg.get(ds_key, "auto")
        if got == "auto":
            cfg[ds_key] = want
        elif got != want:
            raise ConfigError(key, f"{ds_key} {got} != {yaml_key} {want}")
    for section in ("bf16", "fp16"):
        wanted = train_cfg.precision == section
        block = dict(cfg.get(section) or {})
        enabled = block.get("enabled", "auto")
        if enabled == "auto":
            block["enabled"] = wanted
        elif bool(enabled) != wanted:
            raise ConfigError(key, f"{section}.enabled is {str(enabled).lower()} but train.precision is {train_cfg.precision}")
        if section == "fp16" and wanted:
            block = {**FP16_LOSS_SCALING, **block}
        cfg[section] = block
    clip = cfg.get("gradient_clipping", "auto")
    if clip == "auto":
        cfg["gradient_clipping"] = opt_cfg.grad_clip
    elif opt_cfg.grad_clip > 0 and float(clip) != opt_cfg.grad_clip:
        raise ConfigError(key, f"gradient_clipping {clip} != optim.{name.lower()}.grad_clip {opt_cfg.grad_clip}")
    zero = cfg.setdefault("zero_optimization", {"stage": backend_cfg.zero_stage})
    if zero.get("stage", 0) not in (0, 1, 2, 3):
        raise ConfigError(key, f"zero_optimization.stage {zero.get('stage')!r} is not one of 0, 1, 2, 3")
    if "optimizer" not in cfg:
        cfg.setdefault("zero_allow_untested_optimizer", True)  # our client RMSprop/SGD are fine under ZeRO
    cfg.setdefault("steps_per_print", None)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg, key


def player_config_path(backend_cfg: BackendConfig, name: str) -> tuple[str, str]:
    """(config key, path) of the DeepSpeed JSON named for player `name`: `backend.configs.<name>`,
    or for G and D the older `backend.g_config` / `backend.d_config`; the path may be ""."""
    lower = name.lower()
    if backend_cfg.configs.get(lower):
        return f"backend.configs.{lower}", backend_cfg.configs[lower]
    legacy = getattr(backend_cfg, f"{lower}_config", "") if lower in ("g", "d") else ""
    return f"backend.{lower}_config", legacy or ""


def _read_json(key: str, path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(key, f"{path}: DeepSpeed config file not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(key, f"{path}: not a readable JSON file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(key, f"{path}: must hold a JSON object")
    return data


def _deepspeed_safe_globals() -> list:
    """The few DeepSpeed classes its checkpoint files pickle (next to tensors and plain data)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def verify_deepspeed_files(folder: Path, zero_stage: Optional[int] = None, world_size: int = 1) -> None:
    """Refuse a DeepSpeed checkpoint folder unless it holds every file an engine at
    `zero_stage` with `world_size` ranks wrote (when given) and each of its .pt files loads with
    `torch.load(weights_only=True)` allowing only `_deepspeed_safe_globals()`.

    Every rank checks every file, so on a shared filesystem all ranks reach the same verdict
    before any of them enters DeepSpeed's loading (which has collectives). DeepSpeed itself
    loads the files with weights_only=False; after this check nothing in them can name other
    code to run (a bounded departure from docs/design.md, "Checkpoints"; see docs/deepspeed.md).
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise CheckpointError(f"{folder}: no DeepSpeed checkpoint files; the checkpoint is incomplete")
    if zero_stage is not None:
        names = {p.name for p in files}
        model = ["mp_rank_00_model_states.pt"] if zero_stage < 3 else [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)]
        required = [(name,) for name in model]
        if zero_stage > 0:  # one optimizer partition per rank (bf16_ prefix with the bf16 optimizer)
            required += [(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt") for r in range(world_size)]
        for options in required:
            if not names.intersection(options):
                raise CheckpointError(f"{folder / options[0]}: file missing; the checkpoint is incomplete")
    allowed = _deepspeed_safe_globals()
    with torch.serialization.safe_globals(allowed):
        for path in files:
            if not zipfile.is_zipfile(path):  # torch.save writes zip archives
                raise CheckpointError(f"{path}: refusing to load this DeepSpeed file (not a PyTorch checkpoint: corrupt or truncated)")
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # an unlisted global, or a corrupt file
                raise CheckpointError(f"{path}: refusing to load this DeepSpeed file ({_why_unsafe(path, allowed, exc)})") from None


def _why_unsafe(path: Path, allowed: list, exc: Exception) -> str:
    names = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    try:
        unlisted = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - names)
    except Exception:  # not even a readable pickle
        unlisted = []
    if unlisted:
        return f"it names {', '.join(unlisted)}, which bigtrain does not allow in checkpoints"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def deepspeed_weights(engine_dir: Path, state: dict) -> dict[str, torch.Tensor]:
    """Plain fp32 state dict (parameters and buffers) of one player from its DeepSpeed folder.

    ZeRO 1-3: DeepSpeed's zero_to_fp32 joins the partitions (the fp32 master weights). ZeRO-0
    has one file holding the module's weights as trained (bf16 weights under bf16). Needs no
    process group.
    """
    tag_dir = Path(engine_dir) / state["tag"]
    verify_deepspeed_files(tag_dir)
    try:
        if state["zero_stage"] == 0:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                weights = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress output
                weights = get_fp32_state_dict_from_zero_checkpoint(str(engine_dir), tag=state["tag"])
    except (OSError, KeyError, ValueError, RuntimeError) as exc:  # missing or mismatched partition files
        text = str(exc).strip()
        raise CheckpointError(f"{tag_dir}: cannot read the weights from DeepSpeed's files ({text.splitlines()[0] if text else type(exc).__name__})") from None
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous() for k, v in weights.items()}


# ---- shared -------------------------------------------------------------------------------


def _nonfinite_gradients(player: Player, finite_loss: torch.Tensor) -> torch.Tensor:
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


def _name_nonfinite(player: Player, finite_loss: torch.Tensor) -> str:
    """What made a step non-finite (called only on a skip): the loss, or the first parameter
    with a non-finite gradient."""
    if not finite_loss.item():
        return "the loss"
    bad = next((n for n, p in player.net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()), None)
    return f"the gradient of {bad}"


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


def build_backend(backend_cfg: BackendConfig, train_cfg: TrainConfig) -> Backend:
    """The backend named by `backend.kind`."""
    if backend_cfg.kind == "deepspeed":
        return DeepSpeedBackend(backend_cfg, train_cfg)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ConfigError("backend.kind", "is accelerate but accelerate launch was given a DeepSpeed config; set backend.kind=deepspeed")
    return AccelerateBackend(backend_cfg, train_cfg)
