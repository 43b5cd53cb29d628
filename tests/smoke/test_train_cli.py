"""The real CLI on tiny data: run-directory contract, resume exactness, sampling, bad input."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import REPO, run_cli, tiny_config, write_config, write_images_npz


def _losses(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/D"], r["loss/G"]) for r in rows if "loss/D" in r]


@pytest.fixture
def data(tmp_path):
    return write_images_npz(tmp_path / "d.npz", n=48, res=8, classes=4)


def test_run_directory_contract(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, model={"num_classes": 4}))
    out = run_cli("train", str(cfg))
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "tiny"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["num_classes"] == 4 and resolved["train"]["total_kimg"] == 0.128
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and [r["step"] for r in rows] == list(range(1, 9))
    assert all({"step", "kimg", "loss/D", "loss/G", "perf/img_per_s"} <= r.keys() for r in rows)
    assert all(np.isfinite(r["loss/D"]) and np.isfinite(r["loss/G"]) for r in rows)
    assert rows[-1]["kimg"] == 0.128
    assert list((run / "tb").glob("events.out.tfevents.*"))
    grids = sorted((run / "samples").glob("fakes-*.png"))
    # at 0, 0.064 and 0.128 kimg: grids under 1 kimg apart each keep their own file
    assert [g.name for g in grids] == ["fakes-000000.000kimg.png", "fakes-000000.064kimg.png", "fakes-000000.128kimg.png"]
    assert Image.open(grids[-1]).size == (4 * 8, 2 * 8)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-00000004", "step-00000008"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    assert "run directory" in out.stdout and "checkpoint" in out.stdout

    # a second call with resume=auto finds the run finished and trains nothing more
    again = run_cli("train", str(cfg))
    assert again.returncode == 0, again.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 8

    # resume=none on a run that has checkpoints refuses rather than overwriting
    refuse = run_cli("train", str(cfg), "train.resume=none")
    assert refuse.returncode == 2 and "train.resume" in refuse.stderr
    assert (run / "checkpoints" / "step-00000008").is_dir()


# both slow (the default run's 15-minute budget): tests/faults and the golden resume case resume in it
@pytest.mark.slow
@pytest.mark.parametrize("arch, res", [("mlp", 8), ("dcgan", 16)])
def test_resume_reproduces_uninterrupted_losses(tmp_path, arch, res):
    data = write_images_npz(tmp_path / "d.npz", n=40, res=res, classes=4)
    model = {"num_classes": 4, "g": {"arch": arch, "width": 8}, "d": {"arch": arch, "width": 8}}
    # flips, DiffAugment and the gradient penalty's interpolation all draw random numbers
    base = tiny_config(tmp_path, data, model=model, data={"resolution": res, "xflip": True}, augment={"policy": "translation,cutout"}, loss={"gp_weight": 1.0})

    whole = dict(base, run={**base["run"], "name": "whole"})
    assert run_cli("train", str(write_config(tmp_path / "whole.yaml", whole))).returncode == 0

    parts = dict(base, run={**base["run"], "name": "parts"})
    cfg = write_config(tmp_path / "parts.yaml", parts)
    first = run_cli("train", str(cfg), "train.total_kimg=0.064")
    assert first.returncode == 0, first.stderr
    second = run_cli("train", str(cfg))
    assert second.returncode == 0, second.stderr

    expected, got = _losses(tmp_path / "runs" / "whole"), _losses(tmp_path / "runs" / "parts")
    assert len(expected) == 8 and [s for s, _, _ in got] == list(range(1, 9))
    assert got == expected  # bit-identical losses after the resume at step 4
    w = torch.load(tmp_path / "runs" / "whole" / "checkpoints" / "step-00000008" / "trainer.pt", weights_only=True)
    p = torch.load(tmp_path / "runs" / "parts" / "checkpoints" / "step-00000008" / "trainer.pt", weights_only=True)
    for k, v in w["G_ema"].items():
        assert torch.equal(v, p["G_ema"][k]), k


# slow (the default run's 15-minute budget; tests/smoke/test_user_path.py samples npz, folder, grid, class and truncation)
@pytest.mark.slow
def test_sample_outputs(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, model={"num_classes": 4}))
    assert run_cli("train", str(cfg)).returncode == 0
    run = tmp_path / "runs" / "tiny"

    npz = tmp_path / "s.npz"
    out = run_cli("sample", "--run", str(run), "--num", "10", "--out", str(npz), "--class", "2", "--seed", "3")
    assert out.returncode == 0, out.stderr
    arrays = np.load(npz)
    assert arrays["x"].dtype == np.uint8 and arrays["x"].shape == (10, 8, 8, 1)
    assert arrays["y"].dtype == np.int64 and (arrays["y"] == 2).all()

    # same seed -> same samples; the raw G differs from G_ema
    again = tmp_path / "again.npz"
    assert run_cli("sample", "--run", str(run), "--num", "10", "--out", str(again), "--class", "2", "--seed", "3").returncode == 0
    assert np.array_equal(np.load(again)["x"], arrays["x"])
    raw = tmp_path / "raw.npz"
    ckpt = run / "checkpoints" / "step-00000004"
    assert run_cli("sample", "--checkpoint", str(ckpt), "--num", "10", "--out", str(raw), "--no-ema", "--truncation", "0.5").returncode == 0
    assert not np.array_equal(np.load(raw)["x"], arrays["x"])

    grid = tmp_path / "g.png"
    assert run_cli("sample", "--run", str(run), "--num", "6", "--out", str(grid)).returncode == 0
    assert Image.open(grid).size == (3 * 8, 2 * 8)
    folder = tmp_path / "pngs"
    assert run_cli("sample", "--run", str(run), "--num", "3", "--out", str(folder)).returncode == 0
    assert len(list(folder.glob("*.png"))) == 3

    # nothing is overwritten; bad input is one line and exit 2
    again_out = run_cli("sample", "--run", str(run), "--num", "10", "--out", str(npz))
    assert again_out.returncode == 2 and "refusing to overwrite" in again_out.stderr
    assert np.array_equal(np.load(npz)["x"], arrays["x"])
    bad_class = run_cli("sample", "--run", str(run), "--num", "2", "--out", str(tmp_path / "c.npz"), "--class", "9")
    assert bad_class.returncode == 2 and "--class 9" in bad_class.stderr
    no_run = run_cli("sample", "--run", str(tmp_path / "nope"), "--num", "2", "--out", str(tmp_path / "n.npz"))
    assert no_run.returncode == 2 and "nope" in no_run.stderr


def test_vector_data_mlp_gan(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, path))
    out = run_cli("train", str(cfg), "train.total_kimg=0.032")
    assert out.returncode == 0, out.stderr
    s = tmp_path / "v_samples.npz"
    assert run_cli("sample", "--run", str(tmp_path / "runs" / "tiny"), "--num", "5", "--out", str(s)).returncode == 0
    x = np.load(s)["x"]
    assert x.dtype == np.float32 and x.shape == (5, 2)


def test_bad_input_is_one_clear_line(tmp_path, data):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04garbage")
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, corrupt))
    out = run_cli("train", str(cfg))
    assert out.returncode == 2 and "corrupt.npz" in out.stderr and len(out.stderr.strip().splitlines()) == 1

    missing = run_cli("train", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "missing.yaml" in missing.stderr

    cfg = write_config(tmp_path / "c2.yaml", tiny_config(tmp_path, data))
    cond = run_cli("train", str(cfg), "model.num_classes=2")
    assert cond.returncode == 2 and "model.num_classes" in cond.stderr
    batch = run_cli("train", str(cfg), "train.micro_batch=5")
    assert batch.returncode == 2 and "train.batch_size" in batch.stderr
    pack = run_cli("train", str(cfg), "model.d.pack=3")  # micro-batch 16 does not split into packs of 3
    assert pack.returncode == 2 and "model.d.pack" in pack.stderr
    unknown_player = run_cli("train", str(cfg), "optim.d7.lr=0.1")
    assert unknown_player.returncode == 2 and "optim.d7" in unknown_player.stderr


def test_corrupt_latest_checkpoint_falls_back(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data))
    assert run_cli("train", str(cfg), "train.total_kimg=0.128").returncode == 0
    run = tmp_path / "runs" / "tiny"
    latest = run / "checkpoints" / "step-00000008" / "trainer.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    out = run_cli("train", str(cfg), "train.total_kimg=0.16")
    assert out.returncode == 0, out.stderr
    assert "skipping checkpoint" in out.stderr and "step-00000008" in out.stderr
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-6:] == [5, 6, 7, 8, 9, 10]  # resumed from step 4
    assert (run / "checkpoints" / "replaced-step-00000008").is_dir()  # the unreadable one, kept


def test_accelerate_launch_with_the_cpu_config(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch" / "cpu.yaml")]
    out = run_cli("train", str(cfg), "train.total_kimg=0.032", launcher=launcher)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000002" / "rank0.pt").is_file()
