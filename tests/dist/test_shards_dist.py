"""Two processes train on WebDataset shards through the CLI (torchrun, gloo, CPU)."""
import json
import tarfile
from pathlib import Path

import pytest

from bigtrain.data.shard_writer import make_shards
from tests.conftest import run_cli, tiny_config, write_config, write_images_npz
from tests.dist.test_ddp import DIST_ENV, torchrun

pytestmark = pytest.mark.dist


def corrupt_first_image(shard: Path) -> None:
    """Overwrite one PNG's bytes in place: the tar stays valid, that image does not decode."""
    with tarfile.open(shard) as tar:
        png = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    with open(shard, "r+b") as f:
        f.seek(png.offset_data)
        f.write(b"\0" * png.size)


def test_two_process_training_on_shards_counts_skips(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    make_shards(data, tmp_path / "shards", shard_size=16, progress=False)
    corrupt_first_image(tmp_path / "shards" / "train-000002.tar")
    cfg = tiny_config(
        tmp_path,
        tmp_path / "shards" / "dataset.json",
        data={"source": "shards", "num_workers": 1, "xflip": True},
        model={"num_classes": 4},
        train={"total_kimg": 0.128, "batch_size": 16},
    )
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)), env=DIST_ENV, launcher=torchrun())
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    skipped = [r["data/skipped"] for r in rows]
    assert skipped == sorted(skipped) and skipped[-1] >= 1  # cumulative, summed over both ranks


def test_missing_shard_is_one_clear_error(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8, classes=4)
    make_shards(data, tmp_path / "shards", shard_size=16, progress=False)
    (tmp_path / "shards" / "train-000001.tar").unlink()
    cfg = tiny_config(tmp_path, tmp_path / "shards" / "dataset.json", data={"source": "shards"}, model={"num_classes": 4})
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    assert out.returncode == 2
    assert "train-000001.tar: shard not found" in out.stderr and "Traceback" not in out.stderr
