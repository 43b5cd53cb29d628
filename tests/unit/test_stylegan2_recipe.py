"""The stylegan2 recipe (issue 25 points 2-5) through the loop on tiny nets: ADA's p rises when D
overfits and stays 0 without augmentation, a resume continues p, pl_mean and every loss bit for bit,
the lazy phases and their Adam correction, R1 through the augment pipe against finite differences,
truncation in W, noise modes and the style-mixing grid, the fakes' labels from the data's label
distribution, and a new run started from a trained one (train.init_from)."""

import json
import math

import numpy as np
import pytest
import torch

from bigtrain.data import DataInfo
from bigtrain.engine.loop import Trainer
from bigtrain.families import build_recipe, config_from_dict, load_config
from bigtrain.families.stylegan2.augment import AugmentPipe
from bigtrain.families.stylegan2.recipe import lazy_adam
from tests.conftest import run_cli, tiny_config, write_images_npz

NETS = {
    "z_dim": 16,
    "num_classes": 4,
    "g": {"arch": "stylegan2", "channel_base": 256, "channel_max": 32, "map": 1, "w_dim": 16},
    "d": {"arch": "stylegan2", "channel_base": 256, "channel_max": 32, "mbstd_group": 4},
}


def _cfg(tmp_path, name="sg", n=64, iters=16, **options) -> dict:
    data = tmp_path / f"d{n}.npz"
    if not data.exists():
        write_images_npz(data, n=n, res=16, classes=4)
    cfg = tiny_config(tmp_path, data, data={"resolution": 16}, model=NETS, run={"name": name, "out_dir": str(tmp_path / "runs"), "seed": 2},
                      train={"total_kimg": iters * 8 / 1000, "batch_size": 8},
                      log={"every_kimg": 0.008, "progress_bar": False, "samples_every_kimg": 1.0},
                      checkpoint={"every_kimg": 0.016, "keep_last": 20})  # fmt: skip
    cfg["recipe"] = "stylegan2"
    cfg["stylegan2"] = {"r1_gamma": 1.0, "r1_interval": 4, "pl_interval": 2, "ada_interval": 2, "ada_kimg": 1, **options}
    return cfg


def _train(cfg: dict) -> Trainer:
    trainer = Trainer(config_from_dict(cfg))
    try:
        trainer.train()
    finally:
        trainer.release()
    return trainer


def _rows(tmp_path, name="sg") -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def test_ada_p_rises_when_d_overfits_and_noaug_keeps_it_at_zero(tmp_path):
    # 16 images and a fast D: D tells them from the fakes at once, E[sign(D(real))] > 0.6
    fast_d = {"optim": {"d": {"lr": 0.01, "betas": [0.0, 0.99]}, "g": {"lr": 1e-5, "betas": [0.0, 0.99]}}}
    cfg = _cfg(tmp_path, "ada", n=16, iters=16)
    cfg.update(fast_d)
    _train(cfg)
    rows = _rows(tmp_path, "ada")
    p = [r["augment/p"] for r in rows]
    assert np.mean([r["D/sign_real"] for r in rows[4:]]) > 0.6
    assert p[0] == 0.0 and p[-1] > 0.05 and all(b >= a for a, b in zip(p, p[1:]))  # 8 images x 2 / 1000 per rise
    cfg = _cfg(tmp_path, "noaug", n=16, iters=16, augment="noaug")
    cfg.update(fast_d)
    _train(cfg)
    assert all(r["augment/p"] == 0.0 for r in _rows(tmp_path, "noaug"))


def test_a_resume_continues_p_pl_mean_and_every_loss_exactly(tmp_path):
    whole = _train(_cfg(tmp_path, "whole", augment_p=0.3))
    cfg = _cfg(tmp_path, "resumed", augment_p=0.3)
    cfg["train"]["resume"] = str(tmp_path / "runs" / "whole" / "checkpoints" / "step-00000006")
    resumed = _train(cfg)
    keys = ("loss/D", "loss/G", "augment/p", "D/sign_real")
    want = [[r.get(k) for k in keys] + [r.get("loss/G_pl"), r.get("loss/D_r1")] for r in _rows(tmp_path, "whole") if r["step"] > 6]
    got = [[r.get(k) for k in keys] + [r.get("loss/G_pl"), r.get("loss/D_r1")] for r in _rows(tmp_path, "resumed")]
    assert got == want
    assert resumed.recipe.state_dict()["p"] == whole.recipe.state_dict()["p"] and float(whole.recipe.pipe.p) != 0.3
    assert torch.equal(resumed.recipe.pl_mean, whole.recipe.pl_mean) and float(whole.recipe.pl_mean) > 0
    for name in ("G", "D"):
        a, b = whole.players[name].net.state_dict(), resumed.players[name].net.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(whole.players["G"].net.mapping.w_avg, resumed.players["G"].net.mapping.w_avg)


def test_the_lazy_phases_their_gain_and_adams_correction(tmp_path):
    cfg = config_from_dict(_cfg(tmp_path))
    recipe = build_recipe(cfg, DataInfo("image", (1, 16, 16), 4))
    specs = {s.name: s for s in recipe.players()}
    g, d = specs["G"].optim, specs["D"].optim
    assert g.lr == pytest.approx(2e-4 * 2 / 3) and g.betas == pytest.approx([0.5 ** (2 / 3), 0.999 ** (2 / 3)])
    assert d.lr == pytest.approx(2e-4 * 4 / 5) and lazy_adam(cfg.optim.get("d") or d, 1).lr == pytest.approx(d.lr / 2)
    trainer = Trainer(cfg)
    try:
        phases = {p.name: p for p in trainer.recipe.phases}
        assert list(phases) == ["G_main", "G_reg", "D_main", "D_reg"]
        assert (phases["G_reg"].interval, phases["G_reg"].batch_fraction, phases["D_reg"].interval) == (2, 0.5, 4)
        assert trainer.players["G"].optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 2 / 3)
    finally:
        trainer.release()


def test_r1_through_the_pipe_equals_finite_differences():
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 1)).double()
    pipe = AugmentPipe(p=1.0).double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)

    def score(images):  # the same draws every call: the pipe is a pure function of the RNG state
        torch.manual_seed(7)
        return D(pipe(images)).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(xg), xg, create_graph=True)
    direction = torch.randn_like(x)
    eps = 1e-5
    numeric = (score(x + eps * direction) - score(x - eps * direction)) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5)
    grad.square().sum().backward()  # R1's second backward reaches D
    assert all(p.grad.abs().sum() > 0 for p in D.parameters() if p.dim() > 1)  # biases do not move input gradients


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sg")
    _train(_cfg(tmp, iters=4, style_mixing=0.9))
    return tmp / "runs" / "sg"


def test_truncation_in_w_noise_modes_and_style_mixing(sampled_run, tmp_path):
    from bigtrain.engine.generation import load_generation

    loaded = load_generation(str(sampled_run))
    x0, y = loaded.generate(range(6), seed=1, truncation=0.0)
    # psi 0: every w is w_avg (the grouped conv of a batch may differ in the last bits)
    assert all(torch.allclose(x0[0], x0[i], atol=1e-5) for i in range(6)) and len(set(y.tolist())) > 1
    x1, _ = loaded.generate(range(6), seed=1)
    assert not torch.equal(x1[0], x1[1]) and torch.equal(x1, loaded.generate(range(6), seed=1)[0])  # const noise
    r1, _ = loaded.generate(range(2), seed=1, noise_mode="random")
    r2, _ = loaded.generate(range(2), seed=1, noise_mode="random")
    assert not torch.equal(r1, r2)  # fresh noise each call
    cut, _ = loaded.generate(range(2), seed=1, truncation=0.0, truncation_cutoff=1)
    assert not torch.equal(cut[0], cut[1])  # only the first layer's w is truncated
    grid = loaded.style_mixing(2, 3, seed=1)
    assert grid.shape == (12, 1, 16, 16) and torch.equal(grid[0], torch.full_like(grid[0], -1.0))
    rows, cols = grid[[4, 8]], grid[1:4]
    assert not torch.equal(grid[5], rows[0]) and not torch.equal(grid[5], cols[0])  # a mix of both
    out = run_cli("sample", "--run", str(sampled_run), "--mix", "2,3", "--out", str(tmp_path / "mix.png"))
    assert out.returncode == 0, out.stderr  # the grid's size is --mix's: no --num needed
    with_num = run_cli("sample", "--run", str(sampled_run), "--num", "4", "--mix", "2,3", "--out", str(tmp_path / "m2.png"))
    assert with_num.returncode == 2 and "--num does not apply to --mix" in with_num.stderr
    assert not (tmp_path / "m2.png").exists()
    no_num = run_cli("sample", "--run", str(sampled_run), "--out", str(tmp_path / "n.png"))
    assert no_num.returncode == 2 and "needs --num" in no_num.stderr and not (tmp_path / "n.png").exists()
    from PIL import Image

    assert Image.open(tmp_path / "mix.png").size == (4 * 16, 3 * 16)
    bad = run_cli("sample", "--run", str(sampled_run), "--num", "2", "--head", "1", "--out", str(tmp_path / "h.npz"))
    assert bad.returncode == 2 and "takes no --head" in bad.stderr


def test_the_fakes_labels_follow_the_datas(tmp_path):
    info = DataInfo("image", (1, 16, 16), 4, label_counts=(75, 25, 0, 0))
    cfg = load_config(None, ["recipe=stylegan2", "model.g.arch=stylegan2", "model.d.arch=stylegan2", "model.num_classes=4", "data.resolution=16"])
    recipe = build_recipe(cfg, info)
    recipe.G = type("P", (), {"net": type("N", (), {"num_ws": 8})()})()
    y = recipe.latents(4000, torch.Generator().manual_seed(0), torch.device("cpu"))["y"]
    assert abs(float((y == 0).float().mean()) - 0.75) < 0.03 and int((y >= 2).sum()) == 0


def test_a_new_run_starts_from_a_trained_one(tmp_path):
    first = _train(_cfg(tmp_path, "first", iters=4, augment_p=0.2))
    cfg = _cfg(tmp_path, "tuned", iters=4)
    cfg["train"]["init_from"] = str(tmp_path / "runs" / "first")
    tuned = Trainer(config_from_dict(cfg))
    try:
        for name in ("G", "D"):
            a, b = first.players[name].net.state_dict(), tuned.players[name].net.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), name
        ema_a, ema_b = first.emas["G"].module.state_dict(), tuned.emas["G"].module.state_dict()
        assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
        assert tuned.counters.step == 0 and not tuned.players["G"].optimizer.state
        assert float(tuned.recipe.pipe.p) == 0.0 and tuned.recipe.ada_kimg == 1  # the config's; null would be 100
    finally:
        tuned.release()
    cfg["train"]["init_from"] = str(tmp_path / "runs" / "nothing-here")
    with pytest.raises(Exception, match="nothing-here"):
        Trainer(config_from_dict(cfg)).release()
    other = _cfg(tmp_path, "wider", iters=4)
    other["model"]["g"]["channel_max"] = 64
    other["train"]["init_from"] = str(tmp_path / "runs" / "first")
    with pytest.raises(Exception, match="init_from: .*G's .* is \\("):
        Trainer(config_from_dict(other)).release()
    assert math.isclose(build_recipe(config_from_dict({**cfg, "stylegan2": {"ada_kimg": None}}), first.info).ada_kimg, 100.0)
