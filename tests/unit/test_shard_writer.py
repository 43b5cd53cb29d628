"""make-shards: every source kind round-trips bit-exact, dataset.json is right, output is deterministic."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigtrain.config import DataConfig
from bigtrain.data.images import RESIZE_FILTERS
from bigtrain.data.shard_writer import add_make_shards_arguments, make_shards, run_make_shards
from bigtrain.data.shards import ShardSource
from bigtrain.errors import ConfigError, DataError
from tests.conftest import write_images_npz


# --- tiny sources: (path, expected images uint8 [N, H, W, C] in sorted-listing order, labels) ---


def _pixels(n: int, h: int, w: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)


def class_folder(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    x = _pixels(9, 8, 8, 3, seed=1)
    names = ["cat", "dog", "eel"]  # sorted; labels follow the sorted names
    y = np.repeat(np.arange(3), 3)
    for i, (img, label) in enumerate(zip(x, y)):
        _save_png(root / "src" / names[label] / f"img{i:02d}.png", img)
    return root / "src", x, y


def flat_folder(root: Path) -> tuple[Path, np.ndarray, None]:
    x = _pixels(7, 6, 6, 1, seed=2)
    for i, img in enumerate(x):
        _save_png(root / "src" / f"{i:03d}.png", img)
    return root / "src", x, None


def npz_nhwc(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    path = write_images_npz(root / "x.npz", n=11, res=8, channels=3, classes=3)
    with np.load(path) as f:
        return path, f["x"], f["y"]


def npz_nchw(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    path = write_images_npz(root / "x.npz", n=10, res=8, channels=1, classes=2, layout="nchw")
    with np.load(path) as f:
        return path, f["x"].transpose(0, 2, 3, 1), f["y"]


def _cifar_batch(path: Path, x: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    data = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # CIFAR rows: R plane, G plane, B plane
    path.write_bytes(pickle.dumps({b"data": data, label_key: [int(v) for v in labels], b"batch_label": b"fake"}, protocol=2))


def cifar10(root: Path, split: str = "train") -> tuple[Path, np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = _pixels(2, 32, 32, 3, seed=10 + i), np.array([i % 10, (i + 3) % 10])
        _cifar_batch(folder / name, x, y, b"labels")
        if (name == "test_batch") == (split == "test"):
            xs.append(x), ys.append(y)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder, np.concatenate(xs), np.concatenate(ys)


def cifar100(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir()
    x, y = _pixels(5, 32, 32, 3, seed=20), np.array([0, 99, 5, 5, 42])
    _cifar_batch(folder / "train", x, y, b"fine_labels")
    _cifar_batch(folder / "test", x[:1], y[:1], b"fine_labels")
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    return folder, x, y


SOURCES = {"class_folder": class_folder, "flat_folder": flat_folder, "npz_nhwc": npz_nhwc, "npz_nchw": npz_nchw, "cifar10": cifar10, "cifar100": cifar100}
LOSSLESS = {"png": "png", "raw": "npy"}  # --format -> member extension


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """Members of a tar, grouped by key, read with plain tarfile (independent of bigtrain)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def source_for(out: Path, resolution: int, **data) -> ShardSource:
    cfg = DataConfig(source="shards", path=str(out / "dataset.json"), resolution=resolution, **data)
    return ShardSource(cfg, micro_batch=4, rank=0, world_size=1, seed=0)


@pytest.mark.parametrize("image_format", list(LOSSLESS))
@pytest.mark.parametrize("kind", list(SOURCES))
def test_round_trip_is_bit_exact_and_dataset_json_is_right(tmp_path: Path, kind: str, image_format: str) -> None:
    src, x, y = SOURCES[kind](tmp_path)
    meta = make_shards(src, tmp_path / "out", shard_size=4, image_format=image_format, progress=False)
    out = tmp_path / "out"
    assert json.loads((out / "dataset.json").read_text()) == meta
    assert meta["image_format"] == image_format and meta["quality"] is None
    assert meta["num_samples"] == len(x) and meta["channels"] == x.shape[3] and meta["size"] == list(x.shape[1:3])
    assert meta["num_classes"] == (0 if y is None else len(meta["class_names"]))
    assert len(meta["shards"]) == -(-len(x) // 4)
    if y is not None:  # samples per class, which the sources hand on as DataInfo.label_counts
        assert sum(meta["class_counts"]) == len(x) and meta["class_counts"][0] == int((np.asarray(y) == 0).sum())
        assert source_for(out, x.shape[1]).info.label_counts == tuple(meta["class_counts"])

    seen = {}
    for shard in meta["shards"]:
        path = out / shard["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert path.stat().st_size == shard["bytes"]
        members = read_tar(path)
        assert len(members) == shard["num_samples"]
        seen.update(members)
    assert sorted(int(k) for k in seen) == list(range(len(x)))
    ext = LOSSLESS[image_format]
    for key, members in seen.items():
        assert set(members) == ({ext} if y is None else {ext, "cls"})
        if y is not None:
            assert int(members["cls"]) == y[int(key)]
        if image_format == "raw":  # the documented layout, read without bigtrain: .npy of uint8 [H, W, C]
            np.testing.assert_array_equal(np.load(io.BytesIO(members["npy"]), allow_pickle=False), x[int(key)])

    # Back through the streaming reader, at the stored size: pixels and labels bit-exact.
    source = source_for(out, resolution=x.shape[1])
    samples = list(source.samples(resampled=False))
    assert sorted(int(s.key) for s in samples) == list(range(len(x)))
    for s in samples:
        np.testing.assert_array_equal(s.image.permute(1, 2, 0).numpy(), x[int(s.key)])
        assert s.label == (None if y is None else y[int(s.key)])


def test_class_names_and_cifar_meta(tmp_path: Path) -> None:
    src, _, _ = class_folder(tmp_path / "a")
    assert make_shards(src, tmp_path / "o1", progress=False)["class_names"] == ["cat", "dog", "eel"]
    src, _, _ = cifar10(tmp_path)
    meta = make_shards(src, tmp_path / "o2", progress=False)
    assert meta["class_names"] == [f"c{i}" for i in range(10)] and meta["source"]["kind"] == "cifar10"
    src, _, _ = cifar100(tmp_path)
    assert make_shards(src, tmp_path / "o3", progress=False)["num_classes"] == 100


def test_cifar_test_split(tmp_path: Path) -> None:
    src, x, y = cifar10(tmp_path, split="test")
    meta = make_shards(src, tmp_path / "out", split="test", progress=False)
    assert meta["num_samples"] == len(x) == 2 and meta["source"]["split"] == "test"


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="data_batch_1.*refusing to load builtins.print"):
        make_shards(folder, tmp_path / "out", progress=False)


@pytest.mark.parametrize("image_format", list(LOSSLESS))
def test_output_is_deterministic_and_independent_of_workers(tmp_path: Path, image_format: str) -> None:
    src, _, _ = class_folder(tmp_path)
    make_shards(src, tmp_path / "w1", shard_size=4, workers=1, seed=3, image_format=image_format, progress=False)
    make_shards(src, tmp_path / "w2", shard_size=4, workers=2, seed=3, image_format=image_format, progress=False)
    make_shards(src, tmp_path / "s4", shard_size=4, workers=1, seed=4, image_format=image_format, progress=False)
    names = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in names:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    # The seed decides the order, nothing else.
    order = lambda d: [k for p in sorted(d.glob("*.tar")) for k in read_tar(p)]  # noqa: E731
    assert order(tmp_path / "w1") != order(tmp_path / "s4")
    assert sorted(order(tmp_path / "w1")) == sorted(order(tmp_path / "s4"))


@pytest.mark.parametrize("resize_filter", ["box", "lanczos"])
def test_center_crop_and_resize(tmp_path: Path, resize_filter: str) -> None:
    pixels = _pixels(1, 10, 14, 3, seed=5)[0]  # H=10, W=14: the crop keeps columns 2..11
    _save_png(tmp_path / "src" / "a.png", pixels)
    meta = make_shards(tmp_path / "src", tmp_path / "out", resolution=4, resize_filter=resize_filter, progress=False)
    expected = Image.fromarray(pixels).crop((2, 0, 12, 10)).resize((4, 4), resample=RESIZE_FILTERS[resize_filter])
    stored = next(iter(read_tar(tmp_path / "out" / meta["shards"][0]["name"]).values()))["png"]
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(stored))), np.array(expected))
    assert meta["resolution"] == 4 and meta["resize_filter"] == resize_filter and meta["crop"] == "center"


def test_crop_none_squashes(tmp_path: Path) -> None:
    _save_png(tmp_path / "src" / "a.png", _pixels(1, 6, 12, 3, seed=6)[0])
    meta = make_shards(tmp_path / "src", tmp_path / "out", resolution=4, crop="none", progress=False)
    assert meta["size"] == [4, 4]


def test_max_bytes_bounds_every_shard(tmp_path: Path) -> None:
    src, x, _ = npz_nhwc(tmp_path)
    limit = 10 * 1024
    meta = make_shards(src, tmp_path / "out", max_bytes=limit, progress=False)
    assert len(meta["shards"]) > 1 and sum(s["num_samples"] for s in meta["shards"]) == len(x)
    assert all(s["bytes"] <= limit for s in meta["shards"])


def test_jpeg_shards(tmp_path: Path) -> None:
    src, x, _ = npz_nhwc(tmp_path)
    meta = make_shards(src, tmp_path / "out", image_format="jpg", quality=90, progress=False)
    assert meta["image_format"] == "jpg" and meta["quality"] == 90
    members = read_tar(tmp_path / "out" / meta["shards"][0]["name"])
    assert all(set(m) == {"cls", "jpg"} for m in members.values())
    samples = list(source_for(tmp_path / "out", resolution=8).samples(resampled=False))
    assert len(samples) == len(x)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_make_shards_arguments(parser)
    return run_make_shards(parser.parse_args([*argv, "--no-progress"]))


def test_cli_functions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, x, _ = npz_nhwc(tmp_path)
    assert _cli(str(src), str(tmp_path / "out"), "--shard-size", "5", "--max-bytes", "1M", "--workers", "2", "--prefix", "data") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data-000000.tar", "data-000001.tar", "data-000002.tar", "dataset.json"]
    assert f"wrote {len(x)} samples" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, key",
    [(["--resolution", "0"], "--resolution"), (["--shard-size", "-1"], "--shard-size"), (["--quality", "101"], "--quality"), (["--workers", "0"], "--workers")],
)
def test_cli_rejects_bad_options(tmp_path: Path, argv: list[str], key: str) -> None:
    src, _, _ = npz_nhwc(tmp_path)
    with pytest.raises(ConfigError) as err:
        _cli(str(src), str(tmp_path / "out"), *argv)
    assert err.value.key == key and not (tmp_path / "out").exists()


def test_refuses_non_empty_output_folder(tmp_path: Path) -> None:
    src, _, _ = npz_nhwc(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="out: exists and is not an empty folder"):
        make_shards(src, tmp_path / "out", progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_bad_inputs_name_the_culprit_and_leave_nothing(tmp_path: Path) -> None:
    _save_png(tmp_path / "src" / "a.png", _pixels(1, 8, 8, 3, seed=0)[0])
    _save_png(tmp_path / "src" / "b.png", _pixels(1, 6, 6, 3, seed=0)[0])
    with pytest.raises(DataError, match="pass --resolution"):
        make_shards(tmp_path / "src", tmp_path / "out", progress=False)
    (tmp_path / "src" / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"b\.png: cannot read image"):
        make_shards(tmp_path / "src", tmp_path / "out", workers=2, progress=False)
    with pytest.raises(DataError, match="no such file"):
        make_shards(tmp_path / "missing", tmp_path / "out", progress=False)
    np.savez(tmp_path / "v.npz", x=np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match="uint8 images"):
        make_shards(tmp_path / "v.npz", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "v.npz"]  # no output, no staging left
