"""Throughput counts training only: time in grids, checkpoints and evaluation is reported apart."""
import json
import time
from types import SimpleNamespace

from bigtrain import tracking
from bigtrain.families import config_from_dict
from bigtrain.engine.loop import Trainer
from tests.conftest import tiny_config, write_images_npz

SLOW_S = 10.0  # what each checkpoint costs on the tracker's clock


def test_checkpoint_time_is_not_training_time(tmp_path, monkeypatch):
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    # a checkpoint after every step of 16 images; each one moves the tracker's clock on by 10 s
    # (a clock, not a sleep: the test does not depend on how fast this machine trains)
    cfg = config_from_dict(tiny_config(tmp_path, data, train={"total_kimg": 0.08}, checkpoint={"every_kimg": 0.016}, log={"every_kimg": 0.016, "samples_every_kimg": 1.0, "progress_bar": False}))
    offset = [0.0]
    monkeypatch.setattr(tracking, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0]))
    save = Trainer.save_checkpoint

    def slow_save(self):
        offset[0] += SLOW_S
        return save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", slow_save)
    trainer = Trainer(cfg)
    trainer.train()
    trainer.backend.close()

    rows = [json.loads(l) for l in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows[1:]:  # each after one slowed checkpoint
        assert r["perf/maintenance_s"] >= SLOW_S
        # with the checkpoint counted, 16 images would take > 10 s on the clock: under 1.6 img/s
        assert r["perf/img_per_s"] > 16 / SLOW_S, r
    assert rows[0]["perf/maintenance_s"] < SLOW_S
    assert 50 < rows[-1]["perf/peak_mem_mb/rank0"] < 24 * 1024
