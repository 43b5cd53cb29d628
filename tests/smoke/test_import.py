"""`bigtrain import` (issue 27) through the installed console script: the reference code bases'
files (tests/data/import, made with each reference's own code: see the README there) become a run
whose nets reproduce the reference's outputs (--check, fp32, eval mode), which samples (or
translates) and from which a new run trains (train.init_from). Files that do not fit the config
and pickles that name code are refused, and nothing is written.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.smoke.test_user_path import bigtrain, inception, ok

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "import"
# fixture folders (tests/data/import/<folder>) -> the format that reads them
FORMATS = {"biggan-pytorch": "biggan-pytorch", "biggan-pytorch-deep": "biggan-pytorch", "cyclegan": "cyclegan",
           "pix2pix": "pix2pix", "stylegan2-ada": "stylegan2-ada"}


def weight_files(fixture: str) -> list[str]:
    skip = ("config.yaml", "reference_outputs.pt")
    return sorted(str(p) for p in (FIXTURES / fixture).iterdir() if p.name not in skip)


def import_fixture(fixture: str, tmp_path: Path, *extra: str) -> dict:
    run = tmp_path / "imported"
    proc = ok(bigtrain("import", FORMATS[fixture], *weight_files(fixture), "--config",
                       str(FIXTURES / fixture / "config.yaml"), "--out", str(run), *extra, cwd=tmp_path))
    return json.loads(proc.stdout)


@pytest.mark.parametrize("fixture", FORMATS)
def test_import_reproduces_the_reference_outputs(fixture, tmp_path):
    fmt = FORMATS[fixture]
    summary = import_fixture(fixture, tmp_path, "--check")
    reference = torch.load(FIXTURES / fixture / "reference_outputs.pt", weights_only=True)
    assert set(summary["check"]) == set(reference)  # every stored network was compared
    assert max(summary["check"].values()) <= 1e-5
    folder = Path(summary["checkpoint"])
    state = torch.load(folder / "trainer.pt", weights_only=True)
    assert state["imported"]["format"] == fmt and state["counters"] == {"step": 0, "nimg": 0}
    assert (tmp_path / "imported" / "checkpoints" / "latest").read_text().strip() == folder.name
    if fixture == "biggan-pytorch":
        assert summary["iteration"] == 1234  # state_dict.pth's itr, kept as information


def _data(fixture: str, tmp_path: Path) -> list[str]:
    """Overrides pointing the fixture config at tiny random data of its shape."""
    rng = np.random.default_rng(0)

    def images(name, shape, classes=0):
        arrays = {"x": rng.integers(0, 256, shape, dtype=np.uint8)}
        if classes:
            arrays["y"] = rng.integers(0, classes, shape[0])
        np.savez(tmp_path / name, **arrays)
        return str(tmp_path / name)

    if fixture == "cyclegan":
        return [f"data.streams.A.path={images('a.npz', (4, 16, 16, 3))}",
                f"data.streams.B.path={images('b.npz', (4, 16, 16, 3))}"]
    if fixture == "pix2pix":
        return [f"data.path={images('pairs.npz', (4, 32, 64, 3))}"]
    if fixture.startswith("biggan-pytorch"):
        return [f"data.path={images('data.npz', (8, 64, 64, 3), 5)}"]
    return [f"data.path={images('data.npz', (8, 16, 16, 3), 3)}"]


@pytest.mark.parametrize("fixture", [
    "cyclegan",
    # each about 20 s; the import itself of these is covered in the default run by the test above
    pytest.param("biggan-pytorch", marks=pytest.mark.slow),
    pytest.param("biggan-pytorch-deep", marks=pytest.mark.slow),
    pytest.param("pix2pix", marks=pytest.mark.slow),
    pytest.param("stylegan2-ada", marks=pytest.mark.slow),
])
def test_imported_run_samples_and_trains(fixture, tmp_path):
    summary = import_fixture(fixture, tmp_path)
    run = tmp_path / "imported"
    overrides = _data(fixture, tmp_path)
    if fixture in ("cyclegan", "pix2pix"):
        source = overrides[0].split("=", 1)[1]
        ok(bigtrain("translate", "--run", str(run), "--in", source, "--out", str(tmp_path / "t.npz"),
                    *(["--paired"] if fixture == "pix2pix" else []), cwd=tmp_path))
        assert np.load(tmp_path / "t.npz")["x"].shape[0] == 4
    else:
        ok(bigtrain("sample", "--run", str(run), "--num", "3", "--out", str(tmp_path / "s.npz"), cwd=tmp_path))
        assert np.load(tmp_path / "s.npz")["x"].shape[0] == 3
    batch = 2 if fixture in ("cyclegan", "pix2pix") else 4
    kimg = 2 * batch / 1000  # two iterations
    ok(bigtrain("train", str(FIXTURES / fixture / "config.yaml"), *overrides, f"train.init_from={run}",
                f"run.out_dir={tmp_path / 'runs'}", "run.name=tuned", f"train.total_kimg={kimg}",
                f"log.every_kimg={kimg}", f"checkpoint.every_kimg={kimg}", f"log.samples_every_kimg={kimg}",
                cwd=tmp_path))
    imported = torch.load(Path(summary["checkpoint"]) / "trainer.pt", weights_only=True)["players"]
    tuned_folder = sorted((tmp_path / "runs" / "tuned" / "checkpoints").glob("step-*"))[-1]
    tuned = torch.load(tuned_folder / "trainer.pt", weights_only=True)
    assert tuned["counters"]["step"] == 2
    for name, player in imported.items():
        before, after = player["net"], tuned["players"][name]["net"]
        moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
        assert moved, f"{name} did not train"
        # two steps of Adam at lr <= 2.5e-3 from the imported weights: every weight stays within a few lr of them
        worst = max(float((after[k] - before[k]).abs().max()) for k in before if k.endswith(("weight", "original")))
        assert worst < 0.05, f"{name} moved by {worst}: did not start from the imported weights"


def test_a_file_that_does_not_fit_the_config_is_refused(tmp_path):
    cfg = yaml.safe_load((FIXTURES / "biggan-pytorch" / "config.yaml").read_text())
    cfg["model"]["g"]["shared_dim"] = 16
    config = tmp_path / "wider.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "imported"
    proc = bigtrain("import", "biggan-pytorch", *weight_files("biggan-pytorch"), "--config", str(config),
                    "--out", str(run), cwd=tmp_path)
    assert proc.returncode == 2
    assert "'shared.weight' is (5, 8), but the config's G has 'shared.weight' (5, 16)" in proc.stderr
    assert not run.exists()


class WritesAFile:
    """What a hostile pickle does: its reduce calls open(path, 'w'), which creates the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickle_that_names_code_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "written-by-the-pickle"
    evil = tmp_path / "network-snapshot-000000.pkl"
    evil.write_bytes(pickle.dumps({"G": WritesAFile(str(target)), "D": None, "G_ema": None}))
    control = tmp_path / "control"  # the same pickle loaded by pickle.load does write its file
    pickle.loads(pickle.dumps(WritesAFile(str(control)))).close()
    assert control.exists()
    run = tmp_path / "imported"
    proc = bigtrain("import", "stylegan2-ada", str(evil), "--config", str(FIXTURES / "stylegan2-ada" / "config.yaml"),
                    "--out", str(run), cwd=tmp_path)
    assert proc.returncode == 2
    assert "open, which is neither a tensor nor a network record" in proc.stderr
    assert "nothing in it was run" in proc.stderr
    assert not target.exists() and not run.exists()


@pytest.mark.slow  # Inception on CPU, ~30 s; the imported checkpoint's reading is covered by sample/translate above
def test_imported_run_evaluates_and_exports(tmp_path, weights):
    import_fixture("stylegan2-ada", tmp_path)
    run = tmp_path / "imported"
    out = ok(bigtrain("eval", "--run", str(run), "--metrics", "is", "--num", "8", *inception(weights), cwd=tmp_path))
    result = json.loads(out.stdout)
    assert np.isfinite(result["is"]) and result["protocol"]["generated"]["num_images"] == 8
    ok(bigtrain("export", "--run", str(run), "--out", str(tmp_path / "export"), cwd=tmp_path))
    exported = torch.load(tmp_path / "export" / "trainer.pt", weights_only=True)
    assert set(exported["players"]) == {"G", "D"} and exported["G_ema"] is not None


# ---- a released CycleGAN generator: one file, one direction -----------------------------------------

SINGLE = FIXTURES / "cyclegan-g"  # latest_net_G.pth (the harness's G, as the released models are), inputs.npz


def _import_single(tmp_path: Path, direction: str, *extra: str) -> tuple[Path, dict, str]:
    """`bigtrain import cyclegan latest_net_G.pth --direction D`, with the fixture's inputs as eval_inputs:
    (run, its summary, stderr)."""
    cfg = yaml.safe_load((SINGLE / "config.yaml").read_text())
    cfg["cyclegan"] = {"eval_inputs": str(SINGLE / "inputs.npz")}
    config = tmp_path / "single.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / f"imported-{direction}"
    proc = ok(bigtrain("import", "cyclegan", str(SINGLE / "latest_net_G.pth"), "--direction", direction,
                       "--config", str(config), "--out", str(run), *extra, cwd=tmp_path))
    return run, json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize("direction", ["AB", "BA"])
def test_a_released_cyclegan_generator_translates_its_direction_and_refuses_the_other(direction, tmp_path):
    """The file's G reproduces the reference's outputs in whichever direction it is imported (--check
    to 1e-5; `translate` and `sample` to the uint8 level); the direction no file gave is refused, and
    nothing is written (tests/unit/test_importers.py: the same for the BA import, in Python)."""
    from bigtrain.sampling import to_uint8

    run, summary, stderr = _import_single(tmp_path, direction, *(["--check"] if direction == "AB" else []))
    assert summary["direction"] == direction
    # the config's eval_direction (AB, the default) changed with the import: its eval_inputs must fit
    assert ("cyclegan.eval_direction is now BA" in stderr) == (direction == "BA")
    if direction == "AB":  # the reference's outputs are stored under G_AB's name (docs: tests/data/import/README.md)
        assert set(summary["check"]) == {"G.G_AB"} and summary["check"]["G.G_AB"] <= 1e-5
    expected = to_uint8(torch.load(SINGLE / "reference_outputs.pt", weights_only=True)["G.G_AB"]["output"])
    expected = expected.permute(0, 2, 3, 1).numpy().astype(int)  # [N, H, W, C]
    translated = tmp_path / "t.npz"
    ok(bigtrain("translate", "--run", str(run), "--in", str(SINGLE / "inputs.npz"), "--out", str(translated),
                "--direction", direction, cwd=tmp_path))
    assert np.abs(np.load(translated)["x"].astype(int) - expected).max() <= 1  # fp32 vs uint8 rounding at most
    if direction == "AB":
        proc = bigtrain("translate", "--run", str(run), "--in", str(SINGLE / "inputs.npz"), "--out",
                        str(tmp_path / "BA.npz"), "--direction", "BA", cwd=tmp_path)
        assert proc.returncode == 2 and not (tmp_path / "BA.npz").exists()
        assert "holds no B -> A generator (G_BA)" in proc.stderr and "refusing to run untrained weights" in proc.stderr
    else:  # sample (and eval) translate the imported direction: the import set cyclegan.eval_direction
        sampled = tmp_path / "s.npz"
        ok(bigtrain("sample", "--run", str(run), "--num", "3", "--out", str(sampled), cwd=tmp_path))
        assert np.abs(np.load(sampled)["x"].astype(int) - expected).max() <= 1


@pytest.mark.slow  # ~12 s; in the default run tests/unit/test_importers.py starts the nets from such an import
def test_a_run_from_one_direction_trains_the_other_from_scratch(tmp_path):
    """train.init_from of a one-direction import: G_AB starts from the file, G_BA (and the Ds) from their
    initial weights, each named in a warning."""
    run, _, _ = _import_single(tmp_path, "AB")
    data = _data("cyclegan", tmp_path)
    kimg = 2 * 2 / 1000  # two iterations
    proc = ok(bigtrain("train", str(SINGLE / "config.yaml"), *data, f"train.init_from={run}",
                       f"run.out_dir={tmp_path / 'runs'}", "run.name=tuned", f"train.total_kimg={kimg}",
                       f"log.every_kimg={kimg}", f"checkpoint.every_kimg={kimg}", f"log.samples_every_kimg={kimg}",
                       cwd=tmp_path))
    assert "holds no B -> A generator (G_BA)" in proc.stderr
    assert "G.G_BA starts from its initial weights" in proc.stderr
    tuned = torch.load(sorted((tmp_path / "runs" / "tuned" / "checkpoints").glob("step-*"))[-1] / "trainer.pt",
                       weights_only=True)["players"]["G"]["net"]
    reference = torch.load(SINGLE / "latest_net_G.pth", weights_only=True)
    # two Adam steps at lr <= 2.5e-3: G_AB is the file's, moved by a few lr at most; G_BA (its own normal(0, 0.02)
    # draw, as the file's weights) differs from the file's by far more
    assert (tuned["G_AB.net.1.weight"] - reference["model.1.weight"]).abs().max() < 0.01
    assert (tuned["G_BA.net.1.weight"] - reference["model.1.weight"]).abs().max() > 0.03


@pytest.mark.slow  # Inception on CPU, ~10 s; the default run translates and samples such an import (above)
def test_a_one_direction_import_evaluates_that_direction_and_its_export_still_refuses_the_other(tmp_path, weights):
    run, _, _ = _import_single(tmp_path, "BA")
    out = ok(bigtrain("eval", "--run", str(run), "--metrics", "is", "--num", "6", *inception(weights), cwd=tmp_path))
    result = json.loads(out.stdout)
    assert np.isfinite(result["is"]) and result["protocol"]["generated"]["inputs"]["direction"] == "BA"
    ok(bigtrain("export", "--run", str(run), "--out", str(tmp_path / "export"), cwd=tmp_path))
    proc = bigtrain("translate", "--checkpoint", str(tmp_path / "export"), "--in", str(SINGLE / "inputs.npz"),
                    "--out", str(tmp_path / "AB.npz"), "--direction", "AB", cwd=tmp_path)
    assert proc.returncode == 2 and "holds no A -> B generator (G_AB)" in proc.stderr
    assert not (tmp_path / "AB.npz").exists()
