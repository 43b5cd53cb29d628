"""ProGAN sampling and evaluation at the stage being trained (issue 12, point 8): on 32x32 data,
`bigtrain sample` and `bigtrain eval` of a checkpoint at 8x8 and of one mid-fade give images at
that stage's resolution (the nets work at the current resolution: G's output is 8x8, not
upsampled to 32x32), mid-fade at the checkpoint's alpha; the periodic in-training evaluation
and the sample grids follow the stage, and the protocol records the resolution Inception got;
reference statistics at another resolution give a protocol warning naming both.

One run serves every test: 12 steps of 16 images on 32x32 data (the schedule of
tests/unit/test_progan_recipe.py's `_cfg`): steps 1-5 at 4x4, 6-8 the fade to 8x8 (alpha 0.25,
0.5, 0.75), 9-12 8x8; a checkpoint every 2 steps, a KID evaluation and a grid every 4."""
import argparse
import json

import numpy as np
import pytest
import torch

from bigtrain.families import config_from_dict
from bigtrain.engine.generation import load_generation
from bigtrain.engine.loop import Trainer
from bigtrain.eval import commands
from bigtrain.families.progan.nets import upsample2x
from bigtrain.sampling import to_uint8
from tests.conftest import run_cli, write_images_npz
from tests.unit.test_progan_recipe import STEP_IMG, _cfg, _rows

RESOLUTION_WARNING = "reach Inception at different resolutions"


def _inception_args(weights):
    return ["--weights", str(weights), "--no-download", "--device", "cpu", "--batch-size", "4"]


def _ref_stats(data, out, weights, *options):
    """`bigtrain ref-stats DATA OUT --features OPTIONS` (in this process: one start-up less)."""
    parser = argparse.ArgumentParser()
    commands.add_ref_stats_arguments(parser)
    assert commands.run_ref_stats(parser.parse_args([str(data), str(out), "--num", "8", "--features", *options, *_inception_args(weights)])) == 0
    return out


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, weights):
    """(run dir, reference statistics of the data at 8x8, at its 32x32, the warnings of training)."""
    tmp = tmp_path_factory.mktemp("progan-eval")
    data = write_images_npz(tmp / "d32.npz", n=64, res=32)
    ref8 = _ref_stats(data, tmp / "ref8.npz", weights, "--resolution", "8")  # the README's way: box-filtered like the reals
    ref32 = _ref_stats(data, tmp / "ref32.npz", weights)
    cfg = _cfg(tmp)
    cfg["data"].update(path=str(data), resolution=32)
    cfg["train"]["total_kimg"] = 12 * STEP_IMG / 1000
    cfg["log"]["samples_every_kimg"] = 4 * STEP_IMG / 1000
    cfg["eval"] = {"every_kimg": 4 * STEP_IMG / 1000, "metrics": ["kid"], "ref_stats": str(ref8), "inception_weights": str(weights),
                   "num_samples": 8, "batch_size": 4}
    with pytest.warns(UserWarning) as caught:
        trainer = Trainer(config_from_dict(cfg))
        trainer.train()
        trainer.backend.close()
    return tmp / "runs" / "pg", ref8, ref32, [str(w.message) for w in caught]


def _sample(run, step, tmp_path, num=8, seed=1):
    out = tmp_path / f"s{step}.npz"
    made = run_cli("sample", "--checkpoint", str(run / "checkpoints" / f"step-{step:08d}"), "--num", str(num), "--seed", str(seed), "--out", str(out))
    assert made.returncode == 0, made.stderr[-2000:]
    return np.load(out)["x"]  # uint8 [N, H, W, C]


def _loaded(run, step):
    return load_generation(None, str(run / "checkpoints" / f"step-{step:08d}"))


def _at_lod(loaded, lod, num=8, seed=1):
    """G_ema's float output [N, C, r, r] at `lod` for the latents of `bigtrain sample --seed`."""
    loaded.nets["G"].set_lod(lod)
    return loaded.generate(range(num), seed=seed)[0]


def _images(x):
    return to_uint8(x).permute(0, 2, 3, 1).numpy()


def test_sample_of_an_8x8_checkpoint_is_8x8_with_8x8_detail(stage_run, tmp_path):
    run, *_ = stage_run
    x = _sample(run, 10, tmp_path)  # step 10: stabilising at 8x8, 32x32 data
    assert x.shape == (8, 8, 8, 1)  # G works at the stage's resolution: no upsampling to 32x32
    loaded = _loaded(run, 10)
    G = loaded.nets["G"]
    assert loaded.ema and G.current_lod() == 2.0 and G.current_resolution == 8
    assert np.array_equal(x, _images(_at_lod(loaded, 2.0)))
    # real 8x8 content, not a 4x4 image shown in 2x2 blocks
    blocks = x.reshape(8, 4, 2, 4, 2, 1).astype(int)
    assert (blocks.max(axis=(2, 4)) - blocks.min(axis=(2, 4))).max() > 8


def test_sample_of_a_mid_fade_checkpoint_is_the_blend_at_its_alpha(stage_run, tmp_path):
    run, *_ = stage_run
    x = _sample(run, 6, tmp_path).astype(int)  # step 6: the fade to 8x8 at alpha 0.25
    assert x.shape == (8, 8, 8, 1)
    assert [r["progan/alpha"] for r in _rows(run) if r["step"] == 6 and "progan/alpha" in r] == [0.25]
    loaded = _loaded(run, 6)
    assert loaded.nets["G"].current_lod() == 2.75  # the lod step 6 trained at, carried by G_ema into the checkpoint
    new, prev = _at_lod(loaded, 2.0), upsample2x(_at_lod(loaded, 3.0))  # the new 8x8 level alone; the 4x4 one, upsampled
    assert np.abs(x - _images(torch.lerp(prev, new, 0.25)).astype(int)).max() <= 1  # lerp(upsample(prev), new, alpha)
    assert min(np.abs(x - _images(end).astype(int)).max() for end in (new, prev)) > 8  # neither end of the fade


def _eval(run, step, ref, weights):
    out = run_cli("eval", "--checkpoint", str(run / "checkpoints" / f"step-{step:08d}"), "--metrics", "kid", "--num", "8",
                  "--ref-stats", str(ref), *_inception_args(weights))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


# slow (the default run's 15-minute budget)
@pytest.mark.slow
def test_eval_of_an_8x8_checkpoint_against_8x8_reference_statistics(stage_run, weights):
    run, ref8, ref32, _ = stage_run
    result = _eval(run, 10, ref8, weights)
    generated, reference = result["protocol"]["generated"], result["protocol"]["reference"]
    assert generated["image_resolution"] == reference["image_resolution"] == [8, 8] and reference["resize_filter"] == "area"
    assert np.isfinite(result["kid"]) and generated["kimg"] == pytest.approx(10 * STEP_IMG / 1000)
    assert not any(RESOLUTION_WARNING in w for w in result["warnings"])
    # full-resolution statistics do not fit an 8x8 stage: the number comes with a warning naming both
    wrong = _eval(run, 10, ref32, weights)
    assert wrong["protocol"]["reference"]["image_resolution"] == [32, 32]
    assert any(RESOLUTION_WARNING in w and "8x8" in w and "32x32" in w for w in wrong["warnings"])


def test_periodic_eval_and_grids_follow_the_stage(stage_run):
    run, _, _, caught = stage_run
    rows = _rows(run)
    trained = {r["step"]: r["progan/resolution"] for r in rows if "progan/resolution" in r}
    evals = [r for r in rows if "eval/kid" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert [trained[r["step"]] for r in evals] == [4, 8, 8]
    for r in evals:  # Inception got the samples at the resolution trained at that step
        res = int(trained[r["step"]])
        assert r["eval/protocol"]["generated"]["image_resolution"] == [res, res]
        assert r["eval/protocol"]["reference"]["image_resolution"] == [8, 8] and np.isfinite(r["eval/kid"])
    # the 4x4 evaluation against the 8x8 reference is flagged, the 8x8 ones are not
    flagged = [w for w in caught if RESOLUTION_WARNING in w]
    assert len(flagged) == 1 and "generated has 4x4 images and reference 8x8" in flagged[0]
    from PIL import Image

    # the grids: 2 rows x 4 columns at the step's resolution; the kimg-0 grid (drawn before the
    # first iteration) at the starting one, as the nets are built at the schedule's first lod
    grids = {kimg: Image.open(run / "samples" / f"fakes-000000.{kimg:03d}kimg.png").size for kimg in (0, 64, 128, 192)}
    assert grids == {0: (4 * 4, 2 * 4), 64: (4 * 4, 2 * 4), 128: (4 * 8, 2 * 8), 192: (4 * 8, 2 * 8)}
