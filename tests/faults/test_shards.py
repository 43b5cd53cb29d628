"""Damaged shards mid-epoch (issue 11's fault suite): one corrupt image in shard 0 and shard 1
cut off inside its 4th sample. A run skips and counts what it cannot read and goes on; killed
(SIGKILL) at random steps around the damage and resumed, it trains every step once and its
skip count never goes back; past data.max_skipped_fraction it stops with one line naming the
shard, exit 2, and saves nothing. (A resumed shard stream is a fresh one, seeded by its
position, not a replay: docs/design.md, "Data streams". So the resumed run is compared with
the uninterrupted one for its steps, not bit for bit; npz data resumes bit for bit, tested in
test_kill.py.)"""
import random
import tarfile
from pathlib import Path

import torch

from bigtrain.data.shard_writer import make_shards
from tests.conftest import run_cli, tiny_config, write_config, write_images_npz
from tests.faults import harness

STEPS = 16  # of 16 images (4 passes over the 64 images); a checkpoint every 2 steps
SHARD = 16


def damage(shards: Path) -> None:
    """Shard 0: its first image's bytes zeroed (the tar stays valid); shard 1: cut inside its
    4th sample, so that sample and the 12 after it are lost."""
    with tarfile.open(shards / "train-000000.tar") as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    with open(shards / "train-000000.tar", "r+b") as f:
        f.seek(image.offset_data)
        f.write(b"\0" * image.size)
    with tarfile.open(shards / "train-000001.tar") as tar:
        members = tar.getmembers()
    cut = members[7].offset_data + members[7].size // 2
    (shards / "train-000001.tar").write_bytes((shards / "train-000001.tar").read_bytes()[:cut])


def _config(tmp_path: Path, **data) -> Path:
    npz = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    make_shards(npz, tmp_path / "shards", shard_size=SHARD, progress=False)
    damage(tmp_path / "shards")
    cfg = tiny_config(tmp_path, tmp_path / "shards" / "dataset.json", data={"source": "shards", "num_workers": 1, **data}, model={"num_classes": 4},
                      train={"total_kimg": STEPS * 0.016, "batch_size": 16}, checkpoint={"every_kimg": 0.032, "keep_last": 2})
    return write_config(tmp_path / "c.yaml", cfg)


def test_damaged_shards_are_skipped_counted_and_survive_kills(tmp_path):
    cfg = _config(tmp_path, max_skipped_fraction=0.5)  # 14 of 64 samples lost per pass
    whole = harness.finish(harness.command(cfg, ["run.name=whole"]))
    assert whole.returncode == 0, whole.stderr[-2000:]
    skipped = [r["data/skipped"] for r in harness.rows(tmp_path / "runs" / "whole")]
    assert skipped == sorted(skipped) and skipped[-1] >= 2 * 14  # both faults, on at least two passes

    run = tmp_path / "runs" / "killed"
    for step in sorted(random.Random(3).sample(range(2, STEPS - 2), 3)):
        assert harness.run_and_kill_at_step(harness.command(cfg, ["run.name=killed"]), run, step), f"finished before step {step}"
    done = harness.finish(harness.command(cfg, ["run.name=killed"]))
    assert done.returncode == 0, done.stderr[-2000:]
    steps = harness.losses(run)
    assert [r[0] for r in steps] == list(range(1, STEPS + 1))  # every step once
    assert all(torch.isfinite(torch.tensor([v for _, v in r[1:]])).all() for r in steps)
    # what the readers skipped, shuffle-buffer fills included: a resumed stream meets the bad
    # samples again, so the total outgrows the uninterrupted run's, but it never goes back
    resumed = [r["data/skipped"] for r in harness.rows(run)]
    assert resumed == sorted(resumed) and resumed[-1] >= skipped[-1]


def test_too_many_damaged_samples_stop_the_run_naming_the_shard(tmp_path):
    cfg = _config(tmp_path)  # data.max_skipped_fraction 0.01 by default
    out = run_cli("train", str(cfg))
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("bigtrain: error")]
    assert len(errors) == 1 and "train-00000" in errors[0] and "max_skipped_fraction" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "runs" / "tiny" / "checkpoints").glob("step-*"))  # nothing saved after the damage
