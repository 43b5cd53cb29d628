"""Every recipe through the real CLI: trains, resumes bit for bit (including across a schedule
change of batch size and learning rate), samples, and reports every player's parameters."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli, tiny_config, write_config, write_images_npz

MLP = {"g": {"arch": "mlp", "width": 16}, "d": {"arch": "mlp", "width": 16}}
CASES = {
    "gman_soft_mean": {"recipe": "gman", "gman": {"discriminators": 3, "combiner": "soft_mean", "softmax_lambda": 2.0}, "model": MLP},
    "gman_max": {"recipe": "gman", "gman": {"discriminators": 2, "combiner": "max"}, "model": MLP, "optim": {"d2": {"lr": 0.001}}},
    "madgan": {"recipe": "madgan", "madgan": {"generators": 3}, "model": MLP},
    "pacgan": {"model": {**MLP, "d": {"arch": "mlp", "width": 16, "pack": 4}}},
    "mbstd_dcgan": {"model": {"g": {"arch": "dcgan", "width": 8}, "d": {"arch": "dcgan", "width": 8, "mbstd_group": 4}}, "data": {"resolution": 16}},
    "batchnorm_d": {"model": {"g": {"arch": "dcgan", "width": 8}, "d": {"arch": "dcgan", "width": 8, "norm": "batch"}}, "data": {"resolution": 16}},
    # batch 16 -> 32 at 0.048 kimg (rounds 1 -> 2), G's lr decays linearly, D warms up
    "schedule": {"model": MLP, "train": {"micro_batch": 16}, "schedule": {"batch": [[0.048, 32]], "lr": {"g": {"shape": "linear", "end_kimg": 0.128, "final": 0.1}, "d": {"warmup_kimg": 0.064}}}},
}


def _records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k == "step" or k == "kimg" or k.startswith(("loss/", "D", "G"))} for r in rows if any(k.startswith("loss/") for k in r)]


def _config(tmp_path: Path, name: str, case: dict) -> dict:
    res = case.get("data", {}).get("resolution", 8)
    data = write_images_npz(tmp_path / "d.npz", n=64, res=res, classes=4)
    sections = {k: v for k, v in case.items() if k not in ("recipe", "gman", "madgan")}
    cfg = tiny_config(tmp_path, data, **sections)
    cfg["run"]["name"] = name
    cfg["model"].update(case.get("model", {}))
    for key in ("recipe", "gman", "madgan"):
        if key in case:
            cfg[key] = case[key]
    return cfg


# covered in the default run by their neighbours (mbstd_dcgan, madgan and gman_soft_mean also by the
# default golden cases, schedule by tests/unit/test_resume_plan.py)
SLOW = {"gman_max", "pacgan", "batchnorm_d", "mbstd_dcgan", "madgan", "gman_soft_mean", "schedule"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_recipe_trains_and_resumes_exactly(tmp_path, name):
    whole = _config(tmp_path, "whole", CASES[name])
    out = run_cli("train", str(write_config(tmp_path / "whole.yaml", whole)))
    assert out.returncode == 0, out.stderr[-2000:]
    parts = _config(tmp_path, "parts", CASES[name])
    cfg = write_config(tmp_path / "parts.yaml", parts)
    first = run_cli("train", str(cfg), "train.total_kimg=0.064")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli("train", str(cfg))
    assert second.returncode == 0, second.stderr[-2000:]

    expected, got = _records(tmp_path / "runs" / "whole"), _records(tmp_path / "runs" / "parts")
    assert len(expected) >= 5 and all(np.isfinite(v) for r in expected for k, v in r.items() if k.startswith("loss/"))
    assert got == expected  # bit-identical per-step losses across the resume
    final = sorted((tmp_path / "runs" / "whole" / "checkpoints").glob("step-*"))[-1].name
    w = torch.load(tmp_path / "runs" / "whole" / "checkpoints" / final / "trainer.pt", weights_only=True)
    p = torch.load(tmp_path / "runs" / "parts" / "checkpoints" / final / "trainer.pt", weights_only=True)
    assert w["players"].keys() == p["players"].keys()
    for player in w["players"]:
        for k, v in w["players"][player]["net"].items():
            assert torch.equal(v, p["players"][player]["net"][k]), f"{player}/{k}"
    if name.startswith("gman"):
        k = CASES[name]["gman"]["discriminators"]
        assert sorted(w["players"]) == [f"D{i + 1}" for i in range(k)] + ["G"]
        assert {f"loss/D{i + 1}" for i in range(k)} <= expected[0].keys()


def test_schedule_changes_batch_lr_and_ema_at_the_right_images(tmp_path):
    from bigtrain.families import load_config
    from bigtrain.engine.loop import Trainer
    from bigtrain.tracking import Tracker

    cfg_dict = _config(tmp_path, "sched", CASES["schedule"])
    cfg = load_config(write_config(tmp_path / "s.yaml", cfg_dict))
    trainer = Trainer(cfg)
    tracker = Tracker(trainer.run_dir, is_main=True, reduce_mean=lambda t: t, total_img=128, progress_bar=False)
    seen = []
    for i in range(5):
        before = trainer.counters.nimg
        if i == 3:  # the first iteration at batch 32
            ema_before = [p.clone() for p in trainer.emas["G"].module.parameters()]
        trainer.iteration(tracker)
        if i == 3:
            G_after = [p.detach().clone() for p in trainer.players["G"].net.parameters()]
            ema_after = [p.clone() for p in trainer.emas["G"].module.parameters()]
        G, D = trainer.players["G"], trainer.players["D"]
        seen.append((before, trainer.plan.batch_size, trainer.backend.rounds, G.optimizer.param_groups[0]["lr"], D.optimizer.param_groups[0]["lr"]))
    tracker.close()
    # 16-image iterations until 48 images are seen, then 32 (two rounds of 16)
    assert [(n, b, r) for n, b, r, _, _ in seen] == [(0, 16, 1), (16, 16, 1), (32, 16, 1), (48, 32, 2), (80, 32, 2)]
    assert trainer.counters.nimg == 112
    base = 2e-4
    for n, b, _, g_lr, d_lr in seen:
        assert g_lr == pytest.approx(base * (1 + (n / 128) * (0.1 - 1)))  # linear to 0.1 x at total_kimg
        assert d_lr == pytest.approx(base * min(1.0, (n + b) / 64))  # warm-up over 64 images
    # the EMA step at the change uses the new batch: beta = 0.5 ** (32 / half-life), the half-life
    # min(50 images, rampup 0.05 x 80 images seen) = 4 images
    beta = 0.5 ** (32 / 4.0)
    for old, g, new in zip(ema_before, G_after, ema_after):
        torch.testing.assert_close(new, beta * old + (1 - beta) * g)
    assert not all(torch.equal(o, n) for o, n in zip(ema_before, ema_after))


# slow (the default run's 15-minute budget)
@pytest.mark.slow
def test_madgan_samples_one_head_or_all(tmp_path):
    cfg = _config(tmp_path, "mad", CASES["madgan"])
    out = run_cli("train", str(write_config(tmp_path / "m.yaml", cfg)))
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "mad"
    for head in ("0", "2"):
        got = run_cli("sample", "--run", str(run), "--num", "6", "--out", str(tmp_path / f"h{head}.npz"), "--head", head)
        assert got.returncode == 0, got.stderr
    mixed = run_cli("sample", "--run", str(run), "--num", "6", "--out", str(tmp_path / "all.npz"))
    assert mixed.returncode == 0, mixed.stderr
    h0, h2, every = (np.load(tmp_path / f"{n}.npz")["x"] for n in ("h0", "h2", "all"))
    assert h0.shape == (6, 8, 8, 1) and not np.array_equal(h0, h2)
    assert np.array_equal(every[0], h0[0]) and np.array_equal(every[2], h2[2])  # sample i from head i mod 3
    bad = run_cli("sample", "--run", str(run), "--num", "2", "--out", str(tmp_path / "bad.npz"), "--head", "3")
    assert bad.returncode == 2 and "--head" in bad.stderr
    plain = _config(tmp_path, "plain", CASES["pacgan"])
    assert run_cli("train", str(write_config(tmp_path / "p.yaml", plain))).returncode == 0
    one_g = run_cli("sample", "--run", str(tmp_path / "runs" / "plain"), "--num", "2", "--out", str(tmp_path / "one.npz"), "--head", "0")
    assert one_g.returncode == 2 and "--head" in one_g.stderr and "one generator" in one_g.stderr


def test_dry_run_counts_every_players_parameters(tmp_path):
    cfg = _config(tmp_path, "dry", CASES["gman_soft_mean"])
    out = run_cli("train", str(write_config(tmp_path / "g.yaml", cfg)), "--dry-run")
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("# parameters:")][0]
    # mlp G: 8 -> 16 -> 16 -> 64 (z 8, 8x8x1 images); D_k: 64 -> 16 -> 16 -> 1
    g = (8 * 16 + 16) + (16 * 16 + 16) + (16 * 64 + 64)
    d = (64 * 16 + 16) + (16 * 16 + 16) + (16 + 1)
    assert line == f"# parameters: G {g:,}  D1 {d:,}  D2 {d:,}  D3 {d:,}"
