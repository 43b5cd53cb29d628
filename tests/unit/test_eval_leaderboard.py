"""What a leaderboard number needs from `bigtrain eval` and `bigtrain ref-stats` (issue 26):
intra-class FID against per-class statistics, `--repeats K`, `--split`.

The commands run through their add_*_arguments / run_* pairs, on checkpoints of a small mlp G,
with a fixed random projection of the pixels standing in for Inception (`commands._inception`
patched): a 2048-d FID costs a matrix square root of ~5-30 s on a CI core, so the per-class and
repeated FIDs here are 8-d (tests/smoke/test_user_path.py runs the same commands through the
console script with the real network).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bigtrain.cli import main as bigtrain_main
from bigtrain.config import to_dict, to_yaml
from bigtrain.data import DataInfo
from bigtrain.engine import checkpoint
from bigtrain.engine.backends import process_group
from bigtrain.engine.generation import load_generation
from bigtrain.errors import BigtrainError
from bigtrain.eval import commands
from bigtrain.families import build_generator, config_from_dict
from bigtrain.sampling import to_uint8
from tests.conftest import tiny_config, write_images_npz

CLASSES = 4


class PixelProjection(nn.Module):
    """Stands in for Inception: 8 fixed random projections of the uint8 pixels of 1x8x8 images."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.proj = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images if images.dtype == torch.uint8 else to_uint8(images)).double().flatten(1) / 255
        features = (x @ self.proj).float()
        return features, features

    def protocol(self) -> dict:
        return {"network": "pixel-projection", "resize": "none", "weights_sha256": None, "standard_weights": False}


@pytest.fixture(autouse=True)
def small_network(monkeypatch):
    monkeypatch.setattr(commands, "_inception", lambda args, device: PixelProjection())


def make_run(tmp: Path, num_classes: int, ref_stats: str = "") -> Path:
    """A run directory with one checkpoint of an mlp G on 1x8x8 images."""
    data = tmp / "d.npz"
    cfg = config_from_dict(tiny_config(tmp, data, model={"num_classes": num_classes}, eval={"ref_stats": ref_stats}))
    run_dir = tmp / "runs" / f"c{num_classes}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    info = DataInfo("image", (1, 8, 8), num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        G = build_generator(cfg.model, info)
    trainer_state = {
        "players": {"G": {"net": G.state_dict()}}, "G_ema": G.state_dict(), "counters": {"step": 2, "nimg": 32},
        "config": to_dict(cfg), "data_info": info.to_dict(),
    }  # fmt: skip
    checkpoint.save(run_dir / "checkpoints", checkpoint.checkpoint_name(2), trainer_state=trainer_state,
                    rank_state={}, rank=0, keep_last=3)  # fmt: skip
    return run_dir


def run(name: str, argv: list[str], capsys) -> dict:
    parser = argparse.ArgumentParser(prog=f"bigtrain {name}")
    getattr(commands, f"add_{name.replace('-', '_')}_arguments")(parser)
    extra = (load_generation, process_group) if name == "eval" else ()
    assert getattr(commands, f"run_{name.replace('-', '_')}")(parser.parse_args(argv), *extra) == 0
    out, _ = capsys.readouterr()
    return json.loads(out)


CPU = ["--device", "cpu", "--batch-size", "7"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("leaderboard")
    write_images_npz(tmp / "d.npz", n=96, res=8, classes=CLASSES)
    return tmp


@pytest.fixture(scope="module")
def per_class(work) -> Path:
    """`ref-stats --per-class --features --split test` of the data (24 images per class)."""
    out = work / "refs"
    parser = argparse.ArgumentParser()
    commands.add_ref_stats_arguments(parser)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(commands, "_inception", lambda args, device: PixelProjection())
        commands.run_ref_stats(parser.parse_args([str(work / "d.npz"), str(out), "--per-class", "--features",
                                                  "--split", "test", *CPU]))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def conditional(work) -> Path:
    return make_run(work, CLASSES)


def test_per_class_statistics_are_each_class_alone(per_class, work) -> None:
    with np.load(work / "d.npz") as f:
        x, y = torch.from_numpy(f["x"]).permute(0, 3, 1, 2), f["y"]
    features = PixelProjection()(x)[0].double().numpy()
    for c in range(CLASSES):
        with np.load(per_class / f"class-{c:04d}.npz") as f:
            meta = json.loads(str(f["meta"]))
            np.testing.assert_allclose(f["mu"], features[y == c].mean(0), rtol=1e-6)
            np.testing.assert_allclose(f["sigma"], np.cov(features[y == c], rowvar=False), rtol=1e-5, atol=1e-9)
        assert meta["class_idx"] == c and meta["num_images"] == 24 and meta["split"] == "test"
    with np.load(per_class / "all.npz") as f:
        assert f["features"].shape == (96, 8) and json.loads(str(f["meta"]))["classes"] == CLASSES


def test_intra_fid_is_the_mean_of_per_class_fid_calls(per_class, conditional, work, capsys) -> None:
    result = run("eval", ["--run", str(conditional), "--metrics", "intra_fid", "--num", "40", "--seed", "3",
                          "--ref-stats", str(per_class), *CPU], capsys)  # fmt: skip
    by_hand = []
    for c in range(CLASSES):  # what a user would type: sample class c, then `bigtrain fid` against its file
        samples = work / f"class{c}.npz"
        assert bigtrain_main(["sample", "--run", str(conditional), "--class", str(c), "--num", "10", "--seed", "3",
                              "--out", str(samples)]) == 0  # fmt: skip
        capsys.readouterr()  # sample's own line
        by_hand.append(run("fid", [str(samples), str(per_class / f"class-{c:04d}.npz"), *CPU], capsys)["fid"])
    assert result["intra_fid_per_class"] == pytest.approx(by_hand, rel=1e-6)
    assert result["intra_fid"] == pytest.approx(np.mean(by_hand), rel=1e-6)
    assert len(set(np.round(by_hand, 6))) == CLASSES  # four different numbers, not one repeated
    assert result["protocol"]["intra_fid"] == {"class_stats": str(per_class), "samples_per_class": 10}
    assert result["protocol"]["generated"]["num_images"] == 40


def test_intra_fid_is_refused_for_an_unconditional_run(per_class, work) -> None:
    run_dir = make_run(work / "unconditional", 0)
    parser = argparse.ArgumentParser()
    commands.add_eval_arguments(parser)
    args = parser.parse_args(["--run", str(run_dir), "--metrics", "fid,intra_fid", "--ref-stats", str(per_class)])
    with pytest.raises(BigtrainError, match="intra_fid needs a class-conditional generator; this run is unconditional"):
        commands.run_eval(args, load_generation, process_group)


def test_perceptual_path_length_is_refused_with_the_reason(per_class, conditional) -> None:
    """Issue 26: PPL needs LPIPS's VGG16 weights, which cannot be shipped or downloaded here: refused, not faked."""
    parser = argparse.ArgumentParser()
    commands.add_eval_arguments(parser)
    args = parser.parse_args(["--run", str(conditional), "--metrics", "fid,ppl", "--ref-stats", str(per_class / "all.npz")])
    with pytest.raises(BigtrainError, match="ppl: perceptual path length is not provided: .*LPIPS"):
        commands.run_eval(args, load_generation, process_group)


def test_intra_fid_needs_per_class_statistics(per_class, conditional) -> None:
    parser = argparse.ArgumentParser()
    commands.add_eval_arguments(parser)
    args = parser.parse_args(["--run", str(conditional), "--metrics", "intra_fid", "--ref-stats",
                              str(per_class / "all.npz")])  # fmt: skip
    with pytest.raises(BigtrainError, match="all.npz: intra_fid needs per-class .* --per-class"):
        commands.run_eval(args, load_generation, process_group)


def test_per_class_needs_labels_and_an_empty_folder(work, tmp_path) -> None:
    parser = argparse.ArgumentParser()
    commands.add_ref_stats_arguments(parser)
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(BigtrainError, match="x.npz: --per-class needs labels"):
        commands.run_ref_stats(parser.parse_args([str(unlabelled), str(tmp_path / "out"), "--per-class", *CPU]))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(BigtrainError, match="full already exists and is not an empty folder"):
        commands.run_ref_stats(parser.parse_args([str(work / "d.npz"), str(tmp_path / "full"), "--per-class"]))
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"


METRICS = "fid,kid,precision,recall,density,coverage"


def test_repeats_give_k_runs_their_mean_and_std(per_class, conditional, capsys) -> None:
    base = ["--run", str(conditional), "--metrics", METRICS, "--num", "24", "--ref-stats", str(per_class), *CPU]
    three = run("eval", [*base, "--seed", "5", "--repeats", "3"], capsys)
    singles = [run("eval", [*base, "--seed", str(s)], capsys) for s in (5, 6, 7)]
    for name in METRICS.split(","):
        values = [s[name] for s in singles]  # each repeat is the plain evaluation with its seed
        assert three["repeats"][name]["values"] == pytest.approx(values, rel=1e-9, abs=1e-12), name
        assert three[name] == pytest.approx(np.mean(values), rel=1e-9) == three["repeats"][name]["mean"]
        assert three["repeats"][name]["std"] == pytest.approx(np.std(values), rel=1e-9, abs=1e-12)
    assert len(set(three["repeats"]["fid"]["values"])) == 3  # three different seeds, three numbers
    assert three["protocol"]["repeats"] == 3 and three["protocol"]["seeds"] == [5, 6, 7]
    assert singles[0]["protocol"]["repeats"] == 1 and "repeats" not in singles[0]
    once = run("eval", [*base, "--seed", "5", "--repeats", "1"], capsys)
    assert {k: once[k] for k in METRICS.split(",")} == {k: singles[0][k] for k in METRICS.split(",")}


def test_split_checks_the_reference_it_scores_against(per_class, conditional, work, capsys) -> None:
    base = ["--run", str(conditional), "--metrics", "precision", "--num", "24", *CPU]
    result = run("eval", [*base, "--ref-stats", str(per_class), "--split", "test"], capsys)
    assert result["protocol"]["split"] == "test" and result["protocol"]["reference"]["split"] == "test"
    parser = argparse.ArgumentParser()
    commands.add_eval_arguments(parser)
    args = parser.parse_args([*base, "--ref-stats", str(per_class), "--split", "val"])
    with pytest.raises(BigtrainError, match=f"--split val: {per_class} holds statistics of split 'test'"):
        commands.run_eval(args, load_generation, process_group)
    args = parser.parse_args(["--run", str(conditional), "--metrics", "is", "--split", "test"])  # no reference at all
    with pytest.raises(BigtrainError, match="--split test needs the held-out statistics: pass them as --ref-stats"):
        commands.run_eval(args, load_generation, process_group)
    own = make_run(work / "own", CLASSES, ref_stats=str(per_class / "all.npz"))  # best/ was chosen with it
    warned = run("eval", [*base, "--run", str(own), "--split", "test"], capsys)
    assert any("is the run's eval.ref_stats, which chose its best checkpoint" in w for w in warned["warnings"])
