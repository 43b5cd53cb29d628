"""The image-to-image recipes (issue 14): image pool, paired data with a joint crop, the two
unpaired streams, CycleGAN and Pix2Pix training and exact resume on one process."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bigtrain.config import DataConfig

from bigtrain.families import load_config
from bigtrain.data.npz import NpzSource
from bigtrain.data.toy import write_digits_translation
from bigtrain.engine.loop import train
from bigtrain.errors import ConfigError
from bigtrain.families.img2img.recipe import ImagePool
from tests.conftest import run_cli

CONFIGS = Path(__file__).parents[2] / "configs"


def test_image_pool_stores_until_full_then_returns_a_stored_image_half_the_time():
    torch.manual_seed(0)
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: each fake comes straight back
    new = torch.arange(100.0, 2100.0).view(2000, 1, 1, 1)
    out = pool.query(new)
    swapped = (out != new).flatten()
    assert 0.45 < swapped.float().mean() < 0.55  # p = 1/2 of a stored image
    i = int(swapped.nonzero()[0])
    assert float(out[i]) in {0.0, 1.0, 2.0, 3.0}  # the first swap returns one of the stored fakes
    flat = out.flatten()
    assert all(float(flat[j]) < float(new[j]) for j in swapped.nonzero().flatten().tolist())  # a swap returns an earlier fake, never a later one
    # restore: a pool loaded from the state (and the same RNG state) answers exactly alike
    later = torch.randn(50, 1, 1, 1)
    state, rng = pool.state_dict(), torch.get_rng_state()
    expected = pool.query(later)
    again = ImagePool(4)
    again.load_state_dict(state)
    torch.set_rng_state(rng)
    assert torch.equal(again.query(later), expected)
    with pytest.raises(ValueError, match="holds up to 4"):
        ImagePool(5).load_state_dict(state)


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    return write_digits_translation(tmp_path_factory.mktemp("dt") / "dt")


def test_paired_data_is_cropped_and_flipped_jointly(translation):
    cfg = DataConfig(path=str(translation["train_pairs"]), resolution=16, load_size=22, paired=True, xflip=True)
    source = NpzSource(cfg, micro_batch=64, rank=0, seed=3)
    assert source.info.shape == (2, 16, 16)
    x, _ = next(source.batches(0))
    a, b = x[:, :1].int(), x[:, 1:].int()
    # B is A inverted before any transform: a window shifted or a flip applied to one half only breaks it
    assert (a + b - 255).abs().max() <= 1  # resize rounding
    whole = NpzSource(DataConfig(path=str(translation["train_pairs"]), resolution=22, paired=True), micro_batch=64, rank=0, seed=3)
    full, _ = next(whole.batches(0))
    assert not torch.equal(x[:, :1], full[:, :1, :16, :16])  # the crops are random, not the corner
    assert next(NpzSource(cfg, micro_batch=64, rank=0, seed=3).batches(64))[0].shape == (64, 2, 16, 16)


def _cyclegan(tmp_path, translation, name, *extra):
    return load_config(CONFIGS / "cyclegan_digits.yaml", [
        f"run.out_dir={tmp_path / 'runs'}", f"run.name={name}", f"data.streams.A.path={translation['trainA']}",
        f"data.streams.B.path={translation['trainB']}", f"cyclegan.eval_inputs={translation['testA']}", "train.total_kimg=0.064",
        "log.every_kimg=0.016", "log.samples_every_kimg=0.032", "checkpoint.every_kimg=0.032", "log.progress_bar=false", *extra])


def test_cyclegan_trains_four_networks_and_resumes_exactly(tmp_path, translation):
    idt = "cyclegan.lambda_identity=0.5"  # the reference's identity term (the toy config turns it off)
    whole = train(_cyclegan(tmp_path, translation, "whole", idt))
    assert {"loss/G_idt_A", "loss/G_idt_B"} <= json.loads((tmp_path / "runs" / "whole" / "metrics.jsonl").read_text().splitlines()[0]).keys()
    assert sorted(whole.players) == ["D_A", "D_B", "G"] and whole.counters.step == 8
    assert whole.counters.data_pos == {"A": 64, "B": 64}
    fresh = [spec.build() for spec in whole.recipe.players()]
    for net, spec in zip(fresh, whole.recipe.players()):
        trained = whole.players[spec.name].net
        for part in (["G_AB", "G_BA"] if spec.name == "G" else [None]):
            a, b = (getattr(net, part), getattr(trained, part)) if part else (net, trained)
            assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())), f"{spec.name} {part} did not train"
    assert len(whole.recipe.pools["pool_A"].images) == 50  # 64 fakes seen, the pool full
    first = train(_cyclegan(tmp_path, translation, "parts", idt, "train.total_kimg=0.032"))
    assert first.counters.step == 4
    resumed = train(_cyclegan(tmp_path, translation, "parts", idt))
    for name, player in resumed.players.items():
        for mine, theirs in zip(player.net.parameters(), whole.players[name].net.parameters()):
            assert torch.equal(mine, theirs), name
    for key in ("pool_A", "pool_B"):
        assert all(torch.equal(p, q) for p, q in zip(resumed.recipe.pools[key].images, whole.recipe.pools[key].images))
    # bigtrain translate: the run's G_AB on a file of domain A images, as the trained net computes it
    out = run_cli("translate", "--run", str(tmp_path / "runs" / "whole"), "--in", str(translation["testA"]), "--out", str(tmp_path / "ab.npz"))
    assert out.returncode == 0, out.stderr
    got = torch.from_numpy(np.load(tmp_path / "ab.npz")["x"]).permute(0, 3, 1, 2)
    from bigtrain.data.inputs import read_images
    from bigtrain import sampling

    a, _ = read_images(translation["testA"], 16, channels=1)
    want = sampling.to_uint8(whole.recipe.translate({"G": whole.players["G"].net}, a.float() / 127.5 - 1, "AB"))
    assert got.shape == (297, 1, 16, 16) and (got.int() - want.int()).abs().max() <= 1
    again = run_cli("translate", "--run", str(tmp_path / "runs" / "whole"), "--in", str(translation["testA"]), "--out", str(tmp_path / "ab.npz"))
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    grid = sorted((tmp_path / "runs" / "whole" / "samples").glob("*.png"))[-1]
    from PIL import Image

    assert Image.open(grid).size == (8 * 16, 6 * 16)  # 8 columns, six rows: A, A->B, A->B->A, B, B->A, B->A->B


def test_cyclegan_refuses_streams_that_do_not_fit(tmp_path, translation):
    with pytest.raises(ConfigError, match="data.streams.B"):
        train(_cyclegan(tmp_path, translation, "other_size", "data.streams.B.resolution=8", "data.streams.B.load_size=0"))
    with pytest.raises(ConfigError, match="data.streams.C"):
        train(_cyclegan(tmp_path, translation, "extra", f"data.streams.C.path={translation['trainA']}"))
    with pytest.raises(ConfigError, match="data.streams.B.path"):
        train(_cyclegan(tmp_path, translation, "missing", f"data.streams.B.path={tmp_path / 'none.npz'}"))


def test_pix2pix_trains_and_resumes_exactly_and_refuses_unpaired_data(tmp_path, translation):
    def cfg(name, *extra):
        return load_config(CONFIGS / "pix2pix_digits.yaml", [
            f"run.out_dir={tmp_path / 'runs'}", f"run.name={name}", f"data.path={translation['train_pairs']}",
            f"pix2pix.eval_inputs={translation['test_pairs']}", "train.total_kimg=0.064", "log.every_kimg=0.016",
            "log.samples_every_kimg=0.032", "checkpoint.every_kimg=0.032", "log.progress_bar=false", *extra])

    whole = train(cfg("whole"))
    train(cfg("parts", "train.total_kimg=0.032"))
    resumed = train(cfg("parts"))
    for name, player in resumed.players.items():
        for mine, theirs in zip(player.net.parameters(), whole.players[name].net.parameters()):
            assert torch.equal(mine, theirs), name
    with pytest.raises(ConfigError, match="data.paired"):
        train(cfg("unpaired", "data.paired=false"))


def test_lr_schedule_is_constant_then_linear_to_zero(tmp_path, translation):
    from bigtrain.schedule import make_plan

    c = _cyclegan(tmp_path, translation, "sched")
    base = {"G": 2e-4, "D_A": 2e-4, "D_B": 2e-4}
    at = {k: make_plan(c.schedule, int(k * 1000), base_lr=base, default_batch=8, total_kimg=30).lr["G"] for k in (0, 15, 22.5, 30)}
    assert at[0] == at[15] == 2e-4 and at[22.5] == pytest.approx(1e-4) and at[30] == 0.0


def test_make_toy_digits_translation_is_the_inversion(translation):
    a, b = np.load(translation["testA"])["x"], np.load(translation["testB"])["x"]
    assert np.array_equal(b, 255 - a)
    pairs = np.load(translation["train_pairs"])["x"]
    assert pairs.shape[1:] == (8, 16, 1) and np.array_equal(pairs[:, :, 8:], 255 - pairs[:, :, :8])
    out = run_cli("make-toy", "digits-translation", str(translation["trainA"].parent))
    assert out.returncode != 0 and "not an empty folder" in out.stderr


# slow (the default run's 15-minute budget)
@pytest.mark.slow
def test_eval_scores_translations_of_a_against_the_statistics_of_b(tmp_path, translation, weights, capsys):
    """`bigtrain eval` on a CycleGAN run: FID of G_AB(test A) against B's statistics, with the
    inputs named in the protocol; the same number as `bigtrain fid` on `bigtrain translate`'s
    output, and warnings for a reference of the inputs' own images and for repeated inputs.
    (ref-stats, eval and fid run in this process, as the CLI calls them: no start-up each.)"""
    import hashlib

    from bigtrain.data.inputs import read_images
    from tests.unit.test_eval_commands import run

    inputs = tmp_path / "testA8.npz"  # 8 test images of A, so that Inception has little to do
    np.savez(inputs, x=np.load(translation["testA"])["x"][:8])
    train(_cyclegan(tmp_path, translation, "scored", f"cyclegan.eval_inputs={inputs}"))
    run_dir, inc = tmp_path / "runs" / "scored", ["--weights", str(weights), "--no-download", "--device", "cpu", "--batch-size", "8"]
    for name, images in (("A", inputs), ("B", translation["testB"])):
        run("ref-stats", [str(images), str(tmp_path / f"{name}.npz"), "--num", "8", *inc], capsys)
    result, _ = run("eval", ["--run", str(run_dir), "--metrics", "fid", "--num", "8", "--ref-stats", str(tmp_path / "B.npz"), *inc], capsys)
    a, _ = read_images(inputs, 16, channels=1)
    assert result["protocol"]["generated"]["inputs"] == {
        "direction": "AB", "source": str(inputs), "num_images": 8, "sha256": hashlib.sha256(a.contiguous().numpy().tobytes()).hexdigest()}
    assert not any("inputs" in w or "source" in w for w in result["warnings"]), result["warnings"]
    out = run_cli("translate", "--run", str(run_dir), "--in", str(inputs), "--out", str(tmp_path / "ab.npz"), "--batch-size", "8")
    assert out.returncode == 0, out.stderr
    direct, _ = run("fid", [str(tmp_path / "ab.npz"), str(tmp_path / "B.npz"), *inc], capsys)
    assert direct["fid"] == pytest.approx(result["fid"], rel=1e-4) and result["fid"] > 0
    wrong, _ = run("eval", ["--run", str(run_dir), "--metrics", "fid", "--num", "10", "--ref-stats", str(tmp_path / "A.npz"), *inc], capsys)
    assert any("translates the images of reference's source" in w for w in wrong["warnings"]), wrong["warnings"]
    assert any("10 translations of 8 distinct inputs" in w for w in wrong["warnings"]), wrong["warnings"]


@pytest.mark.slow
def test_bench_img2img_prints_json_for_both_recipes():
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(CONFIGS.parent / "bench" / "img2img.py"), "--resolution", "32", "--width", "4", "--iters", "4", "--intervals", "2"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert [r["recipe"] for r in result["runs"]] == ["cyclegan", "pix2pix"] and result["batch"] == 1
    assert sorted(result["runs"][0]["params"]) == ["D_A", "D_B", "G_AB", "G_BA"] and sorted(result["runs"][1]["params"]) == ["D", "G"]
    assert all(r["img_per_s"] > 0 and r["peak_mem_mb"] > 0 and len(r["intervals_img_per_s"]) == 2 for r in result["runs"])


@pytest.mark.parametrize("order", ["d_first", "g_first"])
def test_pix2pix_steps_d_then_g_against_the_updated_d_as_the_reference(tmp_path, translation, order):
    """The reference's Pix2Pix optimize_parameters: fake = G(a); D steps on it; G's adversarial loss
    is then D's (the stepped D's) score of the same fake. `pix2pix.order=g_first` scores it with the D
    of before D's step (bigtrain's order before issue 27). Checked against a hand-made step on copies
    of the initial nets and the batch the run drew; G without dropout, so no random state enters."""
    import copy
    import dataclasses

    import torch.nn.functional as F

    from bigtrain.engine.loop import Trainer

    cfg = load_config(CONFIGS / "pix2pix_digits.yaml", [
        f"run.out_dir={tmp_path / 'runs'}", "run.name=order", f"data.path={translation['train_pairs']}",
        f"pix2pix.eval_inputs={translation['test_pairs']}", "train.total_kimg=0.008", "log.progress_bar=false",
        "model.g.width=4", "model.d.width=4", "model.g.dropout=false", f"pix2pix.order={order}"])
    trainer = Trainer(cfg)
    G0, D0 = (copy.deepcopy(trainer.players[name].net) for name in ("G", "D"))
    seen = {}

    def recorded(phase):
        def compute(b):
            losses, stats = phase.compute(b)
            seen[phase.name] = (b.data.get("real", {}).get("x"), stats)
            return losses, stats
        return dataclasses.replace(phase, compute=compute)

    trainer.recipe.phases = [recorded(phase) for phase in trainer.recipe.phases]
    assert [phase.name for phase in trainer.recipe.phases] == (
        ["D_main", "G_main"] if order == "d_first" else ["G_main", "D_main"])
    trainer.train()
    x = seen["D_main" if order == "d_first" else "G_main"][0]  # the one batch drawn [8, 2, 16, 16]
    a, b = x[:, :1], x[:, 1:]
    fake = G0(a)

    def adversarial(D):  # G's loss term: D's patch map of (a, G(a)) pushed to 1
        scores = D(torch.cat([a, fake], 1))
        return float(F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores)))

    before = adversarial(D0)
    d_loss = 0.5 * sum(
        F.binary_cross_entropy_with_logits(s, torch.full_like(s, t))
        for s, t in ((D0(torch.cat([a, b], 1)), 1.0), (D0(torch.cat([a, fake.detach()], 1)), 0.0)))
    adam = torch.optim.Adam(D0.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
    d_loss.backward()
    adam.step()
    after = adversarial(D0)
    assert abs(before - after) > 1e-3  # D's step moves the score: the test tells the orders apart
    got = float(seen["G_main"][1]["loss/G_gan"])
    assert got == pytest.approx(after if order == "d_first" else before, abs=1e-6)
    assert float(seen["D_main"][1]["loss/D"]) == pytest.approx(float(d_loss), abs=1e-6)


def test_pix2pix_d_first_runs_g_twice_alike_and_moves_its_statistics_once(tmp_path, translation):
    """d_first runs G in the D phase (no gradient) and again in the G phase: both runs give the same
    fakes, and G's batch-norm statistics move once per iteration, as in the reference's single
    forward. (This G is too shallow for dropout; the next test replays dropout.)"""
    from bigtrain.engine.loop import Trainer

    cfg = load_config(CONFIGS / "pix2pix_digits.yaml", [
        f"run.out_dir={tmp_path / 'runs'}", "run.name=twice", f"data.path={translation['train_pairs']}",
        f"pix2pix.eval_inputs={translation['test_pairs']}", "train.total_kimg=0.016", "log.progress_bar=false",
        "model.g.width=4", "model.d.width=4", "model.g.downs=4"])
    trainer = Trainer(cfg)
    G = trainer.players["G"].net
    outputs = []
    G.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()) if module.training else None)
    trainer.train()  # 2 iterations of 8 (sample grids and evaluation run G in eval mode)
    assert len(outputs) == 4
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[2], outputs[3])
    assert not torch.equal(outputs[1], outputs[2])
    norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 2 for m in norms)


def test_a_replayed_random_state_draws_the_same_dropout_and_then_goes_on():
    from bigtrain.families.img2img.replay import random_state, replayed

    drop, x = torch.nn.Dropout(0.5), torch.ones(1000)
    state = random_state(x.device)
    first = drop(x)
    after = torch.get_rng_state()
    with replayed(state, x.device):
        again = drop(x)
    assert torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), after)  # the run goes on as if nothing was replayed
    assert not torch.equal(drop(x), first)
