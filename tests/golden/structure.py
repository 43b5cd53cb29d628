"""What a golden case's own nets say about its tensors, for the check on another machine
(harness.compare): which parameters and buffers there are, how far each player's optimizer can
move one element over the run (its reach), and which tensors have a structurally zero gradient:
Adam turns their last-bit gradient noise into steps of +-lr, so nothing but reach bounds how far
two machines take them apart.

`structure` builds the nets from the recorded config (the last `bigtrain train` of its stages)
and measures them in float64 (float32 where a net keeps parts in float32): no list of names to
keep up to date with the architectures.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from types import SimpleNamespace
from typing import NamedTuple

import torch

from tests.conftest import REPO
from tests.golden.cases import DATA

ZERO_GRADIENT = 1e-10  # a parameter's largest float64 gradient below this fraction of its net's largest is ~0
ZERO_GRADIENT_FP32 = 1e-5  # the same in float32
PERTURB = 0.05  # the probe's nets have this much noise added to every parameter
SHIFTED = 1e-3  # a buffer that moves less than this when the zero-gradient parameters move by 1 does not follow them
RMSPROP_ALPHA = 0.99  # torch's default, which bigtrain keeps: RMSprop's first steps are up to 1/sqrt(1 - alpha) lr


class Structure(NamedTuple):
    """What a recorded run's config says about its tensors, for the check on another machine.
    Keys are "<player>/<state_dict key>"; an EMA copy (<player>_ema) is looked up as its player."""

    reach: dict[str, float]  # player -> how far its optimizer can move one element over the run
    params: frozenset[str]  # the players' parameters
    buffers: frozenset[str]  # the players' float buffers
    drift_gain: dict[str, float]  # the zero-gradient parameters (gain: numel) and the buffers they shift (gain
    # measured: the summed shift of the buffer's elements when every such parameter element moves by 1)


def _reach(optim, updates: int) -> float:
    """How far `updates` steps of the optimizer `optim` can move one element whatever its gradient:
    Adam's bias-corrected step is about lr at most, RMSprop's about lr / sqrt(1 - alpha^t) at step
    t. SGD's step is lr x gradient, so noise gradients stay noise: 0 (nothing is loosened)."""
    if optim.type == "adam":
        return optim.lr * updates
    if optim.type == "rmsprop":
        return optim.lr * sum((1 - RMSPROP_ALPHA**t) ** -0.5 for t in range(1, updates + 1))
    return 0.0


def _load_stages_config(stages: list[list[str]]):
    """The config the last `bigtrain train` of `stages` trained with (None: not a train command)."""
    from bigtrain.families import load_config

    args = stages[-1] if stages else []
    if len(args) < 2 or args[0] != "train":
        return None
    # the only config under $DATA is make_data's defaults.yaml, an empty YAML: the defaults
    path = None if args[1].startswith(DATA) else REPO / args[1]
    return load_config(path, args[2:])


def _probe_inputs(net: torch.nn.Module, cfg, info, dtype: torch.dtype) -> tuple | None:
    """Inputs `net` takes, tried as the nets of bigtrain.families take them: latents (+ labels) for a
    G, images (+ labels) for a D, images alone, a pair of images (CycleGAN's two generators), the
    first half of paired images' channels (Pix2Pix's G); None when none runs."""
    n, classes = 8, cfg.model.num_classes
    y = torch.arange(n) % classes if classes else None
    z = torch.randn(n, cfg.model.z_dim, dtype=dtype)  # [n, z_dim]
    x = torch.randn(n, *info.shape, dtype=dtype)  # [n, C, H, W] or [n, D]
    for inputs in ((z, y), (x, y), (x,), (x, x), (x[:, : max(1, x.shape[1] // 2)],)):
        try:
            with torch.no_grad():
                out = _outputs(net(*inputs))
        except Exception:  # noqa: BLE001 -- any failure just means: not this signature
            continue
        if out:
            return inputs
    return None


def _outputs(out) -> list[torch.Tensor]:
    """A net's output tensors (one, a tuple or a dict of them); [] for anything else."""
    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]
    return outs if outs and all(torch.is_tensor(o) and o.is_floating_point() for o in outs) else []


def _zero_gradient(net: torch.nn.Module, inputs: tuple, threshold: float) -> list[str]:
    """The parameters whose gradient is ~0 for any objective in training mode: a bias that only
    adds a per-channel constant before a batch norm, which subtracts it again. Two random batches
    and objectives; such a gradient is the rounding of that subtraction, ~1e-16 of the net's
    largest in float64 (~3e-7 in float32), every other one of the golden nets' above 1e-4. A
    gradient of exactly 0 is a parameter this forward does not use (a growing net's later
    blocks), not one of these."""
    largest = {name: 0.0 for name, _ in net.named_parameters()}
    for _ in range(2):
        net.zero_grad()
        batch = tuple(torch.randn_like(t) if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs)
        sum((o * torch.randn_like(o)).sum() for o in _outputs(net(*batch))).backward()
        for name, p in net.named_parameters():
            if p.grad is not None:
                largest[name] = max(largest[name], p.grad.abs().max().item())
    top = max(largest.values(), default=0.0)
    return [name for name, g in largest.items() if 0.0 < g <= threshold * top]


def _shifted_buffers(net: torch.nn.Module, inputs: tuple, zero: list[str]) -> dict[str, float]:
    """The float buffers that a move of the zero-gradient parameters shifts (a batch norm's running
    mean after them), with the summed shift of their elements when every element of those
    parameters moves by 1. Batch norms take the whole batch mean (momentum 1) for this."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    params = dict(net.named_parameters())
    start = copy.deepcopy(net.state_dict())
    after = []
    with torch.no_grad():
        for shift in (0.0, 1.0):
            net.load_state_dict(start)
            for name in zero:
                params[name].add_(shift)
            net(*inputs)
            state = net.state_dict()
            after.append({k: v.clone() for k, v in state.items() if k not in params and v.is_floating_point()})
    gains = {k: (after[1][k] - after[0][k]).abs().sum().item() for k in after[0]}
    return {k: g for k, g in gains.items() if g > SHIFTED}


def _drift_gains(net: torch.nn.Module, cfg, info) -> dict[str, float]:
    """`net`'s zero-gradient parameters (gain: their numel) and the buffers they shift (gain: see
    _shifted_buffers), probed on a copy in float64, or float32 where a net keeps parts in float32
    (BigGAN's batch norms); {} for a net that takes none of the probe's inputs."""
    for dtype, threshold in ((torch.float64, ZERO_GRADIENT), (torch.float32, ZERO_GRADIENT_FP32)):
        probe = copy.deepcopy(net).to(dtype).train()
        with torch.no_grad():  # away from special initial values: a zero attention gain blocks its branch's gradients
            for p in probe.parameters():
                p.add_(torch.randn_like(p), alpha=PERTURB)
        inputs = _probe_inputs(probe, cfg, info, dtype)
        if inputs is not None:
            zero = _zero_gradient(probe, inputs, threshold)
            params = dict(probe.named_parameters())
            return {**{k: float(params[k].numel()) for k in zero}, **_shifted_buffers(probe, inputs, zero)}
    return {}


@functools.lru_cache(maxsize=None)
def _structure(stages_json: str, steps: int) -> Structure | None:
    from bigtrain.data import assumed_info
    from bigtrain.families import build_recipe

    cfg = _load_stages_config(json.loads(stages_json))
    if cfg is None:
        return None
    info = assumed_info(cfg.data, cfg.model.num_classes)  # names and structure do not depend on the data's size
    recipe = build_recipe(cfg, info)
    specs = recipe.players()
    reach, params, buffers, gains = {}, set(), set(), {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = {spec.name: spec.build() for spec in specs}
        # the recipe's own phases say how often each player steps
        recipe.bind({name: SimpleNamespace(name=name, net=net, engine=net) for name, net in nets.items()},
                    lambda t: t, cfg.train.micro_batch or cfg.train.batch_size)
        for spec in specs:
            net = nets[spec.name]
            updates = sum(p.repeats * math.ceil(steps / p.interval) for p in recipe.phases if spec.name in p.updates)
            reach[spec.name] = _reach(spec.optim, updates)
            params |= {f"{spec.name}/{k}" for k, _ in net.named_parameters()}
            buffers |= {f"{spec.name}/{k}" for k, v in net.state_dict().items() if v.is_floating_point()}
            gains |= {f"{spec.name}/{k}": g for k, g in _drift_gains(net, cfg, info).items()}
    return Structure(reach, frozenset(params), frozenset(buffers - params), gains)


def structure(record: dict) -> Structure | None:
    """The players' reach, parameters, buffers and zero-gradient tensors of a recorded run, from
    the nets its config builds (None for a record without a `bigtrain train` stage)."""
    return _structure(json.dumps(record["stages"]), record["counters"]["step"])
