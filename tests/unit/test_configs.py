"""Every config in configs/ loads, names its paper, and builds its recipe and every player."""
from pathlib import Path

import pytest

from bigtrain.families import load_config
from bigtrain.data import DataInfo
from bigtrain.families import build_recipe

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_the_classic_family_is_there():
    names = {p.stem for p in CONFIGS}
    for required in ["gan_mlp", "dcgan_cifar10", "cgan_digits", "wgan_gp_cifar10", "sngan_cifar10", "sngan_proj_imagenet128"]:
        assert required in names
    for prefix in ["lsgan_", "wgan_clip_", "began_"]:
        assert any(n.startswith(prefix) for n in names), prefix


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_cites_its_source(path):
    cfg = load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and any(ch.isdigit() for ch in first), "first line names the paper and year"
    if "grid25" in str(cfg.data.path):
        info = DataInfo("vector", (2,), 0)
    else:
        channels = (1 if "digits" in str(cfg.data.path) else 3) * (2 if cfg.data.paired else 1)  # paired: A|B along channels
        info = DataInfo("image", (channels, cfg.data.resolution, cfg.data.resolution), cfg.model.num_classes)
    if cfg.data.resolution >= 128 and cfg.model.g.arch != "progan":  # the full-width 128x128 nets take long to build on CPU
        cfg.model.g.width = cfg.model.d.width = 8 if cfg.model.g.arch == "biggan" else 4  # biggan's self-attention needs ch / 8 >= 1
    recipe = build_recipe(cfg, info)  # the recipe's cross-field checks
    for spec in recipe.players():
        assert sum(p.numel() for p in spec.build().parameters()) > 0, spec.name
