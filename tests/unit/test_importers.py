"""bigtrain/importers: --check refuses an import whose outputs differ from the reference's, and
writes nothing then (the CLI path of every format is tests/smoke/test_import.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bigtrain.errors import BigtrainError
from bigtrain.importers import import_run

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "import"


def test_check_refuses_outputs_that_differ_and_writes_nothing(tmp_path):
    src = tmp_path / "files"
    shutil.copytree(FIXTURES / "pix2pix", src)
    reference = torch.load(src / "reference_outputs.pt", weights_only=True)
    reference["D"]["output"] = reference["D"]["output"] + 1e-3  # what a wrong mapping would give, but smaller
    torch.save(reference, src / "reference_outputs.pt")
    files = [str(src / "latest_net_G.pth"), str(src / "latest_net_D.pth")]
    with pytest.raises(BigtrainError, match=r"--check: D differs from the reference by 0\.001"):
        import_run("pix2pix", files, str(src / "config.yaml"), str(tmp_path / "run"), do_check=True)
    assert not (tmp_path / "run").exists()
    (src / "reference_outputs.pt").unlink()
    with pytest.raises(BigtrainError, match="reference_outputs.pt not found"):
        import_run("pix2pix", files, str(src / "config.yaml"), str(tmp_path / "run"), do_check=True)
    summary = import_run("pix2pix", files, str(src / "config.yaml"), str(tmp_path / "run"))  # no --check: imported
    assert "check" not in summary and (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_a_generator_alone_imports_and_a_new_run_initialises_d_afresh(tmp_path):
    """Released pix2pix / CycleGAN models are generators only: the import warns and holds no D;
    train.init_from then starts D from its initial weights. Without the generator it is refused."""
    from bigtrain.engine import state

    folder = FIXTURES / "pix2pix"
    with pytest.raises(BigtrainError, match="no file holds player G .*latest_net_G.pth"):
        import_run("pix2pix", [str(folder / "latest_net_D.pth")], str(folder / "config.yaml"), str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="no file holds player D: .*initialises D afresh"):
        summary = import_run("pix2pix", [str(folder / "latest_net_G.pth")], str(folder / "config.yaml"), str(run))
    assert set(summary["players"]) == {"G"}
    with pytest.warns(UserWarning, match="holds no D; D starts from its initial weights"):
        initial = state.initial_weights(str(run), ["G", "D"])
    assert set(initial) == {"G"}
    reference = torch.load(folder / "latest_net_G.pth", weights_only=True)
    assert torch.equal(initial["G"][0]["down.0.0.weight"], reference["model.model.0.weight"])
