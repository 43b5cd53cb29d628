"""Defects a review found, each refused before any engine starts (through `--dry-run`, which
builds the recipe and its players): BEGAN with a regularizer it would ignore, DiffAugment on
vector data, a norm key a net does not read."""
import numpy as np
import pytest

from tests.conftest import run_cli, tiny_config, write_config, write_images_npz

BEGAN = {"loss": {"type": "began"}, "model": {"num_classes": 0, "g": {"arch": "began", "width": 8}, "d": {"arch": "began", "width": 8, "h_dim": 8}}, "optim": {"d": {"type": "adam"}}}


def _dry_run(tmp_path, cfg: dict, *overrides: str):
    return run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)), *overrides, "--dry-run")


@pytest.mark.parametrize("key, value", [("gp_weight", 10), ("dragan_weight", 10), ("r1_gamma", 1), ("clip_d_weights", 0.01)])
def test_began_refuses_regularizers_it_cannot_apply(tmp_path, key, value):
    data = write_images_npz(tmp_path / "d.npz", n=16, res=16)
    cfg = tiny_config(tmp_path, data, data={"resolution": 16}, **BEGAN)
    assert _dry_run(tmp_path, cfg).returncode == 0  # the plain BEGAN config is fine
    extra = ["loss.r1_interval=4"] if key == "r1_gamma" else []
    out = _dry_run(tmp_path, cfg, f"loss.{key}={value}", *extra)
    assert out.returncode == 2 and f"loss.{key}: is not supported by BEGAN" in out.stderr, out.stderr


def test_diffaugment_on_vectors_is_refused_before_training(tmp_path):
    np.savez(tmp_path / "v.npz", x=np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32))
    cfg = tiny_config(tmp_path, tmp_path / "v.npz", model={"z_dim": 2})
    out = _dry_run(tmp_path, cfg, "augment.policy=translation")
    assert out.returncode == 2 and "augment.policy: DiffAugment works on images" in out.stderr, out.stderr


@pytest.mark.parametrize("arch", ["mlp", "sngan"])
def test_batch_norm_in_a_d_that_has_none_is_refused(tmp_path, arch):
    data = write_images_npz(tmp_path / "d.npz", n=16, res=8)
    out = _dry_run(tmp_path, tiny_config(tmp_path, data), f"model.d.arch={arch}", "model.d.norm=batch")
    assert out.returncode == 2 and "model.d.norm" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
