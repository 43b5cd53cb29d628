"""Run by torchrun in the distributed tests: train, then compare parameters across ranks.

usage: worker.py CONFIG.yaml OUT.pt [key=value ...]
"""
import sys

import torch
import torch.distributed as dist

from bigtrain.cli import leave_process
from bigtrain.families import load_config
from bigtrain.engine.loop import Trainer


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[3:])
    trainer = Trainer(cfg)
    initial = torch.cat([p.detach().flatten() for player in trainer.players.values() for p in player.net.parameters()])
    trainer.train()
    world = trainer.backend.world_size
    assert world == 2 and dist.get_world_size() == 2, f"expected 2 processes, got {world}"
    flat = torch.cat([p.detach().flatten() for player in trainer.players.values() for p in player.net.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    # the floating buffers and the recipe's global state (ADA's p, a path-length mean, ...), which
    # each rank holds itself: identical too
    held = [b.detach().float().flatten() for player in trainer.players.values() for b in player.net.buffers() if b.is_floating_point()]
    held += [v.detach().float().flatten() for v in trainer.recipe.state_dict().values() if torch.is_tensor(v)]
    state = torch.cat(held) if held else torch.zeros(1)
    states = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(states, state)
    if trainer.backend.rank == 0:
        torch.save(
            {
                "params": flat,
                "initial": initial,
                "max_rank_diff": max(float((everyone[0] - other).abs().max()) for other in everyone[1:]),
                "max_state_diff": max(float((states[0] - other).abs().max()) for other in states[1:]),
                "world_size": world,
                "rounds": trainer.backend.rounds,
                "micro_batch": trainer.backend.micro_batch,
                "step": trainer.counters.step,
            },
            sys.argv[2],
        )
    trainer.backend.close()


if __name__ == "__main__":
    main()
    leave_process(0)  # as the CLI does: no interpreter teardown racing gloo's threads
