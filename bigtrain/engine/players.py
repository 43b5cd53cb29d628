"""Players (one network + its optimizer + its loss scaler) and the EMA of a player's weights."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

from bigtrain.config import EmaConfig, OptimConfig


@dataclass
class Player:
    name: str  # "G", "D", "D2", ... (also the key of its state in checkpoints)
    net: nn.Module  # the plain module: frozen forwards, EMA, saving
    engine: nn.Module  # what the backend trains through (DDP wrapper, DeepSpeed engine, or net)
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler] = None  # fp16 only; one per player
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    base_lr: float = 0.0  # optim.<name>.lr: the schedule's factors multiply it
    nonfinite: Any = None  # what was non-finite at the last skip: a text, or (deferred) a NONFINITE_WHAT code
    deferred_guard: bool = False  # fused: the optimizer skips non-finite steps on the device, flags read at logs
    backend: Any = None  # the backend that made it (differentiable_forward goes through it)
    _trainable: Optional[list[bool]] = None  # requires_grad of each parameter while frozen

    def differentiable_forward(
        self, *inputs: Any, anchor: bool = False, **options: Any
    ) -> tuple[Any, Optional[torch.Tensor]]:
        """Outputs for a loss through input gradients (Backend.differentiable_forward)."""
        return self.backend.differentiable_forward(self, *inputs, anchor=anchor, **options)

    def freeze(self) -> None:
        """Stop gradients into this player's parameters, remembering which ones had them."""
        params = list(self.net.parameters())
        self._trainable = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)

    def unfreeze(self) -> None:
        """Give back gradients to exactly the parameters that had them before `freeze` (a
        sub-network meant to stay frozen stays frozen)."""
        for p, trainable in zip(self.net.parameters(), self._trainable or []):
            p.requires_grad_(trainable)
        self._trainable = None


FUSED_OPTIMIZERS = ("adam", "sgd")  # torch has fused kernels for these, which can skip a step on the device


def uses_fused(cfg: OptimConfig, device: torch.device) -> bool:
    """`optim.<player>.fused`, where null means: on CUDA, for an optimizer that has a kernel."""
    if cfg.fused is None:
        return device.type == "cuda" and cfg.type in FUSED_OPTIMIZERS
    return cfg.fused


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by `optim.<player>.type`; `fused`: torch's fused kernel (adam, sgd),
    which takes a found-inf flag and skips the step on the device (docs/design.md, "Non-finite guard")."""
    params = list(params)
    extra = {"fused": True} if fused else {}
    if cfg.type == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, **extra
        )
    if cfg.type == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.type == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **extra)
    raise ValueError(f"unknown optimizer {cfg.type!r}")


def ema_beta(cfg: EmaConfig, nimg: int, batch_size: int) -> float:
    """Decay per update so that old weights' share halves every `half_life_kimg` images.

    With `rampup`, the half-life is at most rampup x images seen, so the average forgets the
    random initialisation quickly early in training (stylegan2-ada's ramp-up). `decay` fixes
    beta instead (BigGAN's 0.9999 per update, whatever the batch); before `start_kimg`, beta is 0.
    """
    if nimg < cfg.start_kimg * 1000:
        return 0.0  # before ema.start_kimg the average is a copy (BigGAN-PyTorch's ema_start)
    if cfg.decay is not None:
        return cfg.decay
    half_life = cfg.half_life_kimg * 1000
    if cfg.rampup is not None:
        half_life = min(half_life, nimg * cfg.rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


class EMA:
    """A frozen copy of a player (G) whose parameters track an exponential moving average."""

    def __init__(self, net: nn.Module, cfg: EmaConfig):
        self.cfg = cfg
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        for module in self.module.modules():
            if getattr(module, "cross_replica", False):
                # the copy's statistics are its own: it samples on one rank (standing statistics
                # included), where a cross-replica all-reduce would wait for ranks that never come
                module.cross_replica = False

    @torch.no_grad()
    def update(self, net: nn.Module, nimg: int, batch_size: int) -> float:
        """Blend the player's current weights in (buffers such as BN statistics are copied);
        returns beta."""
        beta = ema_beta(self.cfg, nimg, batch_size)
        ema_params = list(self.module.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(net.parameters(), ema_params)]
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)  # e = beta*e + (1-beta)*p
        for b_ema, b in zip(self.module.buffers(), net.buffers()):
            b_ema.copy_(b)
        return beta

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
