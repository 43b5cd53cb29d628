"""Run by torchrun in the DeepSpeed tests: several training runs in one launch (each launch
costs seconds of start-up), each followed by checks that need the live engines.

usage: ds_worker.py RUNS.json OUT_DIR
RUNS.json: [{"name": str, "config": path, "overrides": [key=value, ...]}, ...]
For each run, rank 0 writes OUT_DIR/<name>.pt with the full parameters after training (flat,
per player), their largest difference across ranks, the engines' parameter dtype, the samples
of G and G_ema, and what one extra G step did to D.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bigtrain.families import load_config
from bigtrain import sampling
from bigtrain.engine.loop import Trainer

NUM_SAMPLES = 8
SAMPLE_SEED = 3


class NullTracker:
    def report(self, name, value) -> None:
        pass


def flat_params(trainer, player) -> torch.Tensor:
    """Every parameter of a player, gathered (collective under ZeRO-3), as one fp32 vector."""
    with trainer.backend.full_parameters(player) as net:
        return torch.cat([p.detach().float().flatten() for p in net.parameters()])


def max_rank_diff(flat: torch.Tensor) -> float:
    everyone = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, flat)
    return max(float((everyone[0] - other).abs().max()) for other in everyone[1:])


def samples(trainer, G) -> torch.Tensor:
    cfg = trainer.cfg.model
    x, _ = sampling.generate(G, z_dim=cfg.z_dim, num_classes=cfg.num_classes, indices=range(NUM_SAMPLES), seed=SAMPLE_SEED, device=trainer.backend.device)
    return sampling.to_uint8(x)


def master_abs_max(trainer, player) -> float:
    """Largest |w| of the weights the optimizer updates: DeepSpeed's fp32 master copy where it
    keeps one (collective at ZeRO 1-3), else the module's own parameters."""
    from_master = []
    if trainer.backend.__class__.__name__ == "DeepSpeedBackend":
        from deepspeed.utils import safe_get_full_fp32_param

        from_master = [safe_get_full_fp32_param(p) for p in player.net.parameters()]
        if any(m is None for m in from_master):  # ZeRO-0 in bf16/fp16: FP16_UnfusedOptimizer's copies
            from_master = [t for group in getattr(player.optimizer, "fp32_groups", []) for t in group]
    if not from_master or any(m is None for m in from_master):
        from_master = [p.detach() for p in player.net.parameters()]
    return max(float(m.abs().max()) for m in from_master)


def module_abs_max_after_d_step(trainer) -> float:
    """One more D phase, no checkpoint after it: the largest |w| the next forward would use, read
    from the module without gathering (ZeRO-3 placeholders are empty, persistent parameters whole)."""
    d_phase = next(p for p in trainer.recipe.phases if p.updates == ("D",))
    trainer.run_phase(d_phase, NullTracker())
    return max((float(p.detach().abs().max()) for p in trainer.players["D"].net.parameters() if p.numel()), default=0.0)


def g_step_leaves_d_alone(trainer) -> dict:
    """One more G phase: D's parameters must not move, nor get gradients."""
    g_phase = next(p for p in trainer.recipe.phases if p.updates == ("G",))
    d_before, g_before = flat_params(trainer, trainer.players["D"]), flat_params(trainer, trainer.players["G"])
    trainer.run_phase(g_phase, NullTracker())
    d_after, g_after = flat_params(trainer, trainer.players["D"]), flat_params(trainer, trainer.players["G"])
    return {
        "d_unchanged": bool(torch.equal(d_before, d_after)),
        "d_grads_none": all(p.grad is None for p in trainer.players["D"].net.parameters()),
        "g_moved": float((g_after - g_before).abs().max()),
    }


def run(spec: dict, out_dir: Path) -> None:
    cfg = load_config(spec["config"], spec.get("overrides", []))
    trainer = Trainer(cfg)
    initial = torch.cat([flat_params(trainer, p) for p in trainer.players.values()])
    trainer.train()
    assert trainer.backend.world_size == 2 and dist.get_world_size() == 2
    params = {p.name: flat_params(trainer, p) for p in trainer.players.values()}
    flat = torch.cat(list(params.values()))
    result = {
        "backend": type(trainer.backend).__name__,
        "params": params,
        "initial": initial,
        "max_rank_diff": max_rank_diff(flat),
        "dtype": str(next(trainer.players["G"].engine.parameters()).dtype),
        # ZeRO-3 leaves empty placeholders in the modules between gathers
        "partitioned": all(p.numel() < getattr(p, "ds_numel", p.numel()) for player in trainer.players.values() for p in player.net.parameters()),
        "rounds": trainer.backend.rounds,
        "step": trainer.counters.step,
        # every rank runs G (ZeRO-3 gathers its parameters in the forward), rank 0 keeps it
        "samples_G": samples(trainer, trainer.players["G"].net) if trainer.cfg.train.precision == "fp32" else None,
        "samples_G_ema": samples(trainer, trainer.emas["G"].module) if "G" in trainer.emas else None,
    }
    result["d_master_abs_max"] = master_abs_max(trainer, trainer.players["D"])
    result.update(g_step_leaves_d_alone(trainer))
    result["d_module_abs_max_after_step"] = module_abs_max_after_d_step(trainer)
    if dist.get_rank() == 0:
        torch.save(result, out_dir / f"{spec['name']}.pt")
    dist.barrier()


def main() -> None:
    specs = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[2])
    for spec in specs:
        run(spec, out_dir)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from bigtrain.cli import leave_process

    leave_process(0)  # as the CLI does: no interpreter teardown racing gloo's threads
