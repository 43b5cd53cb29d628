"""The shards source: per-rank/worker streams, one-epoch coverage, resume, flips, resize, faults."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from bigtrain.config import DataConfig
from bigtrain.data import build_source
from bigtrain.data.shard_writer import make_shards
from bigtrain.data.shard_set import resolve_shards
from bigtrain.data.shards import ShardSource, shard_order
from bigtrain.data.tar_reader import MIN_SAMPLES_FOR_FRACTION, SkipCounter, TarFormatError, tar_members
from bigtrain.data.transforms import resize_images
from bigtrain.errors import ConfigError, DataError

N, RES, SHARD = 40, 8, 8  # 5 shards: more than 4 streams, not a multiple of them
FORMATS = ("png", "raw")  # make-shards --format values the fault tests cover


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
    """format -> (shard folder, x uint8 [N, H, W, 3], y): the same images in each format, every
    image distinct and left-right asymmetric."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N, RES, RES, 3), dtype=np.uint8)
    y = np.arange(N) % 4
    np.savez(root / "x.npz", x=x, y=y)
    for image_format in FORMATS:
        make_shards(root / "x.npz", root / image_format, shard_size=SHARD, image_format=image_format, progress=False)
    return {image_format: (root / image_format, x, y) for image_format in FORMATS}


@pytest.fixture(scope="module")
def dataset(datasets) -> tuple[Path, np.ndarray, np.ndarray]:
    return datasets["png"]


def source(path: str | Path, *, rank: int = 0, world_size: int = 1, seed: int = 0, micro_batch: int = 4, **data) -> ShardSource:
    cfg = DataConfig(source="shards", path=str(path), resolution=data.pop("resolution", RES))
    for key, value in data.items():  # also fields config.py may not declare yet (shuffle_buffer, ...)
        setattr(cfg, key, value)
    return ShardSource(cfg, micro_batch=micro_batch, rank=rank, world_size=world_size, seed=seed)


def take(batches, n: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    return [next(batches) for _ in range(n)]


def keys(samples, n: int) -> list[str]:
    return [next(samples).key for _ in range(n)]


def test_two_ranks_two_workers_differ_and_one_epoch_covers_every_sample_once(dataset) -> None:
    out, _, _ = dataset
    streams, epoch = {}, []
    for rank in range(2):
        src = source(out / "dataset.json", rank=rank, world_size=2, shuffle_buffer=8)
        for worker in range(2):
            streams[rank, worker] = keys(src.samples(worker=worker, num_workers=2), 24)
            epoch += [s.key for s in src.samples(worker=worker, num_workers=2, resampled=False)]
    assert len(set(map(tuple, streams.values()))) == 4, "every (rank, worker) stream must be its own"
    assert sorted(int(k) for k in epoch) == list(range(N))


def test_shard_order_is_seeded_by_rank_worker_and_start() -> None:
    urls = tuple(f"s{i}.tar" for i in range(5))

    def first(rank: int, worker: int, start: int = 0) -> list[str]:
        order = shard_order(urls, seed=0, rank=rank, world_size=2, worker=worker, num_workers=2, start=start, resampled=True)
        return [next(order) for _ in range(10)]

    orders = [first(r, w) for r in range(2) for w in range(2)]
    assert all(sorted(o[:5]) == list(urls) and sorted(o[5:]) == list(urls) for o in orders)  # whole passes
    assert len(set(map(tuple, orders))) == 4
    assert first(0, 0, start=7) != first(0, 0)
    assert first(0, 0) == first(0, 0)


def test_fewer_shards_than_streams_still_feeds_everyone_differently(dataset) -> None:
    out, _, _ = dataset
    one_shard = str(out / "train-000000.tar")  # one shard: only the shuffle buffer's seed tells streams apart
    streams = []
    for rank in range(2):
        src = source(one_shard, rank=rank, world_size=2, shuffle_buffer=4)
        for worker in range(3):
            streams.append(keys(src.samples(worker=worker, num_workers=3), 3 * SHARD))
    assert len(set(map(tuple, streams))) == 6
    src = source(one_shard, shuffle_buffer=4)
    assert keys(src.samples(start=5), 3 * SHARD) != keys(src.samples(start=0), 3 * SHARD)


def test_batches_through_two_loader_workers(dataset) -> None:
    out, x, y = dataset
    src = source(out / "dataset.json", num_workers=2)
    assert src.info.shape == (3, RES, RES) and src.info.num_classes == 4
    by_image = {img.tobytes(): label for img, label in zip(x.transpose(0, 3, 1, 2), y)}
    batches = take(src.batches(), 6)
    for xb, yb in batches:
        assert xb.dtype == torch.uint8 and xb.shape == (4, 3, RES, RES)
        assert yb.dtype == torch.int64 and yb.shape == (4,)
        assert [by_image[img.numpy().tobytes()] for img in xb] == yb.tolist()
    again = take(source(out / "dataset.json", num_workers=2).batches(), 6)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again)), "same seed, same stream"
    other_rank = take(source(out / "dataset.json", num_workers=2, rank=1, world_size=2).batches(), 6)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other_rank))
    assert src.stats() == {"data/skipped": 0.0}


def test_resume_does_not_replay_the_served_stream(dataset) -> None:
    out, _, _ = dataset
    first = [xb for xb, _ in take(source(out / "dataset.json").batches(0), 6)]
    resumed = [xb for xb, _ in take(source(out / "dataset.json").batches(3 * 4), 3)]  # after 3 micro-batches of 4 samples
    assert not any(torch.equal(a, b) for a, b in zip(first[:3], resumed)), "resumed stream replays the start"
    assert not any(torch.equal(a, b) for a, b in zip(first[3:], resumed))  # a fresh draw, not a position
    with pytest.raises(ValueError, match="whole micro-batches"):
        next(source(out / "dataset.json").batches(3))


def test_xflip_mirrors_some_images(dataset) -> None:
    out, x, _ = dataset
    plain = {img.tobytes() for img in x.transpose(0, 3, 1, 2)}
    mirrored = {img[:, :, ::-1].tobytes() for img in x.transpose(0, 3, 1, 2)}
    images = [img.numpy().tobytes() for xb, _ in take(source(out / "dataset.json", xflip=True).batches(), 10) for img in xb]
    assert all(img in plain or img in mirrored for img in images)
    assert any(img in plain for img in images) and any(img in mirrored for img in images)


@pytest.mark.parametrize("resolution", [4, 16])
def test_resize_on_the_fly(dataset, resolution: int) -> None:
    out, x, _ = dataset
    src = source(out / "dataset.json", resolution=resolution)
    assert src.info.shape == (3, resolution, resolution)
    expected = resize_images(torch.from_numpy(x).permute(0, 3, 1, 2), resolution)
    for sample in src.samples(resampled=False):
        assert torch.equal(sample.image, expected[int(sample.key)])


def test_brace_pattern_lists_and_pipe_urls(dataset) -> None:
    out, _, _ = dataset
    pattern = str(out / "train-{000000..000004}.tar")
    shards = resolve_shards(pattern)
    assert len(shards.urls) == 5 and shards.num_classes == 4  # dataset.json beside the shards
    joined = f"{out}/train-{{000000..000001}}.tar::{out}/train-000004.tar"
    assert [Path(u).name for u in resolve_shards(joined).urls] == ["train-000000.tar", "train-000001.tar", "train-000004.tar"]
    piped = source(f"pipe:cat {out}/train-{{000000..000004}}.tar", shuffle_buffer=8)
    assert piped.info.num_classes == 0 and piped.info.shape == (3, RES, RES)  # no dataset.json: unlabelled
    assert sorted(int(s.key) for s in piped.samples(resampled=False)) == list(range(N))
    assert take(piped.batches(), 1)[0][1] is None
    described = source(f"pipe:cat {out}/train-{{000000..000004}}.tar", dataset_json=str(out / "dataset.json"))
    assert described.info.num_classes == 4 and described.spec.shards.expected(described.spec.shards.urls[0]) == SHARD
    with pytest.raises(ConfigError, match="data.dataset_json"):
        source(f"pipe:cat {out}/dataset.json")


def test_build_source_makes_a_shard_source(dataset) -> None:
    out, _, _ = dataset
    cfg = DataConfig(source="shards", path=str(out / "dataset.json"), resolution=RES)
    src = build_source(cfg, micro_batch=2, rank=0, world_size=1, seed=0)
    assert isinstance(src, ShardSource) and next(src.batches())[0].shape == (2, 3, RES, RES)


# ---- faults ----


def damaged_copy(dataset, tmp_path: Path) -> tuple[Path, int]:
    """A copy with one corrupt image in shard 0 and shard 1 cut inside its 4th sample.

    Returns (dataset.json, samples lost in total).
    """
    out, _, _ = dataset
    copy = tmp_path / "damaged"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    with tarfile.open(copy / "train-000000.tar") as tar:
        image = next(m for m in tar.getmembers() if not m.name.endswith(".cls"))
    with open(copy / "train-000000.tar", "r+b") as f:
        f.seek(image.offset_data)
        f.write(b"\0" * image.size)  # same length: the tar stays valid, the image does not
    with tarfile.open(copy / "train-000001.tar") as tar:
        members = tar.getmembers()  # .cls, image per sample
    cut = members[7].offset_data + members[7].size // 2  # inside the 4th sample's image
    (copy / "train-000001.tar").write_bytes((copy / "train-000001.tar").read_bytes()[:cut])
    return copy / "dataset.json", 1 + (SHARD - 3)


@pytest.mark.parametrize("image_format", FORMATS)
def test_corrupt_and_truncated_samples_are_skipped_and_counted(datasets, tmp_path: Path, image_format: str) -> None:
    meta, lost = damaged_copy(datasets[image_format], tmp_path)
    counter = SkipCounter(max_fraction=1.0)
    epoch = list(source(meta).samples(resampled=False, counter=counter))
    assert len(epoch) == N - lost and counter.skipped == lost

    src = source(meta, num_workers=2, max_skipped_fraction=0.5)
    assert len(take(src.batches(), 30)) == 30  # training goes on
    assert src.stats()["data/skipped"] >= lost  # each pass over the shards skips them again


@pytest.mark.parametrize("image_format", FORMATS)
def test_too_many_skips_stop_with_the_shard_named(datasets, tmp_path: Path, image_format: str) -> None:
    meta, _ = damaged_copy(datasets[image_format], tmp_path)
    src = source(meta, num_workers=2, max_skipped_fraction=0.0)
    with pytest.raises(DataError) as err:
        take(src.batches(), 30)
    message = str(err.value)
    assert "\n" not in message and "max_skipped_fraction" in message
    assert "train-000000.tar" in message or "train-000001.tar" in message


class _MakesAFolder:
    """Unpickling this creates the folder `path`: the proof that a payload would run code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def _npy(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **save)
    return buf.getvalue()


def _bad_raw_members(marker: Path) -> dict[str, bytes]:
    """.npy members the raw reader must refuse (not one of them is unpickled)."""
    good = np.zeros((RES, RES, 3), np.uint8)
    return {
        "pickled_npy": _npy(np.array([_MakesAFolder(marker)], dtype=object), allow_pickle=True),
        "plain_pickle": pickle.dumps(_MakesAFolder(marker)),
        "float_pixels": _npy(good.astype(np.float32)),
        "wrong_channels": _npy(good[:, :, :1]),
        "short_pixels": _npy(good)[:-1],
        "extra_bytes": _npy(good) + b"\0",
    }


def test_raw_members_that_are_not_plain_uint8_pixels_are_skipped_never_unpickled(tmp_path: Path) -> None:
    bad = _bad_raw_members(tmp_path / "unpickled")
    np.load(io.BytesIO(_bad_raw_members(tmp_path / "proof")["pickled_npy"]), allow_pickle=True)
    assert (tmp_path / "proof").exists(), "the payload must really run code when unpickled"
    rng = np.random.default_rng(1)
    with wds.TarWriter(str(tmp_path / "s.tar"), encoder=False) as tar:  # no dataset.json: unlabelled
        tar.write({"__key__": "00000000", "npy": _npy(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8))})
        for i, data in enumerate(bad.values()):
            tar.write({"__key__": f"{i + 1:08d}", "npy": data})
        fortran = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
        tar.write({"__key__": "99999999", "npy": _npy(np.asfortranarray(fortran))})  # valid, numpy's slow path
    counter = SkipCounter(max_fraction=1.0)
    samples = {s.key: s for s in source(tmp_path / "s.tar").samples(resampled=False, counter=counter)}
    assert not (tmp_path / "unpickled").exists()
    assert sorted(samples) == ["00000000", "99999999"] and counter.skipped == len(bad)
    assert torch.equal(samples["99999999"].image, torch.from_numpy(fortran).permute(2, 0, 1))


def test_missing_or_broken_shard_errors_clearly(dataset, tmp_path: Path) -> None:
    out, _, _ = dataset
    with pytest.raises(DataError, match=r"train-000005\.tar: shard not found \(and 4 more of 10 shards\)"):
        source(f"{out}/train-{{000000..000009}}.tar")
    for f in out.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "train-000000.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DataError, match=r"train-000000\.tar: not a tar file"):
        source(tmp_path / "dataset.json")
    with pytest.raises(DataError, match="cannot read dataset.json"):
        source(tmp_path / "nothing.json")
    src = source(f"pipe:cat {out}/train-000000.tar::pipe:cat {tmp_path}/gone.tar", shuffle_buffer=0)
    with pytest.raises(DataError, match="gone.tar: cannot read shard"):
        list(src.samples(resampled=False))


@pytest.mark.parametrize("key, value", [("shuffle_buffer", -1), ("max_skipped_fraction", 1.5)])
def test_bad_settings_are_config_errors(dataset, key: str, value: float) -> None:
    out, _, _ = dataset
    with pytest.raises(ConfigError) as err:
        source(out / "dataset.json", **{key: value})
    assert err.value.key == f"data.{key}"


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_reads_long_names_in_every_format(tmp_path: Path, fmt: int) -> None:
    files = {"a" * 120 + "/00000001.png": b"x" * 700, "short/00000002.cls": b"3", "00000003.txt": b""}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        tar.addfile(_dir_info("a_folder"))
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert dict(tar_members(io.BytesIO(buf.getvalue()))) == files
    with pytest.raises(TarFormatError):
        list(tar_members(io.BytesIO(buf.getvalue()[:1500])))  # cut inside the first file


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_gzipped_shards_are_read(dataset, tmp_path: Path) -> None:
    out, _, _ = dataset
    (tmp_path / "s-000000.tar.gz").write_bytes(gzip.compress((out / "train-000000.tar").read_bytes()))
    src = source(tmp_path / "s-000000.tar.gz")
    assert len(list(src.samples(resampled=False))) == SHARD


def test_skip_fraction_is_measured_over_at_least_min_samples() -> None:
    counter = SkipCounter(max_fraction=0.1)
    for _ in range(MIN_SAMPLES_FOR_FRACTION // 10):
        counter.ok()
        counter.bad("s.tar", "undecodable")  # read, then skipped: counted once in `seen`
    assert (counter.seen, counter.skipped) == (MIN_SAMPLES_FOR_FRACTION // 10, MIN_SAMPLES_FOR_FRACTION // 10)
    with pytest.raises(DataError, match=r"^t\.tar: cut; 101 of 101 samples"):
        counter.lost("t.tar", 1, "cut")


@pytest.fixture
def http_server(dataset):
    """The shard folder served over HTTP on localhost (webdataset fetches http URLs with curl)."""
    import functools
    import http.server
    import threading

    out, _, _ = dataset
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_urls_stream_every_sample(dataset, http_server) -> None:
    out, x, _ = dataset
    src = source(f"{http_server}/train-{{000000..000004}}.tar", dataset_json=str(out / "dataset.json"), shuffle_buffer=8)
    assert src.info.num_classes == 4
    samples = list(src.samples(resampled=False))
    assert sorted(int(s.key) for s in samples) == list(range(N))
    for s in samples:
        assert torch.equal(s.image, torch.from_numpy(x[int(s.key)]).permute(2, 0, 1))
    # a dataset.json URL: its shards are found beside it, on the same server
    remote = source(f"{http_server}/dataset.json", shuffle_buffer=8)
    assert remote.info.num_classes == 4 and sorted(int(s.key) for s in remote.samples(resampled=False)) == list(range(N))
    gone = source(f"{http_server}/train-000000.tar::{http_server}/gone.tar", shuffle_buffer=0)
    with pytest.raises(DataError, match="gone.tar"):
        list(gone.samples(resampled=False))


# ---- foreign shards (webdataset's ShardWriter, img2dataset): labels without a dataset.json ----


def _foreign_shards(folder: Path, labels: list[int | None], member: str = "cls") -> str:
    """Shards as webdataset's ShardWriter writes them: KEY.png (+ KEY.cls), no dataset.json."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    with wds.ShardWriter(str(folder / "s-%03d.tar"), maxcount=8, verbose=0) as sink:
        for i, label in enumerate(labels):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(RES, RES, 3), dtype=np.uint8)).save(buf, format="PNG")
            sample = {"__key__": f"{i:05d}", "png": buf.getvalue()}
            if label is not None:
                sample[member] = str(label).encode()
            sink.write(sample)
    return str(folder / "s-{000..001}.tar")


@pytest.mark.parametrize("member", ["cls", "label"])
def test_foreign_shards_serve_their_labels_when_the_config_names_classes(tmp_path, member):
    labels = [i % 3 for i in range(16)]
    path = _foreign_shards(tmp_path / "s", labels, member)
    cfg = DataConfig(source="shards", path=path, resolution=RES, shuffle_buffer=0)
    src = build_source(cfg, micro_batch=16, rank=0, world_size=1, seed=0, num_classes=3)
    assert src.info.num_classes == 3
    x, y = next(src.batches())
    assert sorted(y.tolist()) == sorted(labels)  # one epoch: every sample once, with its own label
    assert build_source(cfg, micro_batch=16, rank=0, world_size=1, seed=0).info.num_classes == 0  # unconditional: labels ignored


def test_foreign_label_out_of_range_or_missing_is_one_clear_error(tmp_path):
    cfg = DataConfig(source="shards", path=_foreign_shards(tmp_path / "big", [0, 1, 5, 2] * 4), resolution=RES, shuffle_buffer=0)
    with pytest.raises(DataError, match=r"has label 5, outside 0\.\.2 of model\.num_classes"):
        next(build_source(cfg, micro_batch=16, rank=0, world_size=1, seed=0, num_classes=3).batches())
    cfg = DataConfig(source="shards", path=_foreign_shards(tmp_path / "none", [None] * 16), resolution=RES, shuffle_buffer=0)
    with pytest.raises(DataError, match=r"has no label \(model\.num_classes is 3\): give every sample a KEY\.cls"):
        next(build_source(cfg, micro_batch=16, rank=0, world_size=1, seed=0, num_classes=3).batches())


def test_missing_npz_names_data_path(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: data file not found"):
        build_source(DataConfig(source="npz", path=str(tmp_path / "nope.npz")), micro_batch=2, rank=0, world_size=1, seed=0)


def test_conditional_training_on_foreign_shards_through_the_cli(tmp_path):
    from tests.conftest import run_cli, tiny_config, write_config

    labelled = _foreign_shards(tmp_path / "s", [i % 3 for i in range(16)])
    cfg = tiny_config(tmp_path, Path("unused"), data={"source": "shards", "path": labelled, "shuffle_buffer": 0}, model={"num_classes": 3}, train={"total_kimg": 0.032})
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    assert out.returncode == 0, out.stderr[-2000:]
    cfg["data"]["path"], cfg["run"]["name"] = _foreign_shards(tmp_path / "u", [None] * 16), "unlabelled"
    out = run_cli("train", str(write_config(tmp_path / "u.yaml", cfg)))
    assert out.returncode == 2 and "has no label (model.num_classes is 3): give every sample a KEY.cls" in out.stderr, out.stderr[-2000:]
