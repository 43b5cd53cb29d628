"""The user's path is the contract (issue 23): every command a user types runs end to end through
the INSTALLED console script (`bigtrain ...` in a subprocess, as from a shell), and each test
checks what the user gets (files, JSON keys, image sizes, exit codes), not only exit 0.

One tiny class-conditional run and one tiny Pix2Pix run are trained once for the module and
shared by sample / eval / fid / export / translate. The README's and slurm/README.md's
`bigtrain ...` lines are checked against the parser, so a renamed flag fails here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import REPO, tiny_config, write_config, write_images_npz

DOCS = (REPO / "README.md", REPO / "slurm" / "README.md")
ENV = {"ACCELERATE_USE_CPU": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}


def console_script() -> str:
    """The `bigtrain` that `pip install` put beside this interpreter (the one a user types)."""
    path = Path(sys.executable).parent / "bigtrain"
    found = str(path) if path.is_file() else shutil.which("bigtrain")
    assert found, f"no `bigtrain` console script beside {sys.executable} or on PATH: install the package (pip install -e .)"
    return found


def bigtrain(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **ENV})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def subcommands() -> dict[str, set[str]]:
    """Every subcommand of the parser, with its option strings (from the parser itself)."""
    from bigtrain.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {s for a in sub._actions for s in a.option_strings} for name, sub in action.choices.items()}


# ---- one tiny run of each kind, shared ------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def run_dir(work) -> Path:
    """A class-conditional mlp run on 8x8 one-channel images with 4 classes, through `bigtrain train`."""
    data = write_images_npz(work / "d.npz", n=48, res=8, classes=4)
    cfg = write_config(work / "c.yaml", tiny_config(work, data, model={"num_classes": 4}, run={"name": "tiny", "out_dir": str(work / "runs"), "seed": 1}))
    out = ok(bigtrain("train", str(cfg), cwd=work))
    run = work / "runs" / "tiny"
    assert f"run directory:  {run}" in out.stdout and "checkpoint:     " in out.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    return run


@pytest.fixture(scope="module")
def weights(work) -> Path:
    """A random-weights FID Inception file in the standard layout (no download in tests)."""
    from bigtrain.eval.inception import InceptionV3

    path = work / "random-inception.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(InceptionV3().state_dict(), path)
    return path


def inception(weights: Path) -> list[str]:
    return ["--weights", str(weights), "--no-download", "--device", "cpu", "--batch-size", "8"]


# ---- help and documentation ------------------------------------------------------------------

def test_help_of_every_command():
    commands = subcommands()
    top = ok(bigtrain("--help", cwd=REPO))
    assert all(name in top.stdout for name in commands)
    with ThreadPoolExecutor(2) as pool:
        helps = dict(zip(commands, pool.map(lambda name: bigtrain(name, "--help", cwd=REPO), commands)))
    for name, proc in helps.items():
        ok(proc)
        assert proc.stdout.startswith(f"usage: bigtrain {name}"), name
        assert all(opt in proc.stdout for opt in commands[name] if opt.startswith("--") and opt != "--help"), name
    assert {"train", "sample", "eval", "fid", "ref-stats", "make-shards", "make-toy", "translate", "export", "demo"} <= set(commands)
    bad = bigtrain("no-such-command", cwd=REPO)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def documented_commands(text: str) -> list[str]:
    """Every `bigtrain ...` command in `text`: lines of fenced code blocks (continuations joined)
    and inline code spans; prose that merely says "bigtrain" is no command."""
    found = []
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    for block in fenced:
        for line in block.replace("\\\n", " ").splitlines():
            found += _commands_in(line)
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        found += _commands_in(span.replace("\n", " "))
    return found


def _commands_in(line: str) -> list[str]:
    line = re.sub(r"(^|\s)#.*", "", line)  # shell comments
    return [m.group(0) for m in re.finditer(r"(?<![\w./-])bigtrain\s+[a-z][\w-]*[^|;&`]*", line)]


def test_every_documented_command_and_flag_exists():
    commands = subcommands()
    checked = 0
    for doc in DOCS:
        for command in documented_commands(doc.read_text()):
            words = command.split()
            name = words[1]
            assert name in commands, f"{doc.name}: `{command}`: bigtrain has no command {name!r}"
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(words[2:])):
                assert flag in commands[name], f"{doc.name}: `{command}`: `bigtrain {name}` has no option {flag}"
            checked += 1
    assert checked >= 30  # the README documents every command; a broken extraction finds few


def test_the_documentation_check_catches_a_wrong_flag():
    text = "Run `bigtrain sample --run R --numbr 4` or\n```bash\nbigtrain evaluate --run R\n```\n"
    assert documented_commands(text) == ["bigtrain evaluate --run R", "bigtrain sample --run R --numbr 4"]


# ---- demo and train --------------------------------------------------------------------------

def test_demo_trains_the_bundled_config_and_says_where_things_are(work):
    out = ok(bigtrain("demo", "--out-dir", str(work / "demo-runs"), "train.total_kimg=0.5", "log.progress_bar=false", cwd=work))
    run = work / "demo-runs" / "demo"
    for label in ("run directory:", "sample grid:", "tensorboard:", "checkpoint:", "metrics:"):
        assert label in out.stdout, label
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kimg"] == 0.512 and np.isfinite(rows[-1]["loss/D"])
    grid = Image.open(sorted((run / "samples").glob("fakes-*.png"))[-1])
    assert grid.size == (10 * 32, 10 * 32)  # demo.yaml's 10 x 10 digits at 32x32, a digit per row
    assert (work / "demo-runs" / "demo-data" / "digits.npz").is_file()
    again = ok(bigtrain("demo", "--out-dir", str(work / "demo-runs"), "train.total_kimg=0.5", cwd=work))  # finds it finished
    assert "run directory:" in again.stdout and len((run / "metrics.jsonl").read_text().splitlines()) == len(rows)


def test_train_dry_run_takes_overrides_after_the_flag_and_counts_without_data(work):
    cfg = write_config(work / "nodata.yaml", tiny_config(work, work / "missing.npz", model={"num_classes": 4}, data={"channels": 1}))
    out = ok(bigtrain("train", str(cfg), "--dry-run", "train.total_kimg=7", "model.g.width=16", cwd=work))
    resolved = yaml.safe_load(out.stdout.split("# parameters:")[0])
    assert resolved["train"]["total_kimg"] == 7.0 and resolved["model"]["g"]["width"] == 16
    counts = out.stdout.split("# parameters:")[1]
    assert re.match(r" G [\d,]+  D [\d,]+ ", counts) and "assumed 1x8x8 images with 4 classes" in counts
    before = ok(bigtrain("train", "--dry-run", str(cfg), "model.g.width=16", "train.total_kimg=7", cwd=work))
    assert before.stdout == out.stdout  # flags before, between or after the overrides: one meaning
    wrong = bigtrain("train", str(cfg), "--dry-run", "--no-such-flag", cwd=work)
    assert wrong.returncode == 2 and "unrecognized arguments: --no-such-flag" in wrong.stderr
    missing = bigtrain("train", str(cfg), cwd=work)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "missing.npz" in missing.stderr


def test_print_run_dir(work):
    cfg = write_config(work / "p.yaml", tiny_config(work, work / "missing.npz"))
    out = ok(bigtrain("train", str(cfg), "--print-run-dir", "run.name=elsewhere", cwd=work))
    assert out.stdout.strip() == str(work / "runs" / "elsewhere")


# ---- sampling --------------------------------------------------------------------------------

def test_sample_to_npz_folder_and_grid(run_dir, work):
    out = work / "samples"
    ok(bigtrain("sample", "--run", str(run_dir), "--num", "10", "--out", str(out / "s.npz"), cwd=work))
    with np.load(out / "s.npz") as f:
        assert f["x"].shape == (10, 8, 8, 1) and f["x"].dtype == np.uint8 and f["y"].shape == (10,)
    ok(bigtrain("sample", "--run", str(run_dir), "--num", "6", "--out", str(out / "pngs"), cwd=work))
    files = sorted(p.name for p in (out / "pngs").iterdir())
    assert len(files) == 6 and files[0].startswith("000000_class") and Image.open(out / "pngs" / files[0]).size == (8, 8)
    ok(bigtrain("sample", "--run", str(run_dir), "--num", "9", "--out", str(out / "g.png"), cwd=work))
    assert Image.open(out / "g.png").size == (3 * 8, 3 * 8)
    again = bigtrain("sample", "--run", str(run_dir), "--num", "9", "--out", str(out / "g.png"), cwd=work)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_sample_one_class_and_truncated(run_dir, work):
    out = work / "samples-cls"
    ok(bigtrain("sample", "--run", str(run_dir), "--num", "8", "--class", "3", "--out", str(out / "c.npz"), cwd=work))
    with np.load(out / "c.npz") as f:
        assert (f["y"] == 3).all()
    ok(bigtrain("sample", "--run", str(run_dir), "--num", "8", "--out", str(out / "full.npz"), cwd=work))
    ok(bigtrain("sample", "--run", str(run_dir), "--num", "8", "--truncation", "0.5", "--out", str(out / "t.npz"), cwd=work))
    with np.load(out / "full.npz") as full, np.load(out / "t.npz") as trunc:
        assert full["x"].shape == trunc["x"].shape and not np.array_equal(full["x"], trunc["x"])
    bad = bigtrain("sample", "--run", str(run_dir), "--num", "8", "--class", "9", "--out", str(out / "bad.npz"), cwd=work)
    assert bad.returncode == 2 and "--class 9" in bad.stderr and not (out / "bad.npz").exists()


# ---- data and evaluation tools ---------------------------------------------------------------

def test_make_shards_and_train_on_them(work):
    src = write_images_npz(work / "for-shards.npz", n=40, res=8, classes=4)
    out = work / "shards"
    ok(bigtrain("make-shards", str(src), str(out), "--shard-size", "16", "--no-progress", cwd=work))
    meta = json.loads((out / "dataset.json").read_text())
    assert len(sorted(out.glob("*.tar"))) == 3 and meta["num_samples"] == 40
    cfg = write_config(work / "sh.yaml", tiny_config(work, out / "dataset.json", data={"source": "shards"}, run={"name": "sh", "out_dir": str(work / "runs")},
                                                     train={"total_kimg": 0.032, "batch_size": 16}))
    ok(bigtrain("train", str(cfg), cwd=work))
    assert (work / "runs" / "sh" / "checkpoints" / "latest").is_file()


def test_make_toy_grid25(work):
    out = work / "toy" / "grid.npz"
    ok(bigtrain("make-toy", "grid25", str(out), "--num", "500", cwd=work))
    with np.load(out) as f:
        x = f["x"]
    assert x.shape == (500, 2) and x.dtype == np.float32 and set(np.round(x).astype(int).ravel()) <= {-4, -2, 0, 2, 4}


def test_ref_stats_eval_and_fid(run_dir, work, weights):
    data = work / "d.npz"
    ref = work / "ref.npz"
    ok(bigtrain("ref-stats", str(data), str(ref), "--num", "8", "--features", *inception(weights), cwd=work))
    with np.load(ref) as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and f["features"].shape == (8, 2048)
    # eval's FID is tested beside fid's in tests/unit/test_eval_commands.py (slow: a 2048 x 2048 matrix root)
    out = ok(bigtrain("eval", "--run", str(run_dir), "--metrics", "is,kid", "--num", "8", "--ref-stats", str(ref), *inception(weights), cwd=work))
    result = json.loads(out.stdout)
    assert {"is", "is_std", "kid", "kid_std", "protocol"} <= result.keys() and np.isfinite(result["kid"])
    assert result["protocol"]["generated"]["num_images"] == 8 and result["protocol"]["reference"]["source_stats"] == str(ref)
    samples = work / "eval-samples.npz"
    ok(bigtrain("sample", "--run", str(run_dir), "--num", "8", "--out", str(samples), cwd=work))
    fid = json.loads(ok(bigtrain("fid", str(samples), str(ref), "--num", "8", *inception(weights), cwd=work)).stdout)
    assert fid["fid"] > 0 and fid["protocol"]["a"]["num_images"] == 8


def test_leaderboard_eval_prdc_repeats_split_and_clean_resize(run_dir, work, weights):
    refs = work / "refs-per-class"
    clean = [*inception(weights), "--resize", "clean"]
    made = ok(bigtrain("ref-stats", str(work / "d.npz"), str(refs), "--per-class", "--features", "--split", "test", "--num", "8", *clean, cwd=work))
    assert json.loads(made.stdout)["class_num_images"] == [2, 2, 2, 2]
    assert sorted(p.name for p in refs.iterdir()) == ["all.npz", "class-0000.npz", "class-0001.npz", "class-0002.npz", "class-0003.npz"]
    out = ok(bigtrain("eval", "--run", str(run_dir), "--metrics", "precision,recall,density,coverage", "--num", "6", "--repeats", "2",
                      "--ref-stats", str(refs), "--split", "test", *clean, cwd=work))
    result = json.loads(out.stdout)
    for name in ("precision", "recall", "density", "coverage"):
        assert len(result["repeats"][name]["values"]) == 2 and result[name] == result["repeats"][name]["mean"], name
    protocol = result["protocol"]
    assert protocol["seeds"] == [0, 1] and protocol["split"] == "test" and (protocol["pr_k"], protocol["dc_k"]) == (3, 5)
    assert protocol["generated"]["resize"] == protocol["reference"]["resize"] == "pil-bicubic-float-299"
    assert not any("differ in resize" in w for w in result["warnings"])
    # intra_fid's FID per class is tested against per-class `bigtrain fid` calls in the slow test below
    wrong = bigtrain("eval", "--run", str(run_dir), "--metrics", "intra_fid", "--ref-stats", str(refs / "all.npz"), *clean, cwd=work)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "ref-stats DATA OUT_DIR --per-class" in wrong.stderr


@pytest.mark.slow  # eight 2048-d matrix roots; tests/unit/test_eval_leaderboard.py checks the same on 8-d features
def test_intra_fid_is_the_mean_of_per_class_fid_commands(run_dir, work, weights):
    refs = work / "refs-intra"
    ok(bigtrain("ref-stats", str(work / "d.npz"), str(refs), "--per-class", *inception(weights), cwd=work))
    result = json.loads(ok(bigtrain("eval", "--run", str(run_dir), "--metrics", "intra_fid", "--num", "16", "--seed", "2",
                                    "--ref-stats", str(refs), *inception(weights), cwd=work)).stdout)
    by_hand = []
    for c in range(4):
        samples = work / f"intra-{c}.npz"
        ok(bigtrain("sample", "--run", str(run_dir), "--class", str(c), "--num", "4", "--seed", "2", "--out", str(samples), cwd=work))
        by_hand.append(json.loads(ok(bigtrain("fid", str(samples), str(refs / f"class-{c:04d}.npz"), *inception(weights), cwd=work)).stdout)["fid"])
    assert result["intra_fid_per_class"] == pytest.approx(by_hand, rel=1e-6)
    assert result["intra_fid"] == pytest.approx(np.mean(by_hand), rel=1e-6)


def test_export_writes_plain_weights(run_dir, work):
    out = work / "export"
    ok(bigtrain("export", "--run", str(run_dir), "--out", str(out), cwd=work))
    state = torch.load(out / "trainer.pt", weights_only=True, map_location="cpu")
    assert set(state["players"]) == {"G", "D"} and state["counters"]["step"] == 8
    assert all(torch.isfinite(v).all() for v in state["players"]["G"]["net"].values() if v.is_floating_point())
    drawn = work / "from-export.npz"
    ok(bigtrain("sample", "--checkpoint", str(out), "--num", "4", "--out", str(drawn), cwd=work))
    with np.load(drawn) as f:
        assert f["x"].shape == (4, 8, 8, 1)


# ---- image-to-image --------------------------------------------------------------------------

def test_make_toy_pairs_train_pix2pix_and_translate(work):
    data = work / "translation"
    ok(bigtrain("make-toy", "digits-translation", str(data), cwd=work))
    assert {"trainA.npz", "trainB.npz", "train_pairs.npz", "testA.npz"} <= {p.name for p in data.iterdir()}
    ok(bigtrain("train", str(REPO / "configs" / "pix2pix_digits.yaml"), f"data.path={data / 'train_pairs.npz'}", f"run.out_dir={work / 'runs'}",
                "run.name=p2p", "train.total_kimg=0.016", "train.batch_size=8", "model.g.width=4", "model.d.width=4", "model.g.downs=4",
                "log.progress_bar=false", cwd=work))
    run = work / "runs" / "p2p"
    out = work / "translated"
    ok(bigtrain("translate", "--run", str(run), "--in", str(data / "testA.npz"), "--out", str(out / "t.npz"), cwd=work))
    with np.load(out / "t.npz") as f, np.load(data / "testA.npz") as a:
        assert f["x"].shape == a["x"].shape[:1] + (16, 16, 1) and f["x"].dtype == np.uint8
    folder = work / "pngs-in"
    folder.mkdir()
    with np.load(data / "testA.npz") as a:
        for i in range(3):
            Image.fromarray(a["x"][i, ..., 0]).save(folder / f"img{i}.png")
    ok(bigtrain("translate", "--run", str(run), "--in", str(folder), "--out", str(out / "pngs"), cwd=work))
    assert sorted(p.name for p in (out / "pngs").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    wrong = bigtrain("translate", "--run", str(run), "--direction", "BA", "--in", str(folder), "--out", str(out / "ba"), cwd=work)
    assert wrong.returncode == 2 and not (out / "ba").exists()


def test_ci_runs_the_readmes_main_command():
    """.ci/run takes the README's first command from between its main-command markers and runs
    it after the tests: the markers must hold the `bigtrain demo` line a new user copies."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- main-command -->\n```bash\n(.*?)```\n<!-- /main-command -->", text, flags=re.S)
    assert block, "README.md lost its main-command markers"
    line = block.group(1).strip()
    assert line.endswith("bigtrain demo") and "pip install torch==2.13.0" in line
    assert text.index("<!-- main-command -->") < text.index("<!-- test-command -->")  # the first command printed
    ci = (REPO / ".ci" / "run").read_text()
    assert "main-command" in ci and "train.total_kimg=" in ci
