"""The 25-Gaussian grid benchmark: data, make-toy, the mode-coverage grader, PacGAN's grid G/D."""
import argparse
import math

import numpy as np
import pytest
import torch

from bigtrain.data.npz import load_npz
from bigtrain.data.toy import GRID25_MODES, add_make_toy_arguments, grid25, run_make_toy, write_grid25_npz
from bigtrain.errors import BigtrainError
from bigtrain.eval.modes import PACGAN_NUM_SAMPLES, mode_coverage
from bigtrain.families.gan.grid import GridDiscriminator, GridGenerator, LinearMaxout

STD = 0.05
# Share of a 2-D isotropic Gaussian within 3 std: P(chi2_2 < 9) = 1 - exp(-9/2) = 98.89%.
WITHIN_3_STD = 1 - math.exp(-4.5)


def _nearest(x):
    d = ((x[:, None, :] - GRID25_MODES[None]) ** 2).sum(-1)
    return d.argmin(1)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_modes_are_the_grid():
    assert GRID25_MODES.shape == (25, 2)
    assert {tuple(m) for m in GRID25_MODES.tolist()} == {(i, j) for i in (-4, -2, 0, 2, 4) for j in (-4, -2, 0, 2, 4)}


def test_grid25_modes_equally_often_with_std_005():
    n = 50_000
    x = grid25(n, seed=3)
    assert x.dtype == np.float32 and x.shape == (n, 2)
    label = _nearest(x)
    counts = np.bincount(label, minlength=25)
    # 2000 expected per mode, binomial sd ~44: +-250 is > 5 sd, while a missing or doubled mode is far out.
    assert np.all(np.abs(counts - n / 25) < 250), counts
    resid = x - GRID25_MODES[label]
    assert np.allclose(resid.mean(0), 0, atol=0.002)
    assert np.allclose(resid.std(0), STD, rtol=0.02)


def test_grid25_deterministic_in_seed():
    assert np.array_equal(grid25(100, seed=1), grid25(100, seed=1))
    assert not np.array_equal(grid25(100, seed=1), grid25(100, seed=2))


def test_write_npz_is_vector_data_and_leaves_no_temp(tmp_path):
    path = write_grid25_npz(tmp_path / "g.npz", 500, seed=4)
    with np.load(path) as f:
        assert f.files == ["x"] and f["x"].dtype == np.float32
        assert np.array_equal(f["x"], grid25(500, seed=4))
    x, y = load_npz(path)
    assert x.dtype == torch.float32 and x.shape == (500, 2) and y is None
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]


def test_make_toy_writes_and_refuses_to_overwrite(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_make_toy_arguments(parser)
    out = tmp_path / "grid.npz"
    args = parser.parse_args(["grid25", str(out), "--num", "300", "--seed", "7"])
    assert run_make_toy(args) == 0
    assert np.array_equal(np.load(out)["x"], grid25(300, seed=7))
    assert "300" in capsys.readouterr().out

    out.write_bytes(b"keep me")
    with pytest.raises(BigtrainError, match="already exists"):
        run_make_toy(argparse.Namespace(dataset="grid25", out=str(out), num=10, seed=0))
    assert out.read_bytes() == b"keep me"


def test_make_toy_rejects_bad_num(tmp_path):
    with pytest.raises(BigtrainError, match="--num"):
        run_make_toy(argparse.Namespace(dataset="grid25", out=str(tmp_path / "a.npz"), num=0, seed=0))
    assert not (tmp_path / "a.npz").exists()


# ---------------------------------------------------------------------------------------------
# Grader
# ---------------------------------------------------------------------------------------------


def test_true_data_scores_all_modes_and_near_zero_kl():
    r = mode_coverage(grid25(PACGAN_NUM_SAMPLES, seed=0), GRID25_MODES, STD)
    assert r["modes"] == 25 and r["num_samples"] == PACGAN_NUM_SAMPLES
    # sd of the fraction is ~0.002 at N = 2500
    assert abs(r["high_quality"] - WITHIN_3_STD) < 0.008
    # the histogram of 2500 uniform draws has KL ~ (K - 1) / 2N ~ 0.005 from uniform
    assert 0 <= r["kl"] < 0.02
    assert len(r["counts"]) == 25 and sum(r["counts"]) == round(r["high_quality"] * PACGAN_NUM_SAMPLES)


def test_collapse_to_one_mode():
    rng = np.random.default_rng(0)
    x = GRID25_MODES[7] + STD * 0.5 * rng.standard_normal((2500, 2))
    r = mode_coverage(x, GRID25_MODES, STD)
    assert r["modes"] == 1 and r["high_quality"] == 1.0
    assert r["counts"][7] == 2500 and sum(r["counts"]) == 2500
    assert r["kl"] == pytest.approx(math.log(25))


def test_collapse_to_five_modes():
    rng = np.random.default_rng(1)
    picked = [0, 6, 12, 18, 24]
    x = GRID25_MODES[np.repeat(picked, 500)] + STD * 0.5 * rng.standard_normal((2500, 2))
    r = mode_coverage(torch.from_numpy(x), GRID25_MODES, STD)  # torch input works too
    assert r["modes"] == 5 and r["high_quality"] == 1.0
    assert [i for i, c in enumerate(r["counts"]) if c] == picked
    assert r["kl"] == pytest.approx(math.log(5))


def test_samples_far_from_modes_are_not_high_quality():
    # (1, 1) lies between four modes, 28 std from each; (9, 9) is off the grid; nan is nothing.
    x = np.array([[1.0, 1.0], [9.0, 9.0], [-3.0, 1.0], [np.nan, 0.0]])
    r = mode_coverage(x, GRID25_MODES, STD)
    assert r["modes"] == 0 and r["high_quality"] == 0.0 and sum(r["counts"]) == 0
    assert math.isnan(r["kl"])


def test_three_std_boundary_and_nearest_assignment():
    mode = GRID25_MODES[12]  # (0, 0)
    inside = mode + np.array([2.9 * STD, 0.0])
    outside = mode + np.array([0.0, 3.1 * STD])
    r = mode_coverage(np.stack([inside, outside]), GRID25_MODES, STD)
    assert r["high_quality"] == 0.5 and r["counts"][12] == 1 and r["modes"] == 1
    # one high-quality sample is enough to capture a mode (PacGAN's rule)
    near_13 = GRID25_MODES[13] + np.array([0.0, -0.1 * STD])
    assert mode_coverage(near_13[None], GRID25_MODES, STD)["counts"][13] == 1


# ---------------------------------------------------------------------------------------------
# PacGAN's grid G and D
# ---------------------------------------------------------------------------------------------


def _num_params(m):
    return sum(p.numel() for p in m.parameters())


def test_generator_shape_and_parameter_count():
    g = GridGenerator(z_dim=2)
    assert g(torch.randn(16, 2)).shape == (16, 2)
    # hidden Linears have no bias (batch norm's shift replaces it):
    #   2*400 + 3*(400*400) = 480_800; 4 batch norms x (scale 400 + shift 400) = 3_200;
    #   output 400*2 + 2 = 802  ->  484_802
    assert _num_params(g) == 484_802
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in g.modules()) == 4
    # without batch norm the hidden layers keep biases: 2*400+400 + 3*(400*400+400) + 802 = 483_202
    assert _num_params(GridGenerator(z_dim=2, batch_norm=False)) == 483_202
    with pytest.raises(ValueError):
        g(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))


def test_discriminator_shapes_and_parameter_counts():
    d = GridDiscriminator()
    assert d(torch.randn(16, 2)).shape == (16,)
    # 3 LinearMaxout of 200 units x 5 pieces, then a linear logit:
    #   (2*1000 + 1000) + 2 * (200*1000 + 1000) + (200 + 1) = 405_201
    assert _num_params(d) == 405_201
    d4 = GridDiscriminator(in_features=8)  # PacGAN4: 4 packed 2-d samples
    assert d4(torch.randn(16, 8)).shape == (16,)
    assert d4(torch.randn(16, 4, 2)).shape == (16,)
    # only the first layer grows: (8*1000 + 1000) + 402_000 + 201 = 411_201
    assert _num_params(d4) == 411_201


def test_init_is_normal_002_with_zero_bias():
    torch.manual_seed(0)
    d = GridDiscriminator()
    w = d.net[1].linear.weight
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all(m.bias.abs().max() == 0 for m in d.modules() if isinstance(m, torch.nn.Linear))


def test_maxout_takes_max_of_five_consecutive_pieces():
    layer = LinearMaxout(1, 2, pieces=5)
    with torch.no_grad():
        layer.linear.weight.zero_()
        layer.linear.bias.copy_(torch.tensor([0.0, 1, 2, 3, 4, 9, 8, 7, 6, 5]))
    # unit 0 = max(0..4) = 4, unit 1 = max(9..5) = 9; interleaved groups would give (8, 9),
    # a mean (2, 7), a plain linear layer 10 outputs.
    assert torch.equal(layer(torch.zeros(3, 1)), torch.tensor([[4.0, 9.0]] * 3))
    torch.manual_seed(1)
    layer = LinearMaxout(3, 4, pieces=5)
    x = torch.randn(6, 3)
    pre = x @ layer.linear.weight.T + layer.linear.bias  # [6, 20]
    for j in range(4):
        want = torch.stack([pre[:, j * 5 + k] for k in range(5)]).max(0).values
        assert torch.allclose(layer(x)[:, j], want)
