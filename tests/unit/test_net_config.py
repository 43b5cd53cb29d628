"""`model.g` / `model.d`: one section class per architecture and side, holding exactly the keys
that net reads (docs/design.md, "Network config per architecture")."""
import dataclasses

import pytest

from bigtrain.config import to_dict

from bigtrain.families import config_from_dict, load_config, registry
from bigtrain.families.gan.mlp import MlpGConfig
from bigtrain.errors import ConfigError
from tests.conftest import run_cli, tiny_config, write_config

MODELS = registry().archs

# What each net reads (the spec these tests hold the classes to); began's G also accepts h_dim.
READS = {
    ("mlp", "g"): ["arch", "width", "depth", "cond", "spectral_norm"],
    ("mlp", "d"): ["arch", "width", "depth", "cond", "spectral_norm", "mbstd_group", "mbstd_channels", "pack"],
    ("dcgan", "g"): ["arch", "width", "norm", "cond", "spectral_norm"],
    ("dcgan", "d"): ["arch", "width", "norm", "cond", "spectral_norm", "mbstd_group", "mbstd_channels", "pack"],
    ("sngan", "g"): ["arch", "width", "norm", "cond", "spectral_norm"],
    ("sngan", "d"): ["arch", "width", "norm", "cond", "spectral_norm", "pack"],
    ("began", "g"): ["arch", "width", "h_dim", "spectral_norm"],
    ("began", "d"): ["arch", "width", "h_dim", "spectral_norm"],
    ("grid", "g"): ["arch", "width", "depth", "norm"],
    ("grid", "d"): ["arch", "width", "depth", "pack"],
    ("progan", "g"): ["arch", "width", "fmap_base", "fmap_decay", "fmap_max"],  # width: refused unless at its default
    ("progan", "d"): ["arch", "width", "fmap_base", "fmap_decay", "fmap_max", "mbstd_group"],
    ("biggan", "g"): ["arch", "width", "cond", "attention", "spectral_norm", "sn_eps", "hier", "shared_dim", "bn_eps", "cross_replica"],
    ("biggan", "d"): ["arch", "width", "cond", "attention", "spectral_norm", "sn_eps"],
    ("biggan_deep", "g"): ["arch", "width", "cond", "attention", "spectral_norm", "sn_eps", "depth", "shared_dim", "bn_eps", "cross_replica"],
    ("biggan_deep", "d"): ["arch", "width", "cond", "attention", "spectral_norm", "sn_eps", "depth"],
    ("cyclegan", "g"): ["arch", "width", "norm", "blocks", "dropout"],
    ("cyclegan", "d"): ["arch", "width", "norm", "layers"],
    ("pix2pix", "g"): ["arch", "width", "norm", "downs", "dropout"],
    ("pix2pix", "d"): ["arch", "width", "norm", "layers"],
    ("stylegan2", "g"): ["arch", "width", "channel_base", "channel_max", "num_fp16_res", "conv_clamp", "resample_filter",
                         "architecture", "w_dim", "map", "map_lr_mult", "w_avg_beta"],
    ("stylegan2", "d"): ["arch", "width", "channel_base", "channel_max", "num_fp16_res", "conv_clamp", "resample_filter",
                         "architecture", "mbstd_group", "mbstd_channels", "cmap_dim", "map"],
}
# The shared NetConfig of before, as its sections were saved (D's norm defaulted to none).
OLD_SECTION = {"width": 64, "depth": 2, "norm": "batch", "cond": "auto", "spectral_norm": False, "h_dim": 64, "mbstd_group": 0, "mbstd_channels": 1, "pack": 1}
# A value each old key may take (not its old default), for setting it where it does not belong.
VALUES = {"depth": 3, "norm": "batch", "cond": "concat", "spectral_norm": True, "h_dim": 16, "mbstd_group": 4, "mbstd_channels": 2, "pack": 2}
UNREAD = [(arch, side, key) for (arch, side), keys in READS.items() for key in VALUES if key not in keys]


def old_section(arch: str, side: str) -> dict:
    return {"arch": arch, **OLD_SECTION, **({"norm": "none"} if side == "d" else {})}


def test_every_arch_has_builders_and_section_classes():
    from bigtrain.families import registry

    MODELS = registry().archs

    assert set(MODELS) == {arch for arch, _ in READS}


@pytest.mark.parametrize("arch,side", list(READS), ids=lambda v: str(v))
def test_each_class_has_exactly_the_keys_its_net_reads(arch, side):
    cfg = load_config(None, [f"model.{side}.arch={arch}"])
    net = getattr(cfg.model, side)
    assert [f.name for f in dataclasses.fields(net)] == READS[arch, side]
    assert net.arch == arch and type(net) is (MODELS[arch].g_config, MODELS[arch].d_config)["gd".index(side)]


@pytest.mark.parametrize("arch,side,key", UNREAD, ids=lambda v: str(v))
def test_a_key_the_arch_does_not_read_is_refused(arch, side, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"model.{side}.arch={arch}", f"model.{side}.{key}={VALUES[key]}"])
    role = {"g": "generator", "d": "discriminator"}[side]
    assert err.value.key == f"model.{side}.{key}"
    assert err.value.reason == f"the {arch} {role} has no key {key!r}; its keys: {', '.join(READS[arch, side])} (in command line)"


# one CLI run per arch; mlp and sngan: the review's `model.d.norm=batch`
CLI_CASES = [("mlp", "d", "norm=batch"), ("sngan", "d", "norm=batch"), ("dcgan", "d", "h_dim=16"), ("began", "d", "pack=2"), ("grid", "g", "spectral_norm=true")]


@pytest.mark.parametrize("arch,side,setting", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_an_unread_key_in_one_line(tmp_path, images_npz, arch, side, setting):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, images_npz))
    out = run_cli("train", str(path), f"model.{side}.arch={arch}", f"model.{side}.{setting}", "--dry-run")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    key = f"model.{side}.{setting.split('=')[0]}"
    assert out.returncode == 2 and len(lines) == 1 and f"config error: {key}: " in lines[0], out.stderr


@pytest.mark.parametrize("arch", ["mlp", "sngan"])
def test_d_norm_batch_is_refused_on_nets_without_batch_norm(tmp_path, arch):
    path = write_config(tmp_path / "c.yaml", {"model": {"d": {"arch": arch, "norm": "batch"}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "model.d.norm"
    assert load_config(None, ["model.d.arch=dcgan", "model.d.norm=batch"]).model.d.norm == "batch"  # dcgan's D has BN


def test_an_override_that_switches_arch_brings_the_new_arch_keys(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"model": {"g": {"arch": "dcgan", "width": 8}}})
    cfg = load_config(path, ["model.g.arch=mlp", "model.g.depth=3"])
    assert cfg.model.g == MlpGConfig(width=8, depth=3)
    assert to_dict(cfg)["model"]["g"] == {"arch": "mlp", "width": 8, "depth": 3, "cond": "auto", "spectral_norm": False}
    with pytest.raises(ConfigError) as err:  # the file's dcgan key norm does not fit mlp
        load_config(write_config(tmp_path / "n.yaml", {"model": {"g": {"arch": "dcgan", "norm": "none"}}}), ["model.g.arch=mlp"])
    assert err.value.key == "model.g.norm"
    with pytest.raises(ConfigError) as err:  # and back: mlp's depth does not fit dcgan
        load_config(None, ["model.g.arch=mlp", "model.g.depth=3", "model.g.arch=dcgan"])
    assert err.value.key == "model.g.depth"


@pytest.mark.parametrize("override,key", [("model.g.width=0", "model.g.width"), ("model.g.depth=0", "model.g.depth"), ("model.d.mbstd_group=-1", "model.d.mbstd_group"),
                                          ("model.d.pack=0", "model.d.pack"), ("model.g.cond=cbm", "model.g.cond"), ("model.g.depth=two", "model.g.depth")])
def test_values_are_still_checked_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.g.arch=mlp", "model.d.arch=mlp", override])
    assert err.value.key == key


def test_replace_revalidates():
    cfg = load_config(None, ["model.g.arch=mlp"])
    assert dataclasses.replace(cfg.model, g=dataclasses.replace(cfg.model.g, width=8)).g.width == 8
    with pytest.raises(ConfigError, match="model.g.width"):
        dataclasses.replace(cfg.model, g=dataclasses.replace(cfg.model.g, width=0))
    with pytest.raises(ConfigError, match="model.d: a MlpGConfig is the mlp section, not arch dcgan's"):
        dataclasses.replace(cfg.model, d=MlpGConfig(arch="dcgan"))


# biggan, biggan_deep, cyclegan, pix2pix and stylegan2 came after the split: no old config of theirs exists
@pytest.mark.parametrize("arch", sorted(set(MODELS) - {"biggan", "biggan_deep", "cyclegan", "pix2pix", "stylegan2"}))
def test_an_old_saved_config_with_every_old_key_at_its_default_loads(arch):
    saved = to_dict(load_config())
    saved["model"] = {**saved["model"], "g": old_section(arch, "g"), "d": old_section(arch, "d")}
    cfg = config_from_dict(saved)
    assert [f.name for f in dataclasses.fields(cfg.model.g)] == READS[arch, "g"]
    assert [f.name for f in dataclasses.fields(cfg.model.d)] == READS[arch, "d"]
    assert config_from_dict(to_dict(cfg)) == cfg  # what is saved now reads back


def test_the_old_default_exception_covers_only_old_sections_at_their_defaults():
    saved = to_dict(load_config())
    saved["model"] = {**saved["model"], "g": old_section("mlp", "g"), "d": {**old_section("mlp", "d"), "norm": "batch"}}
    with pytest.raises(ConfigError) as err:  # set by hand (and ignored) back then: still refused
        config_from_dict(saved)
    assert err.value.key == "model.d.norm"
    saved["model"]["d"] = {"arch": "mlp", "h_dim": 64}  # not an old section: its old default is refused too
    with pytest.raises(ConfigError) as err:
        config_from_dict(saved)
    assert err.value.key == "model.d.h_dim"


def test_madgan_takes_mlp_sections_and_reads_width_and_depth_only():
    from bigtrain.data import DataInfo
    from bigtrain.families import build_recipe

    info, mlp = DataInfo("vector", (2,), 0), ["recipe=madgan", "model.g.arch=mlp", "model.d.arch=mlp"]
    build_recipe(load_config(None, [*mlp, "model.g.depth=3"]), info)
    for overrides, key in ((["recipe=madgan", "model.d.arch=mlp"], "model.g.arch"), ([*mlp, "model.g.spectral_norm=true"], "model.g.spectral_norm"), ([*mlp, "model.d.pack=2"], "model.d.pack")):
        with pytest.raises(ConfigError) as err:
            build_recipe(load_config(None, overrides), info)
        assert err.value.key == key
