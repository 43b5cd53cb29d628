"""A family defined outside bigtrain plugs in through the `bigtrain.families` entry point (issue
24): the "hello" family below (its nets, their config sections, its options and recipe) is
written into a temporary folder as an installed distribution of its own, and trains, resumes
exactly and samples through the CLI; nothing of bigtrain changes for it. docs/design.md,
"Adding a family", walks through this same code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli, tiny_config, write_config, write_images_npz

HELLO_FAMILY = '''
"""A two-player family of its own package: a perceptron G and D, one-sided label smoothing."""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain import sampling
from bigtrain.families.base import Arch, Family, Phase, PlayerSpec, Recipe, optim_for
from bigtrain.netconfig import NetConfig


@dataclass
class HelloGConfig(NetConfig):
    arch: str = "hello"  # this class's architecture
    width: int = 16  # hidden units


@dataclass
class HelloDConfig(NetConfig):
    arch: str = "hello"  # this class's architecture
    width: int = 16  # hidden units


class HelloG(nn.Module):
    def __init__(self, net: HelloGConfig, z_dim: int, num_classes: int, info):
        super().__init__()
        self.shape = info.shape
        self.body = nn.Sequential(nn.Linear(z_dim, net.width), nn.ReLU(), nn.Linear(net.width, math.prod(info.shape)), nn.Tanh())

    def forward(self, z, y=None):  # [N, z_dim] -> [N, C, H, W]
        return self.body(z).view(len(z), *self.shape)


class HelloD(nn.Module):
    def __init__(self, net: HelloDConfig, z_dim: int, num_classes: int, info):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(info.shape), net.width), nn.LeakyReLU(0.2), nn.Linear(net.width, 1))

    def forward(self, x, y=None):  # [N, C, H, W] -> [N]
        return self.body(x).squeeze(1)


@dataclass
class HelloOptions:
    label_smoothing: float = 0.0  # one-sided: D's target for reals is 1 - this


class HelloRecipe(Recipe):
    section, Options = "hello", HelloOptions  # YAML: `recipe: hello` + `hello: {label_smoothing: ...}`

    def players(self):
        return [PlayerSpec("G", lambda: self.build_generator(self.info), optim_for(self.cfg, "G"), ema=True),
                PlayerSpec("D", lambda: self.build_discriminator(self.info), optim_for(self.cfg, "D"))]

    def bind(self, players, reduce_mean, micro_batch):
        self.G, self.D = players["G"], players["D"]
        self.phases = [Phase("D_main", ("D",), ("G",), self.d_main, streams=("real",)),
                       Phase("G_main", ("G",), ("D",), self.g_main)]

    def latents(self, n, gen, device):
        return {"z": torch.randn(n, self.cfg.model.z_dim, generator=gen, device=gen.device).to(device)}

    def d_main(self, b):
        # (1) update D: reals as real (smoothed), G(z) as fake, in one forward of D's engine
        with torch.no_grad():
            fake = self.G.net(b.latents["z"])
        real_logits, fake_logits = self.D.engine(torch.cat([b.data["real"]["x"], fake])).split(b.micro_batch)
        target = torch.full_like(real_logits, 1.0 - self.cfg.hello.label_smoothing)
        loss = F.binary_cross_entropy_with_logits(real_logits, target) + F.softplus(fake_logits).mean()
        return {"D": loss}, {"loss/D": loss.detach()}

    def g_main(self, b):
        # (2) update G: make the frozen D (its plain module) score G(z) as real
        loss = F.softplus(-self.D.net(self.G.engine(b.latents["z"]))).mean()
        return {"G": loss}, {"loss/G": loss.detach()}

    def generate(self, nets, indices, *, seed, truncation=None, class_idx=None, device="cpu", batch_size=64):
        return sampling.generate(nets["G"], z_dim=self.cfg.model.z_dim, num_classes=0, indices=indices, seed=seed,
                                 truncation=truncation, device=device, batch_size=batch_size)


FAMILY = Family(recipes={"hello": HelloRecipe}, archs={"hello": Arch(HelloGConfig, HelloDConfig, HelloG, HelloD)})
'''
ENTRY_POINTS = "[bigtrain.families]\nhello = hello_family:FAMILY\n"


@pytest.fixture
def hello_package(tmp_path) -> Path:
    """A folder holding the hello family as an installed distribution (its package and a
    dist-info with the entry point), as `pip install` of a user's own package would leave it."""
    site = tmp_path / "site"
    (site / "hello_family").mkdir(parents=True)
    (site / "hello_family" / "__init__.py").write_text(HELLO_FAMILY)
    info = site / "hello_family-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def _config(tmp_path: Path, name: str, **train) -> Path:
    data = tmp_path / "d.npz"
    if not data.exists():
        write_images_npz(data, n=64, res=8)
    cfg = tiny_config(tmp_path, data, model={"z_dim": 8, "g": {"arch": "hello", "width": 32}, "d": {"arch": "hello", "width": 32}},
                      run={"name": name, "out_dir": str(tmp_path / "runs"), "seed": 3}, train={"total_kimg": 0.128, "batch_size": 16, **train},
                      checkpoint={"every_kimg": 0.032, "keep_last": 10})
    cfg["recipe"], cfg["hello"] = "hello", {"label_smoothing": 0.1}
    return write_config(tmp_path / f"{name}.yaml", cfg)


def _rows(tmp_path: Path, name: str) -> list[tuple]:
    rows = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/D"], r["loss/G"]) for r in rows]


def _weights(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    folder = tmp_path / "runs" / name / "checkpoints"
    state = torch.load(folder / (folder / "latest").read_text().strip() / "trainer.pt", weights_only=True)
    return {f"{p}/{k}": v for p, s in state["players"].items() for k, v in s["net"].items()} | {f"G_ema/{k}": v for k, v in state["G_ema"].items()}


def test_a_family_of_another_package_trains_resumes_and_samples_through_the_cli(tmp_path, hello_package):
    env = {"PYTHONPATH": os.pathsep.join([str(hello_package), os.environ.get("PYTHONPATH", "")])}
    dry = run_cli("train", str(_config(tmp_path, "whole")), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "label_smoothing: 0.1" in dry.stdout and "# parameters: G 2,400  D 2,113" in dry.stdout  # 8*32+32 + 32*64+64; 64*32+32 + 32+1

    whole = run_cli("train", str(_config(tmp_path, "whole")), env=env)
    assert whole.returncode == 0, whole.stderr
    assert len(_rows(tmp_path, "whole")) == 8 and all(np.isfinite(r[1:]).all() for r in _rows(tmp_path, "whole"))
    ckpt = tmp_path / "runs" / "whole" / "checkpoints" / "step-00000004"
    resumed = run_cli("train", str(_config(tmp_path, "resumed", resume=str(ckpt))), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(tmp_path, "resumed") == [r for r in _rows(tmp_path, "whole") if r[0] > 4]  # exactly the uninterrupted losses
    a, b = _weights(tmp_path, "whole"), _weights(tmp_path, "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    out = tmp_path / "samples.npz"
    sampled = run_cli("sample", "--run", str(tmp_path / "runs" / "whole"), "--num", "5", "--out", str(out), env=env)
    assert sampled.returncode == 0, sampled.stderr
    assert np.load(out)["x"].shape == (5, 8, 8, 1)

    bad = run_cli("train", str(_config(tmp_path, "bad")), "hello.nope=1", env=env)
    assert bad.returncode == 2 and "hello.nope" in bad.stderr  # its section is checked like every other


def test_without_the_package_the_recipe_is_unknown(tmp_path):
    out = run_cli("train", str(_config(tmp_path, "whole")), "--dry-run")
    assert out.returncode == 2 and "unknown recipe 'hello'" in out.stderr
