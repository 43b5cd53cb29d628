"""Throughput counts training only: time in grids, checkpoints and evaluation is reported apart."""
import json
import time

from bigtrain.config import config_from_dict
from bigtrain.engine.loop import Trainer
from tests.conftest import tiny_config, write_images_npz

SLEEP_S = 0.3

def test_checkpoint_time_is_not_training_time(tmp_path, monkeypatch):
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    # a checkpoint after every step of 16 images, each made 0.3 s slower
    cfg = config_from_dict(tiny_config(tmp_path, data, train={"total_kimg": 0.08}, checkpoint={"every_kimg": 0.016}, log={"every_kimg": 0.016, "samples_every_kimg": 1.0, "progress_bar": False}))
    save = Trainer.save_checkpoint

    def slow_save(self):
        time.sleep(SLEEP_S)
        return save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", slow_save)
    trainer = Trainer(cfg)
    trainer.train()
    trainer.backend.close()

    rows = [json.loads(l) for l in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows[1:]:  # each after one slowed checkpoint
        assert r["perf/maintenance_s"] >= SLEEP_S
        # with the sleep counted, 16 images would take > 0.3 s: under 53 img/s
        assert r["perf/img_per_s"] > 3 * 16 / SLEEP_S, r
    assert rows[0]["perf/maintenance_s"] < SLEEP_S
    assert 50 < rows[-1]["perf/peak_mem_mb/rank0"] < 24 * 1024
