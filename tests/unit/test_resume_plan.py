"""Resume restores the schedule's plan exactly (issue 23 point 4): a run resumed at ANY iteration
boundary of a schedule with a warm-up, a step decay, a linear decay, a batch change and (ProGAN)
a fade, a resolution change and per-resolution learning rates and micro-batches logs the same
losses and learning rates at every later step, and ends with the same weights, as the
uninterrupted run. Before the fix a run resumed inside a warm-up kept the warm-up's last rate
for the rest of training (the first plan after a restore was compared with the configured base
rate, not with what the restored optimizer held)."""
import json

import pytest
import torch

from bigtrain.families import config_from_dict
from bigtrain.engine.loop import Trainer
from tests.conftest import run_cli, tiny_config, write_config, write_images_npz

KEYS = ("loss/D", "loss/G", "lr/G", "lr/D")
# batch 16 for 6 iterations, then 32 for 4: 0.224 kimg; a checkpoint after every iteration
GAN_SCHEDULE = {
    "lr": {"g": {"shape": "step", "warmup_kimg": 0.08, "milestones_kimg": [0.128], "gamma": 0.5},
           "d": {"shape": "linear", "start_kimg": 0.064, "end_kimg": 0.16, "final": 0.25}},
    "batch": [[0.096, 32]],
}
GAN_ITERATIONS = 10


def _gan_cfg(tmp_path, name: str, **train) -> dict:
    data = tmp_path / "d.npz"
    if not data.exists():
        write_images_npz(data, n=64, res=8)
    return tiny_config(tmp_path, data, run={"name": name, "out_dir": str(tmp_path / "runs"), "seed": 5},
                       train={"total_kimg": 0.224, "batch_size": 16, "micro_batch": 8, **train}, schedule=GAN_SCHEDULE,
                       log={"every_kimg": 0.016, "samples_every_kimg": 1.0, "progress_bar": False},
                       checkpoint={"every_kimg": 0.016, "keep_last": 100})


def _progan_cfg(tmp_path, name: str, **train) -> dict:
    """4x4 for 2 iterations, the fade to 8x8 over 2, 8x8 for 2, the fade to 16x16 over 2, 16x16
    for 2; learning rates and micro-batches by resolution."""
    data = tmp_path / "d16.npz"
    if not data.exists():
        write_images_npz(data, n=64, res=16)
    phase = 2 * 16 / 1000
    net = {"arch": "progan", "fmap_base": 64, "fmap_max": 16}
    cfg = tiny_config(tmp_path, data, data={"resolution": 16}, run={"name": name, "out_dir": str(tmp_path / "runs"), "seed": 3},
                      model={"z_dim": 8, "g": net, "d": net}, loss={"type": "wgan", "gp_weight": 10.0},
                      train={"total_kimg": 5 * phase, "batch_size": 16, "micro_batch": 0, **train},
                      backend={"find_unused_parameters": True}, checkpoint={"every_kimg": 0.016, "keep_last": 100},
                      log={"every_kimg": 0.016, "samples_every_kimg": 1.0, "progress_bar": False})
    cfg["recipe"] = "progan"
    cfg["progan"] = {"training_kimg": phase, "transition_kimg": phase, "minibatch_base": 16, "micro_batch": {8: 8, 16: 4},
                     "g_lr": {8: 5e-4, 16: 2.5e-4}, "d_lr": {16: 1e-4}}
    return cfg


def _rows(tmp_path, name: str) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def _train(cfg: dict) -> dict[str, torch.Tensor]:
    """Train `cfg` in this process; every player's and EMA copy's final state, by name."""
    trainer = Trainer(config_from_dict(cfg))
    try:
        trainer.train()
    finally:
        trainer.release()
        trainer.backend.close()
    state = {f"{n}/{k}": v.clone() for n, p in trainer.players.items() for k, v in p.net.state_dict().items()}
    state.update({f"{n}_ema/{k}": v.clone() for n, e in trainer.emas.items() for k, v in e.module.state_dict().items()})
    return state


def _check_every_boundary(tmp_path, make_cfg, iterations: int, keys: tuple[str, ...]) -> None:
    whole = _train(make_cfg(tmp_path, "whole"))
    rows = _rows(tmp_path, "whole")
    assert [r["step"] for r in rows] == list(range(1, iterations + 1))
    for k in range(1, iterations):
        cfg = make_cfg(tmp_path, f"from{k}", resume=str(tmp_path / "runs" / "whole" / "checkpoints" / f"step-{k:08d}"))
        resumed = _train(cfg)
        got = [[r["step"], *(r[key] for key in keys)] for r in _rows(tmp_path, f"from{k}")]
        want = [[r["step"], *(r[key] for key in keys)] for r in rows if r["step"] > k]
        assert got == want, f"resumed at step {k}: logged steps differ from the uninterrupted run's"
        assert resumed.keys() == whole.keys()
        differ = [name for name in whole if not torch.equal(whole[name], resumed[name])]
        assert not differ, f"resumed at step {k}: final tensors differ: {differ[:5]}"


def test_a_resume_at_every_boundary_follows_warmup_decays_and_batch_change(tmp_path):
    _check_every_boundary(tmp_path, _gan_cfg, GAN_ITERATIONS, KEYS)
    # the schedule did change under the resumes: warm-up, step decay, linear decay, batch 16 -> 32
    lr_g = [r["lr/G"] for r in _rows(tmp_path, "whole")]
    assert lr_g[0] < lr_g[3] < lr_g[4] == 2e-4 and lr_g[-1] == pytest.approx(1e-4)
    lr_d = [r["lr/D"] for r in _rows(tmp_path, "whole")]
    assert lr_d[0] == 2e-4 and lr_d[-1] == pytest.approx(5e-5) and len(set(lr_d)) > 4
    assert [r["kimg"] for r in _rows(tmp_path, "whole")][5:7] == [0.096, 0.128]


def test_a_resume_at_every_boundary_of_progressive_growing(tmp_path):
    _check_every_boundary(tmp_path, _progan_cfg, 10, (*KEYS, "progan/alpha", "progan/resolution"))
    rows = _rows(tmp_path, "whole")
    assert [r["progan/resolution"] for r in rows] == [4, 4, 4, 8, 8, 8, 8, 16, 16, 16]
    assert [r["lr/G"] for r in rows] == [2e-4] * 3 + [5e-4] * 4 + [2.5e-4] * 3
    assert [r["lr/D"] for r in rows] == [2e-4] * 7 + [1e-4] * 3


def test_deepspeed_resume_after_the_warmup_keeps_the_schedule(tmp_path):
    """DeepSpeed ZeRO-2 through the CLI (DeepSpeed starts once per process): resumed inside the
    warm-up (step 3) and just before its end (step 4), every later step as uninterrupted."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    env = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": "1"}
    ds = ["backend.kind=deepspeed", "backend.zero_stage=2"]
    whole = write_config(tmp_path / "whole.yaml", _gan_cfg(tmp_path, "whole"))
    out = run_cli("train", str(whole), *ds, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path, "whole")
    for k in (3, 4):
        cfg = write_config(tmp_path / f"from{k}.yaml", _gan_cfg(tmp_path, f"from{k}", resume=str(tmp_path / "runs" / "whole" / "checkpoints" / f"step-{k:08d}")))
        out = run_cli("train", str(cfg), *ds, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        got = [[r["step"], *(r[key] for key in KEYS)] for r in _rows(tmp_path, f"from{k}")]
        assert got == [[r["step"], *(r[key] for key in KEYS)] for r in rows if r["step"] > k], f"resumed at step {k}"
