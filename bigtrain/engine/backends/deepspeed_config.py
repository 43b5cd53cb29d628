"""Each DeepSpeed engine's JSON config: generated from the YAML (batch, accumulation,
precision, clipping, the optimizer) or read from the player's own JSON, checked against the
YAML where both say something (docs/deepspeed.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
from bigtrain.engine.backends.base import split_batch
from bigtrain.errors import ConfigError

ACCELERATE_DS_CONFIG_FILE = "ACCELERATE_DEEPSPEED_CONFIG_FILE"  # set by `accelerate launch`
ACCELERATE_DS_ZERO_STAGE = "ACCELERATE_DEEPSPEED_ZERO_STAGE"
# Mirrors torch.amp.GradScaler's defaults, so fp16 behaves alike under both backends.
FP16_LOSS_SCALING = {
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 2000,
    "hysteresis": 1,
    "min_loss_scale": 1,
}


def deepspeed_config(
    name: str,
    opt_cfg: OptimConfig,
    backend_cfg: BackendConfig,
    train_cfg: TrainConfig,
    world_size: int,
    env: Mapping[str, str] = os.environ,
) -> tuple[dict, str]:
    """(DeepSpeed config, where it came from) for player `name` ("G", "D", ...).

    The JSON named by `backend.configs.<name>` (or `backend.g_config` / `d_config`) wins, else the one
    `accelerate launch` passes
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
            raise ConfigError(
                "backend.zero_stage",
                f"is {backend_cfg.zero_stage} but accelerate launch asks for ZeRO-{launcher_stage} "
                f"({ACCELERATE_DS_ZERO_STAGE}); make them agree",
            )
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
            raise ConfigError(
                key, f"{section}.enabled is {str(enabled).lower()} but train.precision is {train_cfg.precision}"
            )
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
