import numpy as np
import pytest
import torch

from bigtrain.config import DataConfig
from bigtrain.data import build_source
from bigtrain.data.npz import load_npz
from bigtrain.errors import ConfigError, DataError
from tests.conftest import write_images_npz


def _source(path, rank=0, seed=0, micro=5, **kw):
    return build_source(DataConfig(source="npz", path=str(path), **kw), micro_batch=micro, rank=rank, world_size=2, seed=seed)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("channels", [1, 3])
def test_layouts_and_channels(tmp_path, layout, channels):
    path = write_images_npz(tmp_path / "d.npz", n=12, res=8, channels=channels, layout=layout)
    src = _source(path, resolution=8)
    assert src.info.kind == "image" and src.info.shape == (channels, 8, 8) and src.info.num_classes == 4
    x, y = next(src.batches())
    assert x.dtype == torch.uint8 and x.shape == (5, channels, 8, 8) and y.dtype == torch.int64
    raw = np.load(path)["x"]
    nchw = raw if layout == "nchw" else raw.transpose(0, 3, 1, 2)
    # every batch row is one of the stored images with its own label
    for xi, yi in zip(x, y):
        matches = [i for i in range(len(nchw)) if np.array_equal(nchw[i], xi.numpy())]
        assert matches and all(np.load(path)["y"][i] == yi for i in matches)


def test_resize_on_load(tmp_path):
    path = write_images_npz(tmp_path / "d.npz", n=6, res=8)
    src = _source(path, resolution=32)
    assert src.info.shape == (1, 32, 32)
    assert next(src.batches())[0].shape == (5, 1, 32, 32)


def test_vectors_without_labels(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32))
    src = _source(path)
    x, y = next(src.batches())
    assert src.info.kind == "vector" and src.info.shape == (2,) and src.info.num_classes == 0
    assert x.dtype == torch.float32 and x.shape == (5, 2) and y is None


def test_streams_are_seeded_per_rank_and_resumable(tmp_path):
    path = write_images_npz(tmp_path / "d.npz", n=12)
    take = lambda it, n: [next(it)[0] for _ in range(n)]
    a = take(_source(path, rank=0).batches(), 7)
    again = take(_source(path, rank=0).batches(), 7)
    other_rank = take(_source(path, rank=1).batches(), 7)
    resumed = take(_source(path, rank=0).batches(start=4 * 5), 3)  # start counts samples: 4 micro-batches of 5
    assert all(torch.equal(p, q) for p, q in zip(a, again))
    assert not all(torch.equal(p, q) for p, q in zip(a, other_rank))
    assert all(torch.equal(p, q) for p, q in zip(a[4:], resumed))
    # an epoch (12 samples) visits every sample once: first 12 stream positions are a permutation
    flat = torch.cat(a)[:12].flatten(1)
    assert len({tuple(r.tolist()) for r in flat}) == len({tuple(r.tolist()) for r in torch.from_numpy(np.load(path)["x"]).flatten(1)})


def test_xflip_mirrors_some_images(tmp_path):
    path = write_images_npz(tmp_path / "d.npz", n=40)
    plain = next(_source(path, micro=40).batches())[0]
    flipped = next(_source(path, micro=40, xflip=True).batches())[0]
    same_order = torch.equal(plain.flip(-1)[0], flipped[0]) or torch.equal(plain[0], flipped[0])
    assert same_order
    n_flipped = sum(not torch.equal(p, f) and torch.equal(p.flip(-1), f) for p, f in zip(plain, flipped))
    assert 5 < n_flipped < 35


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="data.path: data file not found"):  # the key to fix
        _source(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        _source(bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((3, 4, 4, 2), np.uint8))
    with pytest.raises(DataError, match="1 or 3 channels"):
        load_npz(wrong)
    with pytest.raises(ConfigError, match="data.path"):
        build_source(DataConfig(path=""), micro_batch=2, rank=0, world_size=1, seed=0)


def test_batches_of_another_size_are_the_same_stream_cut_differently(tmp_path):
    """The loop reads a stream in chunks and joins them into micro-batches of any multiple (a
    micro-batch that changes with the resolution): sample k is the same whatever the size."""
    path = write_images_npz(tmp_path / "d.npz", n=13, res=8)

    def read(start, size, n):  # n batches, joined; mirrored at random, so order and flips both count
        batches = _source(path, xflip=True).batches(start, size)
        return torch.cat([next(batches)[0] for _ in range(n)])

    whole = read(0, 12, 3)  # [36, 1, 8, 8]: nearly 3 epochs of 13
    assert torch.equal(read(0, 4, 9), whole)
    assert torch.equal(read(20, 4, 4), whole[20:36])
    assert not torch.equal(whole[:13], whole[13:26])  # the epochs differ: the check sees the order
