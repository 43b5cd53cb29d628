"""`bigtrain report` and `bigtrain eval --all-checkpoints` (issue 26, points 5-7) through the
installed console script, on two real tiny runs with periodic IS (trained once for the module,
in this process, to keep the default run short): the table holds the numbers the runs logged
and the protocol a submission states, incomparable rows are refused with the field named, the
checkpoint scores are resumable, and the plot is a real PNG."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess

import pytest
import yaml

from bigtrain.eval.provenance import config_sha256
from tests.conftest import REPO, tiny_config, write_config, write_images_npz
from tests.smoke.test_user_path import bigtrain, console_script, ok

EVAL_NUM = 20  # 2 per IS split: with fewer, every split scores IS = 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sharp_weights):
    """Two runs (seeds 1 and 2) with IS of 20 samples at 0.064 kimg and checkpoints at 0.032 and 0.064."""
    import torch

    from bigtrain.engine.loop import train
    from bigtrain.families import load_config

    tmp = tmp_path_factory.mktemp("report")
    data = write_images_npz(tmp / "d.npz", n=32, res=8)
    for name, seed in (("a", 1), ("b", 2)):
        cfg = tiny_config(
            tmp, data, run={"name": name, "seed": seed}, train={"total_kimg": 0.064},
            eval={"every_kimg": 0.064, "num_samples": EVAL_NUM, "metrics": ["is"], "batch_size": 10,
                  "inception_weights": str(sharp_weights)},
            checkpoint={"every_kimg": 0.032},
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            train(load_config(write_config(tmp / f"{name}.yaml", cfg))).release()
    return tmp, data


def _logged(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/is" in r]


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _eval_all(run, weights, *extra) -> dict:
    args = ["eval", "--run", str(run), "--all-checkpoints", "--metrics", "is", "--batch-size", "10",
            "--weights", str(weights), "--no-download", "--device", "cpu"]  # fmt: skip
    return json.loads(ok(bigtrain(*args, *(extra or ("--num", str(EVAL_NUM))), cwd=run)).stdout)


def test_report_and_plot_through_the_console_script(tmp_path):
    """The default run's console-script path: two runs' records -> a markdown file and a PNG."""
    from tests.unit.test_report import _result, _run

    a = _run(tmp_path / "a", [_result(1.0, {"fid": 20.0}), _result(2.0, {"fid": 15.0})])
    b = _run(tmp_path / "b", [_result(1.0, {"fid": 18.0}), _result(2.0, {"fid": 16.0})])
    table, png = tmp_path / "t.md", tmp_path / "curves.png"
    argv = ["report", str(a), str(b), "--out", str(table)] + (["--plot", str(png)] if _has_matplotlib() else [])
    ok(bigtrain(*argv, cwd=tmp_path))
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| run | checkpoint | kimg | fid |") and lines[2].startswith("| a | step-00002000 | 2 | 15 |")
    assert "- selection: lowest fid of 2 evaluations in training" in lines
    if _has_matplotlib():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


# slow (two trainings with periodic IS and the console script: ~1 min on 2 loaded cores); in the
# default run: test_report_and_plot_through_the_console_script above and tests/unit/test_report.py
@pytest.mark.slow
def test_report_tables_two_real_runs_with_their_protocol(runs, tmp_path):
    tmp, data = runs
    a, b = tmp / "runs" / "a", tmp / "runs" / "b"
    rows = _csv(ok(bigtrain("report", str(a), str(b), "--format", "csv", cwd=tmp_path)).stdout)
    assert [r["run"] for r in rows] == ["a", "b"]
    for row, run in zip(rows, (a, b)):
        last = _logged(run)[-1]  # no FID: the latest evaluation is the run's row
        assert float(row["is"]) == pytest.approx(last["eval/is"], rel=1e-5) and float(row["is"]) > 1.001
        assert row["selection"] == "latest of 1 evaluations in training" and float(row["kimg"]) == 0.064
        assert row["checkpoint"] == "step-00000004"
        assert (row["num_generated"], row["ema"], row["seed"], row["repeats"]) == (str(EVAL_NUM), "G_ema", "0", "1")
        assert row["label_sampling"] == "none (unconditional)" and row["images_seen"] == "64"
        assert row["train_processes"] == "1" and row["train_device"].startswith("cpu") and float(row["wall_clock_s"]) > 0
        assert row["code_version"].startswith("bigtrain ") and row["network"] == "tf-inception-v3-2015-12-05"
        assert row["data"] == str(data) and row["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        assert row["config_sha256"] == config_sha256(yaml.safe_load((run / "config.yaml").read_text()))
    assert rows[0]["is"] != rows[1]["is"] and rows[0]["config_sha256"] != rows[1]["config_sha256"]

    table = tmp_path / "table.md"
    ok(bigtrain("report", str(a), str(b), "--out", str(table), cwd=tmp_path))
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| run | checkpoint | kimg | is | is_std |") and len([x for x in lines if x.startswith("| a ")]) == 1
    assert f"- num_generated: {EVAL_NUM}" in lines and "- label_sampling: none (unconditional)" in lines
    again = bigtrain("report", str(a), "--out", str(table), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert table.read_text().splitlines() == lines  # nothing overwritten



# slow (subprocesses scoring checkpoints: ~1 min on 2 loaded cores); in the default run:
# tests/unit/test_report.py's sweep tests (resume, --part, best/) with a stand-in evaluation
@pytest.mark.slow
def test_eval_all_checkpoints_is_resumable_and_report_picks_from_its_scores(runs, sharp_weights, tmp_path):
    tmp, _ = runs
    run, weights = tmp_path / "a", sharp_weights
    shutil.copytree(tmp / "runs" / "a", run)
    first = _eval_all(run, weights, "--num", str(EVAL_NUM), "--part", "1/2")  # a job array's task 1 of 2
    assert [(c["checkpoint"].split("/")[-1], c["status"]) for c in first["checkpoints"]] == [("step-00000004", "scored")]
    second = _eval_all(run, weights)
    assert [c["status"] for c in second["checkpoints"]] == ["scored", "skipped: scored already"]
    files = sorted((run / "evals").glob("*.json"))
    assert [f.name.split("-")[0:2] for f in files] == [["step", "00000002"], ["step", "00000004"]]
    stamps = [f.stat().st_mtime_ns for f in files]
    third = _eval_all(run, weights)
    assert [c["status"] for c in third["checkpoints"]] == ["skipped: scored already"] * 2
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # the checkpoint's score after training is the one training logged (same latents and Inception)
    scores = [json.loads(f.read_text()) for f in files]
    assert scores[1]["is"] == pytest.approx(_logged(run)[-1]["eval/is"], rel=1e-5) and scores[0]["is"] != scores[1]["is"]
    assert scores[0]["settings"]["num"] == EVAL_NUM and scores[0]["checkpoint"] == "step-00000002"

    rows = _csv(ok(bigtrain("report", str(run), "--format", "csv", cwd=tmp_path)).stdout)
    assert rows[0]["selection"] == "latest of 2 checkpoints scored by eval --all-checkpoints"
    assert rows[0]["source"] == "eval --all-checkpoints" and rows[0]["checkpoint"] == "step-00000004"
    every = json.loads(ok(bigtrain("report", str(run), "--all", "--format", "json", cwd=tmp_path)).stdout)
    assert [(r["source"], r["kimg"]) for r in every] == [
        ("training", 0.064), ("eval --all-checkpoints", 0.032), ("eval --all-checkpoints", 0.064)]


# slow (a subprocess scoring a checkpoint); in the default run: tests/unit/test_report.py's refusal
# and --force tests on runs' records
@pytest.mark.slow
def test_report_refuses_incomparable_rows_naming_the_field_and_force_marks_them(runs, sharp_weights, tmp_path):
    tmp, _ = runs
    a, b = tmp / "runs" / "a", tmp_path / "b"
    shutil.copytree(tmp / "runs" / "b", b)
    _eval_all(b, sharp_weights, "--num", "4", "--part", "1/2")  # b's row: its latest checkpoint scored on 4 samples
    refused = bigtrain("report", str(a), str(b), "--out", str(tmp_path / "t.md"), cwd=tmp_path)
    assert refused.returncode == 2 and "num_generated differs" in refused.stderr and "--force" in refused.stderr
    assert f"({EVAL_NUM})" in refused.stderr and "(4)" in refused.stderr and not (tmp_path / "t.md").exists()
    rows = _csv(ok(bigtrain("report", str(a), str(b), "--force", "--format", "csv", cwd=tmp_path)).stdout)
    assert [(r["run"], r["num_generated"], r["differs"]) for r in rows] == [("a", str(EVAL_NUM), ""), ("b", "4", "num_generated")]
