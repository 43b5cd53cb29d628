"""bench/stylegan2.py at a tiny size (8x8, channel_base 64, two log intervals of two iterations): the JSON
it prints is sane. Without $BIGTRAIN_REF_STYLEGAN2 the reference side is skipped with its reason; with it
(a checkout of NVlabs/stylegan2-ada-pytorch, and $BIGTRAIN_REF_STYLEGAN2_SHIMS where `requests` is missing)
the second test runs both sides and compares their parameter counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bigtrain.data import DataInfo
from bigtrain.families import load_config
from bigtrain.families.stylegan2.nets import Stylegan2Discriminator, Stylegan2Generator
from tests.conftest import REPO

REF_ENV = "BIGTRAIN_REF_STYLEGAN2"
TINY = ["--kimg", "0.032", "--intervals", "2", "--batch", "8", "--resolution", "8"]
TINY += ["--channel-base", "64", "--channel-max", "16"]


def _bench(*args: str, env: dict) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "stylegan2.py"), *TINY, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _counts(preset: dict) -> dict[str, int]:
    """G and D parameter counts of the nets the bench's config and overrides build."""
    cfg = load_config(str(REPO / preset["config"]), preset["overrides"])
    res, classes = cfg.data.resolution, cfg.model.num_classes
    info = DataInfo("image", (cfg.data.channels, res, res), classes)
    G = Stylegan2Generator(cfg.model.g, cfg.model.z_dim, classes, info)
    D = Stylegan2Discriminator(cfg.model.d, cfg.model.z_dim, classes, info)
    return {name: sum(p.numel() for p in net.parameters()) for name, net in (("G", G), ("D", D))}


def _check_side(side: dict, images: int) -> None:
    assert side["img_per_s"] > 0 and side["s_per_kimg"] == pytest.approx(1000 / side["img_per_s"], rel=0.01)
    assert len(side["interval_img_per_s"]) == 2 and all(r > 0 for r in side["interval_img_per_s"])
    assert side["img_per_s"] == pytest.approx(side["interval_img_per_s"][1], abs=0.01)  # the median after the first
    assert side["peak_rss_mb"] >= side["peak_rss_before_training_mb"] > 0
    assert side["images"] == images and side["device"] == "cpu" and side["threads"] >= 1


def test_bigtrain_side_and_the_reference_skipped_without_its_path():
    env = {k: v for k, v in os.environ.items() if k != REF_ENV}
    out = _bench("--configs", "configs/stylegan2_digits.yaml", env=env)
    assert out["bench"] == "stylegan2"
    assert out["schedule"] == {
        "batch": 8,
        "micro_batch": 8,
        "iterations_per_interval": 2,
        "intervals": 2,
        "images_per_side": 32,
        "img_per_s": "median over the intervals after the first",
    }
    (preset,) = out["presets"]
    assert preset["config"] == "configs/stylegan2_digits.yaml"
    for key in ("data.resolution=8", "data.channels=1", "model.num_classes=10", "train.batch_size=8"):
        assert key in preset["overrides"]
    ours = preset["bigtrain"]
    _check_side(ours, 32)
    assert ours["peak_mem_mb"] > 0
    assert ours["params"] == _counts(preset)
    assert len(ours["augment_p_per_interval"]) == 2 and all(0 <= p < 1 for p in ours["augment_p_per_interval"])
    assert REF_ENV in preset["reference"]["skipped"]
    assert "ratio_img_per_s_bigtrain_over_reference" not in preset
    anchors = out["published_gpu_anchors"]
    assert anchors["paper256_8xV100_s_per_kimg"] == 4.01 and anchors["stylegan2_1024_8xV100_s_per_kimg"] == 17.55
    assert "not measurements" in anchors["what"]


@pytest.mark.skipif(not os.environ.get(REF_ENV), reason=f"${REF_ENV} (a stylegan2-ada-pytorch checkout) is not set")
def test_both_sides_with_the_reference():
    out = _bench("--configs", "configs/stylegan2_cifar10.yaml", env=dict(os.environ))
    (preset,) = out["presets"]
    ours, ref = preset["bigtrain"], preset["reference"]
    assert "skipped" not in ref, ref
    _check_side(ours, 32)
    _check_side(ref, 32)
    assert len(ref["augment_p_per_interval"]) == 2 and all(0 <= p < 1 for p in ref["augment_p_per_interval"])
    assert ref["params"] == ours["params"] == _counts(preset) and preset["same_parameter_counts"]
    assert preset["ratio_img_per_s_bigtrain_over_reference"] == pytest.approx(
        ours["img_per_s"] / ref["img_per_s"], rel=0.01
    )
    built = ref["built_with"]
    assert built["G"]["synthesis_kwargs"]["channel_base"] == 64 and built["D"]["architecture"] == "orig"
    assert built["D"]["epilogue_kwargs"]["mbstd_group_size"] == 32 and built["augment_pipe"] == "bgc"


# slow (the default run's 15-minute budget; the skip without a path is in the default run)
@pytest.mark.slow
def test_the_reference_skipped_with_its_reason_where_the_path_holds_no_checkout(tmp_path):
    env = {**os.environ, REF_ENV: str(tmp_path)}
    (preset,) = _bench("--configs", "configs/stylegan2_digits.yaml", env=env)["presets"]
    assert preset["bigtrain"]["img_per_s"] > 0
    assert preset["reference"] == {
        "skipped": f"{tmp_path} holds no training/networks.py: not a checkout of NVlabs/stylegan2-ada-pytorch"
    }
