"""The DeepSpeed backend: every player is its own engine from `deepspeed.initialize`, with its
own config (ZeRO stage, clipping, fp16 loss scaler). deepspeed is imported here only, lazily:
the Accelerate path never needs it installed. Its JSON configs come from deepspeed_config.py,
its checkpoint files are checked by deepspeed_files.py."""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from pathlib import Path
from typing import ContextManager, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
from bigtrain.engine.backends.base import Backend, BeforeStep, split_batch
from bigtrain.engine.backends.deepspeed_config import deepspeed_config
from bigtrain.engine.backends.deepspeed_files import ENGINE_TAG, verify_deepspeed_files
from bigtrain.engine.players import Player, build_optimizer
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.families.base import EngineCaps


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
        if on_cpu:
            _skip_shared_memory_op(deepspeed)
        if "RANK" not in os.environ and not dist.is_initialized():  # no launcher: a group of one process
            for key, value in {
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()),
            }.items():
                os.environ.setdefault(key, value)
        self.local_rank: int = int(os.environ.get("LOCAL_RANK", 0))
        if on_cpu:
            self.device = torch.device("cpu")
        else:  # the device first, so that NCCL binds each process to its own GPU
            accel.set_device(self.local_rank)
            self.device = torch.device(accel.device_name(self.local_rank))
        if not dist.is_initialized():
            deepspeed.init_distributed(
                dist_backend="gloo" if on_cpu else accel.communication_backend_name(), verbose=False
            )
        self.rank: int = dist.get_rank()
        self.world_size: int = dist.get_world_size()
        self.is_main: bool = self.rank == 0
        self.micro_batch, self.rounds = split_batch(train_cfg, self.world_size)
        self.zero_stages: dict[str, int] = {}
        self.engines: list = []

    def capabilities(self, name: str, opt_cfg: OptimConfig) -> EngineCaps:
        """From the ZeRO stage the player's DeepSpeed config will have: at ZeRO-3 no rank holds a
        whole weight, and no second backward (see supports_second_order); no engine can clear its
        partitioned optimizer state."""
        ds_config, _ = deepspeed_config(name, opt_cfg, self.backend_cfg, self.train_cfg, self.world_size, self.env)
        stage = int(ds_config["zero_optimization"].get("stage", 0))
        return EngineCaps(
            engine=f"DeepSpeed ZeRO-{stage}", second_order=stage != 3, whole_weights=stage != 3, resets_optimizer=False
        )

    def reset_optimizer(self, player: Player) -> None:
        raise RuntimeError(
            f"resetting {player.name}'s optimizer state is not possible under DeepSpeed (its ZeRO partitions hold it); "
            "Recipe.check_engine should have refused this run"
        )

    def make_player(
        self,
        name: str,
        net: nn.Module,
        opt_cfg: OptimConfig,
        *,
        local_buffers: Sequence[str] = (),
        unused_parameters: bool = False,
    ) -> Player:
        """Wrap `net` in its own DeepSpeed engine; the optimizer is built from `optim.<name>`
        (exactly as under Accelerate) unless the player's DeepSpeed JSON names one. DeepSpeed
        broadcasts no buffer before a forward and tolerates unused parameters, so the two
        keywords need nothing here."""
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
        return Player(
            name=name,
            net=engine.module,
            engine=engine,
            optimizer=optimizer,
            scaler=None,
            grad_clip=float(ds_config.get("gradient_clipping", 0.0)),
            base_lr=lr,
            backend=self,
        )

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

    def step(
        self, player: Player, before_step: BeforeStep = None, finite_loss: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]:
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
            raise RuntimeError(
                f"{player.name}: {engine.micro_steps} backward calls are not a whole number of "
                f"{engine.gradient_accumulation_steps()}-round phases"
            )
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
        return {
            "engine": "deepspeed",
            "zero_stage": self.zero_stages[player.name],
            "precision": self.precision,
            "tag": ENGINE_TAG,
        }

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
            raise CheckpointError(
                f"{folder}: {player.name} was saved by the accelerate backend; resume with backend.kind=accelerate"
            )
        stage = self.zero_stages[player.name]
        if (state["zero_stage"], state["precision"]) != (stage, self.precision):
            raise CheckpointError(
                f"{folder}: {player.name} was saved at ZeRO-{state['zero_stage']} in {state['precision']} but this run "
                f"uses ZeRO-{stage} in {self.precision}"
            )
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
            path, _ = engine.load_checkpoint(
                str(engine_dir), tag=state["tag"], load_optimizer_states=True, load_lr_scheduler_states=True
            )
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
            cmd = [
                sys.executable,
                "-m",
                "deepspeed.checkpoint.ds_to_universal",
                "--input_folder",
                str(engine_dir / tag),
                "--output_folder",
                str(tmp / tag),
                "--num_extract_workers",
                "1",
                "--num_merge_workers",
                "1",
                "--inject_missing_state",
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                (tmp / "latest_universal").write_text(tag)
                tmp.rename(out)
            else:
                ok = False
                warnings.warn(f"{engine_dir}: ds_to_universal failed:\n{done.stderr[-2000:]}", stacklevel=2)
        if not self.all_ranks(ok):
            raise CheckpointError(
                f"{engine_dir}: converting the ZeRO partitions to a universal checkpoint failed (see the warning above "
                "on rank 0)"
            )
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


def _skip_shared_memory_op(deepspeed) -> None:
    """On the CPU accelerator, DeepSpeed's communication backend compiles its shared-memory
    all-reduce (a C++ op, about 2 minutes on a fresh machine, into ~/.cache/torch_extensions) when
    the process group starts. Only inference's all-reduce uses it; training's collectives are
    gloo's. Marking it incompatible skips the build, and with it the wait forever on the build's
    lock file that a killed first start leaves behind (seen here). BIGTRAIN_DS_SHM_OP=1 keeps it."""
    if os.environ.get("BIGTRAIN_DS_SHM_OP") == "1":
        return
    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def _check_precision_supported(precision: str, accel) -> None:
    supported = {"bf16": accel.is_bf16_supported, "fp16": accel.is_fp16_supported}
    if precision in supported and not supported[precision]():
        # e.g. fp16 on most CPUs: DeepSpeed needs AVX512-FP16/AMX for it there
        raise ConfigError(
            "train.precision",
            f"DeepSpeed does not support {precision} on this device ({accel.device_name()}); use "
            f"{'bf16 or ' if precision == 'fp16' else ''}fp32",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
