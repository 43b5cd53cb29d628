"""Reading data sets once, reference statistics files, and protocol warnings (no Inception here:
a tiny stand-in feature network keeps these fast)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bigtrain.errors import DataError
from bigtrain.eval.images import open_images
from bigtrain.eval.protocol import compare
from bigtrain.eval.ref_stats import compute_ref_stats, is_stats_file, load_ref_stats, save_ref_stats


class TinyFeatures(nn.Module):
    """Stands in for InceptionV3: per-channel means and spreads as 6 'pool' features."""

    num_features = 6

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().expand(-1, 3, -1, -1) / 255
        pool = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        return pool, pool[:, :4]

    def protocol(self) -> dict:
        return {"network": "tiny", "resize": "none", "weights_sha256": "ab" * 32, "standard_weights": False}


def random_images(n: int = 7, res: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, res, res, 3), dtype=np.uint8)  # N,H,W,C


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder: Path, images: np.ndarray, per_shard: int = 4) -> Path:
    folder.mkdir()
    for s, lo in enumerate(range(0, len(images), per_shard)):
        with tarfile.open(folder / f"data-{s:03d}.tar", "w") as tar:
            for i in range(lo, min(lo + per_shard, len(images))):
                for name, data in ((f"{i:06d}.png", png_bytes(images[i])), (f"{i:06d}.cls", b"1")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    names = sorted(p.name for p in folder.glob("*.tar"))
    (folder / "dataset.json").write_text(json.dumps({"shards": [{"name": n} for n in names]}))
    return folder


def read_all(path, batch_size: int = 3, **kw) -> tuple[list[torch.Tensor], object]:
    images = open_images(path, kw.pop("resolution", None))
    return list(images.batches(batch_size, **kw)), images


def test_every_kind_of_data_set_yields_the_same_images_once(tmp_path) -> None:
    x = random_images()
    np.savez(tmp_path / "nhwc.npz", x=x)
    np.savez(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2))
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    for i, image in enumerate(x):  # nested folders, sorted by path
        (tmp_path / "folder" / ("sub" if i >= 4 else "") / f"{i:03d}.png").write_bytes(png_bytes(image))
    shards = write_shards(tmp_path / "shards", x)
    expected = torch.from_numpy(x).permute(0, 3, 1, 2)
    sources = [
        tmp_path / "nhwc.npz", tmp_path / "nchw.npz", tmp_path / "folder", shards,
        shards / "dataset.json", str(shards / "data-{000..001}.tar"),
    ]  # fmt: skip
    for source in sources:
        batches, images = read_all(source)
        assert [len(b) for b in batches] == [3, 3, 1], source
        assert torch.equal(torch.cat(batches), expected), source
        assert images.num_images == 7 and images.image_resolution == [6, 6] and images.resize_filter == "none"
    assert [open_images(s).kind for s in sources[:4]] == ["npz", "npz", "folder", "shards"]


def test_max_images_and_resizing_to_the_training_resolution(tmp_path) -> None:
    np.savez(tmp_path / "x.npz", x=random_images(n=10, res=8))
    batches, images = read_all(tmp_path / "x.npz", batch_size=4, max_images=5, resolution=4)
    assert [b.shape for b in batches] == [(4, 3, 4, 4), (1, 3, 4, 4)]
    assert (images.num_images, images.image_resolution, images.resize_filter) == (5, [4, 4], "area")


def test_mixed_sizes_need_a_resolution(tmp_path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(random_images(1, 6)[0]))
    (folder / "b.png").write_bytes(png_bytes(random_images(1, 9)[0]))
    with pytest.raises(DataError, match="b.png: image of shape .*--resolution"):
        read_all(folder)
    batches, images = read_all(folder, resolution=8)
    assert torch.cat(batches).shape == (2, 3, 8, 8) and images.resize_filter in ("area", "bilinear")


def test_bad_data_sets_name_the_culprit(tmp_path) -> None:
    with pytest.raises(DataError, match="missing.npz"):
        open_images(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="nope.tar: not found"):
        open_images(tmp_path / "nope.tar")
    (tmp_path / "broken.tar").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="broken.tar: corrupt shard"):
        read_all(tmp_path / "broken.tar")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: cannot decode image"):
        read_all(tmp_path / "imgs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        read_all(tmp_path / "empty")
    np.savez(tmp_path / "vectors.npz", x=np.zeros((3, 5), np.float32))
    with pytest.raises(DataError, match="vectors"):
        read_all(tmp_path / "vectors.npz")


def test_statistics_are_the_feature_mean_and_covariance(tmp_path) -> None:
    x = random_images(n=9)
    np.savez(tmp_path / "x.npz", x=x)
    net = TinyFeatures()
    stats = compute_ref_stats(open_images(tmp_path / "x.npz"), net, batch_size=4, keep_features=True, split="train")
    whole_batch = net(torch.from_numpy(x).permute(0, 3, 1, 2))[0].numpy()
    np.testing.assert_allclose(stats.features, whole_batch, rtol=1e-6)  # every image once, in order
    features = stats.features.astype(np.float64)
    np.testing.assert_allclose(stats.mu, features.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    assert stats.meta["num_images"] == 9 and stats.meta["split"] == "train" and stats.meta["network"] == "tiny"
    assert stats.meta["image_resolution"] == [6, 6] and stats.meta["kind"] == "npz"


def test_files_use_the_pytorch_fid_layout_and_round_trip(tmp_path) -> None:
    x = random_images(n=5)
    np.savez(tmp_path / "x.npz", x=x)
    stats = compute_ref_stats(open_images(tmp_path / "x.npz"), TinyFeatures(), keep_features=True)
    out = tmp_path / "stats" / "ref.npz"
    save_ref_stats(stats, out)
    with np.load(out) as f:  # what pytorch-fid / TTUR read: f['mu'], f['sigma']
        assert f["mu"].dtype == np.float64 and f["sigma"].shape == (6, 6)
        assert json.loads(str(f["meta"]))["num_images"] == 5
    again = load_ref_stats(out)
    np.testing.assert_array_equal(again.sigma, stats.sigma)
    assert again.num_images == 5 and again.features.shape == (5, 6)
    assert is_stats_file(out) and not is_stats_file(tmp_path / "x.npz")
    with pytest.raises(DataError, match="refusing to overwrite"):
        save_ref_stats(stats, out)
    assert [p.name for p in out.parent.iterdir()] == ["ref.npz"]  # no temp files left


def test_another_tools_file_loads_and_is_flagged(tmp_path) -> None:
    np.savez(tmp_path / "fid_stats_cifar10_train.npz", mu=np.zeros(6, np.float32), sigma=np.eye(6, dtype=np.float32))
    other = load_ref_stats(tmp_path / "fid_stats_cifar10_train.npz")
    assert other.mu.dtype == np.float64 and other.num_images is None and other.features is None
    ours = {**TinyFeatures().protocol(), "image_resolution": [6, 6]}
    warnings = compare(ours, other.meta, "generated", "reference")
    assert any("reference" in w and "no protocol metadata" in w for w in warnings)


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"mu": np.zeros(4)}, "needs 'mu' and 'sigma'"),
        ({"mu": np.zeros(4), "sigma": np.eye(3)}, "not a mean and its covariance"),
        ({"mu": np.full(2, np.nan), "sigma": np.eye(2)}, "NaN"),
        ({"mu": np.zeros(2), "sigma": np.eye(2), "features": np.zeros((3, 5))}, "'features'"),
    ],
)
def test_malformed_statistics_files_are_refused(tmp_path, arrays, message) -> None:
    np.savez(tmp_path / "s.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_ref_stats(tmp_path / "s.npz")


def test_protocol_warnings_name_each_difference() -> None:
    base = {"network": "n", "resize": "r", "weights_sha256": "1" * 64, "standard_weights": True, "image_resolution": [32, 32]}
    assert compare(base, dict(base)) == []
    other = {**base, "weights_sha256": "2" * 64, "standard_weights": False, "image_resolution": [64, 64]}
    warnings = compare(base, other, "A", "B")
    assert any("B used non-standard Inception weights" in w for w in warnings)
    assert any("differ in weights_sha256" in w for w in warnings)
    assert any("32x32" in w and "64x64" in w for w in warnings)
    assert compare(base, None) == []  # IS alone: nothing to compare with


def test_raw_and_png_shards_give_the_same_images(tmp_path):
    """ref-stats reads make-shards output in either storage format, pixel for pixel alike."""
    import numpy as np

    from bigtrain.data.shard_writer import make_shards
    from bigtrain.eval.images import read_shard_images

    rng = np.random.default_rng(0)
    src = tmp_path / "src.npz"
    np.savez(src, x=rng.integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8))
    images = {}
    for fmt in ("png", "raw"):
        make_shards(str(src), str(tmp_path / fmt), image_format=fmt, progress=False)
        shards = sorted(str(p) for p in (tmp_path / fmt).glob("*.tar"))
        images[fmt] = [x for _, x in read_shard_images(shards)]
    assert len(images["raw"]) == 5
    assert all(a.shape == (3, 8, 8) and np.array_equal(a, b) for a, b in zip(images["png"], images["raw"]))
