"""issue 26, points 5-7, in this process: `bigtrain report`'s rows, selection, refusal and plot on
runs' eval records; `eval --all-checkpoints`' bookkeeping (resume, --part, best/) with a
stand-in evaluation; the protocol's provenance fields and compare()'s warnings; the training
record a checkpoint keeps. tests/smoke/test_report.py runs the commands on real runs."""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from bigtrain.errors import BigtrainError
from bigtrain.eval import report, sweep
from bigtrain.eval.protocol import compare, side
from bigtrain.eval.provenance import data_sha256, label_sampling, training_record
from tests.conftest import tiny_config, write_config, write_images_npz

INCEPTION = {"network": "tf-inception-v3-2015-12-05", "resize": "tf1-bilinear-299", "weights_sha256": "ab" * 32,
             "standard_weights": True}  # fmt: skip


def _result(kimg: float, metrics: dict, *, num: int = 100, split: str | None = None, truncation=None) -> dict:
    """A result shaped as Evaluator makes it (sides from protocol.side, the training record)."""
    config = {"data": {"path": "/data/x.npz", "resolution": 8}, "run": {"name": "r"}}
    generated = side("RUN/checkpoints/step-%08d" % int(kimg * 1000), "generator", INCEPTION, num_images=num,
                     image_resolution=[8, 8], seed=0, truncation=truncation, ema=True, kimg=kimg,
                     label_sampling=label_sampling(0, None),
                     training=training_record(config, nimg=int(kimg * 1000), wall_clock_s=kimg * 10, processes=2,
                                              device="cpu: test", code="bigtrain test"))  # fmt: skip
    reference = side("/stats/ref.npz", "stats", INCEPTION, num_images=1000, split=split, xflip=False)
    return {**metrics, "protocol": {"generated": generated, "reference": reference, "kid_subset_size": 10}}


def _run(folder: Path, results: list[dict]) -> Path:
    """A run folder whose metrics.jsonl holds these results as periodic evaluation logs them."""
    folder.mkdir(parents=True)
    lines = []
    for step, r in enumerate(results, 1):
        record = {"step": step, "kimg": r["protocol"]["generated"]["kimg"]}
        record.update({f"eval/{k}": v for k, v in r.items()})
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _report(*argv: str, capsys) -> str:
    parser = argparse.ArgumentParser()
    report.add_report_arguments(parser)
    assert report.run_report(parser.parse_args(list(argv))) == 0
    return capsys.readouterr().out


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_one_row_per_run_chosen_by_lowest_fid_and_any_metric_key_gets_a_column(tmp_path, capsys):
    a = _run(tmp_path / "a", [_result(k, {"fid": f, "precision": p})
                              for k, f, p in ((1.0, 30.0, 0.5), (2.0, 12.5, 0.7), (3.0, 20.0, 0.6))])  # fmt: skip
    b = _run(tmp_path / "b", [_result(1.0, {"fid": {"mean": 9.0, "std": 0.5, "values": [8.5, 9.5]}})])
    rows = _csv(_report(str(a), str(b), "--format", "csv", capsys=capsys))
    assert [(r["run"], r["kimg"], r["fid"], r["precision"]) for r in rows[:1]] == [("a", "2.0", "12.5", "0.7")]
    assert rows[0]["selection"] == "lowest fid of 3 evaluations in training" and rows[0]["checkpoint"] == "step-00002000"
    assert (rows[1]["fid.mean"], rows[1]["fid.std"]) == ("9.0", "0.5")  # nested metrics (repeats) flattened
    assert rows[1]["selection"] == "latest of 1 evaluations in training"  # no plain fid number: the latest
    assert (rows[0]["images_seen"], rows[0]["train_processes"], rows[0]["wall_clock_s"]) == ("2000", "2", "20.0")
    every = json.loads(_report(str(a), "--all", "--format", "json", capsys=capsys))
    assert [r["fid"] for r in every] == [30.0, 12.5, 20.0]


def test_incomparable_rows_are_refused_naming_the_field_and_force_marks_it(tmp_path, capsys):
    a = _run(tmp_path / "a", [_result(1.0, {"fid": 10.0})])
    b = _run(tmp_path / "b", [_result(1.0, {"fid": 11.0}, split="test")])
    c = _run(tmp_path / "c", [_result(1.0, {"fid": 12.0}, truncation=0.5, num=50)])
    out = tmp_path / "t.csv"
    for other, field in ((b, "ref_split"), (c, "num_generated")):
        with pytest.raises(BigtrainError, match=f"{field} differs between a/step-00001000 .* and {other.name}/step-00001000 .*--force"):
            _report(str(a), str(other), "--out", str(out), capsys=capsys)
    assert not out.exists()
    rows = _csv(_report(str(a), str(b), str(c), "--force", "--format", "csv", capsys=capsys))
    assert [r["differs"] for r in rows] == ["", "ref_split", "num_generated, truncation"]
    table = _report(str(a), str(b), "--force", capsys=capsys)
    assert "| differs |" in table.splitlines()[0] or table.splitlines()[0].endswith("differs |")
    assert "- num_generated: 100" in table.splitlines()  # what every row shares: listed once


def test_report_bad_input(tmp_path, capsys):
    a = _run(tmp_path / "a", [_result(1.0, {"fid": 10.0})])
    with pytest.raises(BigtrainError, match="nope: run directory not found"):
        _report(str(a), str(tmp_path / "nope"), capsys=capsys)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BigtrainError, match="empty: no evaluation to report.*--all-checkpoints"):
        _report(str(tmp_path / "empty"), capsys=capsys)
    (tmp_path / "old.md").write_text("mine")
    with pytest.raises(BigtrainError, match="already exists"):
        _report(str(a), "--out", str(tmp_path / "old.md"), capsys=capsys)
    assert (tmp_path / "old.md").read_text() == "mine"


def test_plot_is_a_png_that_grows_with_the_number_of_points(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install bigtrain[plot]) is not installed")
    import numpy as np
    from PIL import Image

    sizes = []
    for n in (3, 40):  # the same axes (first and last points span both ranges), more points between
        kimgs = np.linspace(1.0, 40.0, n)
        fids = [50.0, 5.0] + [5.0 + (i * 7919 % 13) * 3.5 for i in range(n - 2)]
        run = _run(tmp_path / f"run{n}", [_result(float(k), {"fid": f}) for k, f in zip(kimgs, fids)])
        png = tmp_path / f"plot{n}.png"
        _report(str(run), "--plot", str(png), capsys=capsys)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = np.asarray(Image.open(png).convert("RGB"))
        assert pixels.shape[0] > 100 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not a blank image
        sizes.append(png.stat().st_size)
    assert sizes[1] > sizes[0]
    with pytest.raises(BigtrainError, match="FILE.png"):
        _report(str(tmp_path / "run3"), "--plot", str(tmp_path / "plot.jpg"), capsys=capsys)


# ---- eval --all-checkpoints -------------------------------------------------------------------


def _checkpoints(run: Path, names: list[str]) -> list[Path]:
    for name in names:
        (run / "checkpoints" / name).mkdir(parents=True)
    return [run / "checkpoints" / n for n in names]


def _sweep(run: Path, folders: list[Path], *argv: str, images: dict) -> tuple[dict, list[str]]:
    """run_all_checkpoints with a stand-in evaluation; (its JSON, the checkpoints it evaluated)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run")
    parser.add_argument("--checkpoint")
    parser.add_argument("--num", type=int, default=10)
    sweep.add_sweep_arguments(parser)
    args = parser.parse_args(["--run", str(run), "--all-checkpoints", *argv])
    evaluated = []

    def evaluation(one):
        evaluated.append(Path(one.checkpoint).name)
        assert one.all_checkpoints is False and one.num == args.num
        return _result(images[Path(one.checkpoint).name] / 1000, {"fid": float(len(evaluated))}, num=one.num)

    @contextlib.contextmanager
    def process_group():
        yield 0, 1, 0

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert sweep.run_all_checkpoints(args, evaluation, lambda r: folders, process_group) == 0
    return json.loads(buffer.getvalue()), evaluated


def test_all_checkpoints_resumes_takes_its_part_and_skips_best_when_it_is_a_kept_step(tmp_path, capsys):
    run = tmp_path / "run"
    folders = _checkpoints(run, ["step-00000002", "step-00000004", "best"])
    images = {"step-00000002": 32, "step-00000004": 64, "best": 64}
    out, evaluated = _sweep(run, folders, "--part", "1/2", images=images)
    assert evaluated == ["step-00000004"] and [c["status"] for c in out["checkpoints"]] == ["scored"]
    out, evaluated = _sweep(run, folders, images=images)  # resumes: step-4 is not scored again
    assert evaluated == ["step-00000002", "best"]
    assert [c["status"] for c in out["checkpoints"]] == [
        "scored", "skipped: scored already", "same checkpoint as step-00000004: not stored"]  # fmt: skip
    stored = sorted(p.name for p in (run / "evals").iterdir())
    assert len(stored) == 2 and all(n.startswith(("step-00000002-", "step-00000004-")) for n in stored)
    assert _sweep(run, folders, images=images)[1] == ["best"]  # best/ is only known to repeat step-4 once loaded
    assert _sweep(run, folders, "--num", "20", images=images)[1] == ["step-00000002", "step-00000004", "best"]
    assert len(list((run / "evals").iterdir())) == 4  # other settings: stored beside, nothing replaced
    rows = _csv(_report(str(run), "--all", "--format", "csv", "--force", capsys=capsys))
    assert sorted((r["checkpoint"], r["num_generated"]) for r in rows) == [
        ("step-00000002", "10"), ("step-00000002", "20"), ("step-00000004", "10"), ("step-00000004", "20")]


def test_all_checkpoints_bad_input(tmp_path):
    run = tmp_path / "run"
    folders = _checkpoints(run, ["step-00000002"])
    for argv, message in ((["--part", "2/2"], "--part takes I/N"), (["--part", "x"], "--part takes I/N"),
                          (["--checkpoint", str(folders[0])], "leave out --checkpoint")):  # fmt: skip
        with pytest.raises(BigtrainError, match=message):
            _sweep(run, folders, *argv, images={})
    with pytest.raises(BigtrainError, match="no checkpoint to score"):
        _sweep(run, [], images={})


# ---- the protocol's provenance fields ---------------------------------------------------------


def test_data_sha256_of_each_kind_of_data_set(tmp_path):
    npz = write_images_npz(tmp_path / "d.npz", n=4, res=4)
    assert data_sha256(str(npz)) == hashlib.sha256(npz.read_bytes()).hexdigest()  # `sha256sum d.npz`
    shards = tmp_path / "shards"
    shards.mkdir()
    listing = {"shards": [{"name": "s-000000.tar", "sha256": "1" * 64}, {"name": "s-000001.tar", "sha256": "2" * 64}]}
    (shards / "dataset.json").write_text(json.dumps(listing))
    made = data_sha256(str(shards))
    assert made and made == data_sha256(str(shards / "dataset.json"))  # the folder or its dataset.json alike
    assert data_sha256(str(shards), max_bytes=1) == made  # recorded sums: nothing to read, no limit
    assert data_sha256(str(npz), max_bytes=npz.stat().st_size - 1) is None  # training reads no more than it may
    listing["shards"][1]["sha256"] = "3" * 64
    (shards / "dataset.json").write_text(json.dumps(listing))
    assert data_sha256(str(shards)) != made  # another shard content: another hash
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "0.png").write_bytes(b"one")
    first = data_sha256(str(folder))
    (folder / "0.png").rename(folder / "1.png")
    assert first and data_sha256(str(folder)) != first  # a folder's content includes its names
    assert data_sha256("https://host/data-{000..009}.tar") is None and data_sha256(str(tmp_path / "gone")) is None


def test_compare_warns_on_xflip_and_on_a_reference_of_other_data():
    trained = {"data": "/d/train.npz", "data_sha256": "a" * 64}
    generated = side("ckpt", "generator", INCEPTION, training=trained)
    same = side("ref.npz", "stats", INCEPTION, content_sha256="a" * 64, xflip=False)
    other = side("ref.npz", "stats", INCEPTION, content_sha256="b" * 64, xflip=False)
    assert compare(generated, same) == []
    warned = compare(generated, other, "generated", "reference")
    assert len(warned) == 1 and "other data" in warned[0] and "/d/train.npz" in warned[0] and "--split" in warned[0]
    assert compare(generated, {**other, "split": "test"}) == []  # a declared held-out split is other data on purpose
    flipped = side("mirror.npz", "npz", INCEPTION, xflip=True)
    warned = compare(same, flipped, "A", "B")
    assert warned == ["B holds x-flipped copies of its images and A does not"]


def test_reference_statistics_record_xflip_content_hash_and_code_version(tmp_path, weights, capsys):
    from bigtrain.eval import commands

    data = write_images_npz(tmp_path / "d.npz", n=3, res=8)
    parser = argparse.ArgumentParser()
    commands.add_ref_stats_arguments(parser)
    argv = [str(data), str(tmp_path / "ref.npz"), "--weights", str(weights), "--no-download", "--device", "cpu"]
    assert commands.run_ref_stats(parser.parse_args(argv)) == 0
    meta = json.loads(capsys.readouterr().out)["protocol"]
    assert meta["xflip"] is False and meta["content_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta["code_version"].startswith("bigtrain ")


def test_checkpoints_keep_the_training_record_and_wall_clock_carries_over_a_resume(tmp_path):
    from bigtrain.engine import checkpoint
    from bigtrain.engine.generation import load_generation
    from bigtrain.engine.loop import train
    from bigtrain.eval.provenance import config_sha256
    from bigtrain.families import load_config

    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, model={"num_classes": 4},
                                                         checkpoint={"every_kimg": 0.032}))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        train(load_config(cfg, ["train.total_kimg=0.032"])).release()
    run = tmp_path / "runs" / "tiny"
    first = run / "checkpoints" / "step-00000002"
    state = torch.load(first / checkpoint.TRAINER_FILE, weights_only=True)
    assert 0 < state["wall_clock_s"] < 600 and state["device"].startswith("cpu") and state["code_version"]
    state["wall_clock_s"] = 1000.0  # as if the first session had trained for 1000 s
    torch.save(state, first / checkpoint.TRAINER_FILE)
    with torch.random.fork_rng(devices=[]):
        train(load_config(cfg, ["train.total_kimg=0.064", "train.resume=auto"])).release()
    loaded = load_generation(str(run))
    record = loaded.training
    assert 1000.0 < record["wall_clock_s"] < 1600 and record["images_seen"] == 64 and record["processes"] == 1
    assert record["data"] == str(data) and record["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert record["config_sha256"] == config_sha256(torch.load(run / "checkpoints" / "step-00000004" /
                                                               checkpoint.TRAINER_FILE, weights_only=True)["config"])
    assert loaded.label_sampling(None) == "uniform over 4 classes" and loaded.label_sampling(2) == "class 2 only"
