"""`bigtrain ref-stats`, `bigtrain fid` and `bigtrain eval`, called through their
add_*_arguments / run_* pairs, with a random-weights Inception file made here.

Anything computing a 2048-d FID is marked slow: its matrix square root alone takes ~30-60 s on
a 2-core CI machine (tests/unit/test_fid.py checks FID itself in small dimensions).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from bigtrain.config import to_dict, to_yaml

from bigtrain.families import config_from_dict
from bigtrain.data import DataInfo
from bigtrain.engine import checkpoint
from bigtrain.engine.backends import process_group
from bigtrain.engine.generation import load_generation
from bigtrain.errors import BigtrainError
from bigtrain.eval import commands
from bigtrain.eval.inception import load_inception
from bigtrain.families import build_generator
from tests.conftest import tiny_config, write_images_npz


def run(name: str, argv: list[str], capsys) -> tuple[dict, str]:
    """Parse argv as the CLI would, run the command; (its JSON output, its stderr)."""
    parser = argparse.ArgumentParser(prog=f"bigtrain {name}")
    getattr(commands, f"add_{name.replace('-', '_')}_arguments")(parser)
    extra = (load_generation, process_group) if name == "eval" else ()  # the CLI passes the engine's loader and process group to eval
    assert getattr(commands, f"run_{name.replace('-', '_')}")(parser.parse_args(argv), *extra) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object on stdout
    return json.loads(out), err


def inception_args(weights: Path) -> list[str]:
    return ["--weights", str(weights), "--no-download", "--device", "cpu", "--batch-size", "2"]


def test_ref_stats_writes_mu_sigma_and_the_protocol(tmp_path, weights, capsys) -> None:
    data = write_images_npz(tmp_path / "d.npz", n=5, res=8, channels=1)
    out = tmp_path / "ref.npz"
    argv = [str(data), str(out), "--num", "3", "--split", "train", "--features", *inception_args(weights)]
    result, _ = run("ref-stats", argv, capsys)
    with np.load(out) as f:
        mu, sigma, features, meta = f["mu"], f["sigma"], f["features"], json.loads(str(f["meta"]))
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and features.shape == (3, 2048)
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-8, atol=1e-12)
    first = torch.from_numpy(np.load(data)["x"][:1]).permute(0, 3, 1, 2)  # gray N,H,W,1 -> N,1,H,W
    np.testing.assert_allclose(features[0], load_inception(weights)(first)[0][0].numpy(), rtol=1e-5, atol=1e-5)
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (meta["num_images"], meta["split"], meta["image_resolution"]) == (3, "train", [8, 8])
    assert meta["resize"] == "tf1-bilinear-299" and meta["kind"] == "npz" and meta["standard_weights"] is False
    assert result["out"] == str(out) and result["protocol"] == meta


def test_ref_stats_never_overwrites(tmp_path, capsys) -> None:
    out = tmp_path / "ref.npz"
    out.write_bytes(b"precious")
    parser = argparse.ArgumentParser()
    commands.add_ref_stats_arguments(parser)
    with pytest.raises(BigtrainError, match="already exists"):
        commands.run_ref_stats(parser.parse_args([str(tmp_path), str(out)]))
    assert out.read_bytes() == b"precious"


def other_tool_stats(path: Path, seed: int, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A statistics file as pytorch-fid / TTUR write it: float32 mu and sigma, nothing else."""
    f = np.random.default_rng(seed).normal(size=(50, d)) * (1 + seed)
    mu, sigma = f.mean(0).astype(np.float32), np.cov(f, rowvar=False).astype(np.float32)
    np.savez(path, mu=mu, sigma=sigma)
    return mu.astype(np.float64), sigma.astype(np.float64)


def test_fid_between_two_statistics_files(tmp_path, capsys) -> None:
    mu1, s1 = other_tool_stats(tmp_path / "a.npz", 0)
    mu2, s2 = other_tool_stats(tmp_path / "b.npz", 1)
    result, err = run("fid", [str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--no-download"], capsys)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert result["fid"] == pytest.approx(expected, rel=1e-6)
    assert result["protocol"]["a"]["source"] == str(tmp_path / "a.npz")
    assert len(result["warnings"]) == 2 and all("no protocol metadata" in w for w in result["warnings"])
    assert err.count("bigtrain: warning:") == 2


def test_fid_refuses_statistics_of_different_sizes(tmp_path) -> None:
    other_tool_stats(tmp_path / "a.npz", 0, d=12)
    other_tool_stats(tmp_path / "b.npz", 1, d=8)
    parser = argparse.ArgumentParser()
    commands.add_fid_arguments(parser)
    with pytest.raises(BigtrainError, match="8-d statistics cannot be compared with 12-d"):
        commands.run_fid(parser.parse_args([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, weights) -> tuple[Path, Path]:
    """A run directory with one checkpoint of a small mlp G, whose config names reference
    statistics (with features) of its data."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_images_npz(tmp / "d.npz", n=32, res=8, channels=1)
    ref = tmp / "ref.npz"
    parser = argparse.ArgumentParser()
    commands.add_ref_stats_arguments(parser)
    commands.run_ref_stats(parser.parse_args([str(data), str(ref), "--num", "4", "--features", *inception_args(weights)]))
    cfg = config_from_dict(tiny_config(tmp, data, eval={"ref_stats": str(ref)}))
    run_dir = tmp / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    info = DataInfo("image", (1, 8, 8), 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        G = build_generator(cfg.model, info)
    trainer_state = {
        "players": {"G": {"net": G.state_dict()}},
        "G_ema": G.state_dict(),
        "counters": {"step": 2, "nimg": 32},
        "config": to_dict(cfg),
        "data_info": info.to_dict(),
    }
    checkpoint.save(run_dir / "checkpoints", checkpoint.checkpoint_name(2), trainer_state=trainer_state,
                    rank_state={}, rank=0, keep_last=3)  # fmt: skip
    return run_dir, ref


def test_eval_on_a_run_prints_metrics_and_protocol(trained_run, weights, capsys) -> None:
    run_dir, ref = trained_run
    argv = ["--run", str(run_dir), "--metrics", "is,kid", "--num", "4", "--seed", "3", *inception_args(weights)]
    result, err = run("eval", argv, capsys)  # reference statistics: the run's eval.ref_stats
    assert set(result) == {"is", "is_std", "kid", "kid_std", "protocol", "warnings"}
    # IS >= 1 in exact arithmetic; with 4 images in 10 splits each split's KL is ~0, and float32
    # rounding may put exp(mean KL) a few ulps under 1 on some CPUs
    assert result["is"] >= 1.0 - 1e-5 and np.isfinite(result["kid"])
    generated, reference = result["protocol"]["generated"], result["protocol"]["reference"]
    assert generated["ema"] is True and generated["num_images"] == 4 and generated["seed"] == 3
    assert generated["image_resolution"] == [8, 8] and generated["kimg"] == pytest.approx(0.032)
    assert generated["source"].startswith(str(run_dir / "checkpoints"))
    assert generated["weights_sha256"] == reference["weights_sha256"]
    assert reference["num_images"] == 4 and reference["source_stats"] == str(ref)
    assert result["protocol"]["kid_subset_size"] == 4 and result["protocol"]["is_splits"] == 10
    assert any("non-standard Inception weights" in w for w in result["warnings"]) and "warning" in err
    again, _ = run("eval", argv, capsys)
    assert again["is"] == result["is"] and again["kid"] == result["kid"]  # fixed seeds: reproducible


def test_eval_needs_reference_statistics_for_fid(trained_run, weights, tmp_path) -> None:
    run_dir, _ = trained_run
    parser = argparse.ArgumentParser()
    commands.add_eval_arguments(parser)
    args = parser.parse_args(["--run", str(run_dir), "--ref-stats", str(tmp_path / "missing.npz"), *inception_args(weights)])
    with pytest.raises(BigtrainError, match="missing.npz"):
        commands.run_eval(args, load_generation, process_group)


@pytest.mark.slow
def test_fid_of_a_data_set_against_its_own_statistics_is_zero(trained_run, weights, capsys) -> None:
    run_dir, ref = trained_run
    data = run_dir.parents[1] / "d.npz"
    result, _ = run("fid", [str(data), str(ref), "--num", "4", *inception_args(weights)], capsys)
    assert abs(result["fid"]) < 1e-3
    assert result["protocol"]["a"]["num_images"] == 4


@pytest.mark.slow
def test_eval_fid_on_a_run(trained_run, weights, capsys) -> None:
    run_dir, _ = trained_run
    result, _ = run("eval", ["--run", str(run_dir), "--metrics", "fid", "--num", "4", *inception_args(weights)], capsys)
    assert result["fid"] > 0 and result["protocol"]["generated"]["num_images"] == 4
