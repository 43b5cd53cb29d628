"""BigGAN's sampling options (issue 13, point 3): standing statistics, interpolation grids, and the
truncation curve of `bigtrain eval`, through the CLI on a short biggan run."""
import json

import pytest
import torch

from bigtrain import sampling
from bigtrain.families.biggan.nets import BigganGConfig
from bigtrain.config import EmaConfig
from bigtrain.data import DataInfo
from bigtrain.engine.backends.base import Backend, _differentiable_sum
from bigtrain.engine.players import EMA
from bigtrain.families.biggan.nets import BigganGenerator, Statistics
from tests.conftest import run_cli, write_images_npz


def small_g(**kw) -> BigganGenerator:
    torch.manual_seed(0)
    return BigganGenerator(BigganGConfig(width=4, shared_dim=16, **kw), 64, 10, DataInfo("image", (1, 32, 32), 10))


def test_standing_statistics_are_the_mean_of_training_batch_statistics():
    G = small_g()
    first = G.blocks[0].bn1.stats
    seen = []
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].float()))
    u_before = G.linear.parametrizations.weight[0]._u.clone()
    n = sampling.standing_statistics(G, z_dim=64, num_classes=10, batches=3, batch_size=16, seed=5)
    hook.remove()
    assert n == len(sampling.batch_norms(G)) == 2 * 3 + 1  # two CBNs per block + the output BN
    batch_means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen])  # [3, C]
    batch_vars = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen])
    torch.testing.assert_close(first.running_mean, batch_means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var, batch_vars.mean(0), rtol=1e-5, atol=1e-6)
    assert not G.training and not first.training and first.momentum == 0.1  # left as found
    assert torch.equal(G.linear.parametrizations.weight[0]._u, u_before)  # SN's power iteration did not run
    again = small_g()
    sampling.standing_statistics(again, z_dim=64, num_classes=10, batches=3, batch_size=16, seed=5)
    assert torch.equal(again.blocks[0].bn1.stats.running_mean, first.running_mean)  # reproducible draws


def test_standing_statistics_refuse_a_net_without_batch_norm():
    with pytest.raises(ValueError, match="no batch norm"):
        sampling.standing_statistics(torch.nn.Linear(4, 4), z_dim=4, num_classes=0, batches=1, batch_size=2, seed=0)


def test_interpolation_rows_go_from_one_sample_to_the_next():
    G = small_g()
    G.eval()
    z = sampling.latents(64, range(4), seed=1)
    y = sampling.labels(10, range(4), seed=1)
    with torch.no_grad():
        grid = sampling.interpolation(G, z_dim=64, num_classes=10, rows=2, steps=5, seed=1, kind="z").view(2, 5, 1, 32, 32)
        torch.testing.assert_close(grid[1, 0], G(z[2:3], y[2:3])[0])
        torch.testing.assert_close(grid[1, -1], G(z[3:4], y[2:3])[0])  # z moves, the class stays
        grid = sampling.interpolation(G, z_dim=64, num_classes=10, rows=2, steps=5, seed=1, kind="class").view(2, 5, 1, 32, 32)
        torch.testing.assert_close(grid[0, 0], G(z[0:1], y[0:1])[0])
        torch.testing.assert_close(grid[0, -1], G(z[0:1], y[1:2])[0])  # the class moves, z stays
        assert (grid[0, 2] - grid[0, 0]).abs().max() > 0
    with pytest.raises(ValueError, match="class embedding"):
        sampling.interpolation(torch.nn.Identity(), z_dim=4, num_classes=10, rows=1, steps=3, seed=0, kind="class")


class TwoProcesses(Backend):
    world_size = 2


class OneProcess(Backend):
    world_size = 1


def test_the_engine_attaches_the_reducer_to_the_player_not_to_g_ema():
    G = small_g(cross_replica=True)
    ema = EMA(G, EmaConfig())
    assert TwoProcesses().attach_cross_replica(G) == 7
    stats = [m for m in G.modules() if isinstance(m, Statistics)]
    assert all(m.all_reduce is _differentiable_sum for m in stats)
    assert all(not m.cross_replica and m.all_reduce is None for m in ema.module.modules() if isinstance(m, Statistics))
    OneProcess().attach_cross_replica(G)
    assert all(m.all_reduce is None for m in stats)  # one process: plain BN
    assert OneProcess().attach_cross_replica(small_g()) == 0  # cross_replica off: nothing asks


@pytest.fixture(scope="module")
def biggan_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bgrun")
    data = write_images_npz(tmp / "d.npz", n=64, res=32, channels=1, classes=10)
    out = run_cli("train", "configs/biggan_digits.yaml", f"data.path={data}", f"run.out_dir={tmp}", "train.total_kimg=0.064",
                  "train.batch_size=16", "model.g.width=4", "model.d.width=8", "model.g.shared_dim=8", "log.progress_bar=false")
    assert out.returncode == 0, out.stderr
    return tmp / "biggan_digits"


# slow (the default run's 15-minute budget; interpolation and standing statistics are unit-tested above)
@pytest.mark.slow
def test_sample_interpolations_and_standing_statistics_through_the_cli(biggan_run, tmp_path):
    from PIL import Image

    for kind in ("z", "class"):
        out = run_cli("sample", "--run", str(biggan_run), "--num", "3", "--interp", kind, "--steps", "4", "--out", str(tmp_path / f"{kind}.png"))
        assert out.returncode == 0, out.stderr
        assert Image.open(tmp_path / f"{kind}.png").size == (4 * 32, 3 * 32)
    plain = run_cli("sample", "--run", str(biggan_run), "--num", "8", "--out", str(tmp_path / "plain.npz"))
    standing = run_cli("sample", "--run", str(biggan_run), "--num", "8", "--standing-stats", "2", "--standing-batch-size", "16", "--out", str(tmp_path / "standing.npz"))
    assert plain.returncode == 0 and standing.returncode == 0, standing.stderr
    import numpy as np
    a, b = np.load(tmp_path / "plain.npz")["x"], np.load(tmp_path / "standing.npz")["x"]
    assert a.shape == b.shape and (a != b).any()  # re-estimated statistics change the samples
    bad = run_cli("sample", "--run", str(biggan_run), "--num", "2", "--interp", "z", "--out", str(tmp_path / "x.npz"))
    assert bad.returncode != 0 and "--interp writes a PNG grid" in bad.stderr and not (tmp_path / "x.npz").exists()
    bad = run_cli("sample", "--run", str(biggan_run), "--num", "2", "--standing-stats", "-1", "--out", str(tmp_path / "y.npz"))
    assert bad.returncode != 0 and "--standing-stats must be >= 0" in bad.stderr


# slow (the default run's 15-minute budget)
@pytest.mark.slow
def test_eval_truncation_curve_through_the_cli(biggan_run, weights, tmp_path):
    inception = ["--weights", str(weights), "--no-download", "--device", "cpu", "--batch-size", "4"]
    data = write_images_npz(tmp_path / "ref.npz", n=16, res=32, channels=1, classes=10, seed=1)
    ref = run_cli("ref-stats", str(data), str(tmp_path / "stats.npz"), "--features", *inception)  # KID's reference features
    assert ref.returncode == 0, ref.stderr
    argv = ["eval", "--run", str(biggan_run), "--metrics", "kid", "--num", "8", "--ref-stats", str(tmp_path / "stats.npz"),
            "--truncation", "0.5,2.0", "--standing-stats", "1", *inception]
    out = run_cli(*argv)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    curve = result["truncation_curve"]
    assert [c["protocol"]["generated"]["truncation"] for c in curve] == [0.5, 2.0]
    assert all(c["standing_stats"] == {"batches": 1, "batch_size": 64} for c in curve)
    assert curve[0]["kid"] != curve[1]["kid"]  # each psi its own samples
    i = argv.index("--truncation")
    bad = run_cli(*argv[:i], "--truncation", "0.5,x", *argv[i + 2:])
    assert bad.returncode != 0 and "'x' is not a number > 0" in bad.stderr
