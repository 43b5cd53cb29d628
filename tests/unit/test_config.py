import dataclasses
import inspect
import typing

import pytest

from bigtrain.config import Config, to_yaml

from bigtrain.families import load_config
from bigtrain.errors import ConfigError
from tests.conftest import run_cli


def test_defaults_are_valid_and_documented():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.train.precision == "fp32" and cfg.backend.kind == "accelerate"
    # every field of every config section carries a one-line comment
    for section in _sections(Config):
        source = inspect.getsource(section)
        for f in dataclasses.fields(section):
            line = next(l for l in source.splitlines() if l.strip().startswith(f"{f.name}:"))
            assert "  # " in line, f"{section.__name__}.{f.name} has no comment"


def _sections(cls):
    found = [cls]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
            found += _sections(f.type)
    hints = typing.get_type_hints(cls)
    for name, hint in hints.items():
        if dataclasses.is_dataclass(hint) and hint not in found:
            found += _sections(hint)
    return found

def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 32\n  total_kimg: 7\nmodel:\n  g: {arch: mlp}\n")
    cfg = load_config(path, ["train.total_kimg=9", "optim.d.betas=[0.0,0.9]", "model.num_classes=10"])
    assert cfg.train.batch_size == 32
    assert cfg.train.total_kimg == 9.0
    assert cfg.model.g.arch == "mlp" and cfg.model.d.arch == "dcgan"
    assert cfg.optim["d"].betas == [0.0, 0.9]
    assert cfg.model.num_classes == 10


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.bogus=1", "train.bogus"),
        ("nosection.x=1", "nosection"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.precision=fp8", "train.precision"),
        ("model.g.width=0", "model.g.width"),
        ("optim.d.betas=[0.5]", "optim.d.betas"),
        ("optim.g.type=lbfgs", "optim.g.type"),
        ("backend.kind=horovod", "backend.kind"),
        ("train.batch_size", "train.batch_size"),
    ],
)
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batchsize: 32\n")
    with pytest.raises(ConfigError, match="train.batchsize"):
        load_config(path)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_yaml(tmp_path):
    cfg = load_config(None, ["model.z_dim=12", "ema.rampup=null"])
    path = tmp_path / "r.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_cli_exit_code_and_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  total_kimg: 1\n")
    bad = run_cli("train", str(path), "train.precision=fp9", "--dry-run")
    assert bad.returncode == 2
    lines = [l for l in bad.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "train.precision" in lines[0], bad.stderr
    good = run_cli("train", str(path), "train.total_kimg=3", "--dry-run")
    assert good.returncode == 0, good.stderr
    assert "total_kimg: 3.0" in good.stdout
