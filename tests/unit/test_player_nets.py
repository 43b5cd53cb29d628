"""Every player's network is addressable by its name (issue 10, point 2): `model.nets.<player>`
holds keys over its side's `model.g` / `model.d` (docs/design.md, "Network config per
architecture"). GMAN's discriminators D1..DK are the players that use it today."""
import re

import pytest
import torch

from bigtrain import cli
from bigtrain.families.gan.mlp import MlpDConfig
from bigtrain.families import load_config, net_for
from bigtrain.engine.loop import Trainer
from bigtrain.errors import ConfigError
from tests.conftest import REPO, run_cli, tiny_config, write_config, write_images_npz

GMAN = str(REPO / "configs" / "gman_grid25.yaml")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid25.npz"
    assert run_cli("make-toy", "grid25", str(path)).returncode == 0
    return path


def _dry_run(capsys, *args: str) -> tuple[int, str, str]:
    """`bigtrain train ARGS --dry-run` in this process (the CLI's own parser and messages)."""
    code = cli.main(["train", *args, "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _counts(capsys, grid, *overrides: str) -> dict[str, int]:
    code, stdout, stderr = _dry_run(capsys, GMAN, f"data.path={grid}", *overrides)
    assert code == 0, stderr
    line = stdout.strip().splitlines()[-1]
    return {name: int(n.replace(",", "")) for name, n in re.findall(r"(\w+) ([\d,]+)", line.removeprefix("# parameters:"))}


def test_one_discriminator_gets_its_own_width_and_arch(capsys, grid):
    base = _counts(capsys, grid)
    assert base["D1"] == base["D2"] == base["D3"]
    wider = _counts(capsys, grid, "model.nets.d2.width=64")
    assert wider["D2"] < base["D2"] and {k: wider[k] for k in ("G", "D1", "D3")} == {k: base[k] for k in ("G", "D1", "D3")}
    # another arch starts from that arch's defaults: mlp's 64 units, 2 layers, on 2 inputs
    mlp = _counts(capsys, grid, "model.nets.d3.arch=mlp")
    assert mlp["D3"] == (2 * 64 + 64) + (64 * 64 + 64) + (64 + 1) and mlp["D1"] == base["D1"]


@pytest.mark.parametrize("override, key, words", [
    ("model.nets.d2.foo=1", "model.nets.d2.foo", "has no key 'foo'"),
    ("model.nets.d2.width=-3", "model.nets.d2.width", "must be > 0"),
    ("model.nets.d2.width=abc", "model.nets.d2.width", "could not be converted"),
    ("model.nets.d2.arch=resnet", "model.nets.d2.arch", "unknown architecture"),
    ("model.nets.d2=3", "model.nets.d2", "must be a mapping"),
    ("model.nets.d2.pack=2", "model.nets.d2", "pack > 1"),
    ("model.nets.d9.width=8", "model.nets.d9", "no player 'd9'; its players are d1, d2, d3, g"),
])
def test_a_bad_player_net_is_one_error_naming_its_key(capsys, grid, override, key, words):
    code, _, stderr = _dry_run(capsys, GMAN, f"data.path={grid}", override)
    assert code == 2, stderr
    assert stderr.startswith(f"bigtrain: error: config error: {key}: ") and words in stderr, stderr


def test_players_g_and_d_are_set_in_model_g_and_model_d(capsys, tmp_path):
    data = write_images_npz(tmp_path / "d.npz")
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data))
    code, _, stderr = _dry_run(capsys, str(cfg), "model.nets.d.width=8")
    assert code == 2 and "model.nets.d: player D's network is model.d; set its keys there" in stderr, stderr


def test_net_for_keeps_the_base_for_players_without_a_section():
    cfg = load_config(GMAN, ["model.nets.d2.width=16"])
    assert net_for(cfg.model, "D1", "d") is cfg.model.d
    d2 = net_for(cfg.model, "D2", "d")
    assert (type(d2), d2.width, d2.depth) == (type(cfg.model.d), 16, cfg.model.d.depth)
    with pytest.raises(ConfigError, match=r"model\.nets\.d2\.norm"):
        net_for(load_config(GMAN, ["model.nets.d2.arch=mlp", "model.nets.d2.norm=batch"]).model, "D2", "d")


def test_a_gman_with_unlike_discriminators_trains_resumes_and_samples(tmp_path, grid):
    out_dir = tmp_path / "runs"
    over = [f"data.path={grid}", f"run.out_dir={out_dir}", "train.total_kimg=0.8", "train.batch_size=100", "log.every_kimg=0.1",
            "checkpoint.every_kimg=0.4", "model.nets.d2.arch=mlp", "model.nets.d2.width=32"]
    trainer = Trainer(load_config(GMAN, over))
    assert isinstance(trainer.recipe.d_nets["D2"], MlpDConfig)
    assert sum(p.numel() for p in trainer.players["D2"].net.parameters()) == (2 * 32 + 32) + (32 * 32 + 32) + (32 + 1)
    trainer.train()
    trainer.backend.close()
    final = {n: torch.cat([p.detach().flatten() for p in pl.net.parameters()]) for n, pl in trainer.players.items()}
    # resumed from the step-4 checkpoint, each player (D2 with its own net) ends where it did
    run = out_dir / load_config(GMAN, over).run.name
    resumed = Trainer(load_config(GMAN, [*over, f"train.resume={next(run.glob('checkpoints/step-00000004*'))}", "run.name=resumed"]))
    resumed.train()
    resumed.backend.close()
    for name, flat in final.items():
        assert torch.equal(flat, torch.cat([p.detach().flatten() for p in resumed.players[name].net.parameters()])), name
    sample = run_cli("sample", "--run", str(run), "--num", "8", "--out", str(tmp_path / "s.npz"))
    assert sample.returncode == 0, sample.stderr
