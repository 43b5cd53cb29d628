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


SINGLE = FIXTURES / "cyclegan-g"  # one released-style CycleGAN generator (latest_net_G.pth) and its outputs


def test_one_generator_file_needs_its_direction_and_nothing_else_takes_one(tmp_path):
    run, g = tmp_path / "run", str(SINGLE / "latest_net_G.pth")
    with pytest.raises(BigtrainError, match="one generator, of one direction .* say which with --direction AB"):
        import_run("cyclegan", [g], str(SINGLE / "config.yaml"), str(run))
    pair = sorted(str(p) for p in (FIXTURES / "cyclegan").glob("latest_net_*.pth"))
    with pytest.raises(BigtrainError, match="--direction AB: is for one generator file .*G_A.pth is one of a pair"):
        import_run("cyclegan", pair, str(FIXTURES / "cyclegan" / "config.yaml"), str(run), direction="AB")
    p2p = FIXTURES / "pix2pix"
    with pytest.raises(BigtrainError, match="--direction is for one generator of a pair .* pix2pix format takes none"):
        import_run("pix2pix", [str(p2p / "latest_net_G.pth")], str(p2p / "config.yaml"), str(run), direction="BA")
    assert not run.exists()


def test_a_one_direction_import_translates_it_refuses_the_other_and_a_new_run_starts_it_afresh(tmp_path):
    """Imported as B -> A: G_BA is the file's net (the reference's outputs to 1e-5), G_AB is refused
    wherever it would run, and train.init_from leaves G_AB at its initial weights, with a warning."""
    from bigtrain.engine import state
    from bigtrain.engine.generation import load_generation
    from bigtrain.families import build_recipe, load_config

    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="no file holds player D_A"):
        summary = import_run("cyclegan", [str(SINGLE / "latest_net_G.pth")], str(SINGLE / "config.yaml"), str(run),
                             direction="BA")
    assert summary["direction"] == "BA" and set(summary["players"]) == {"G"}
    # the file holds instance-norm running statistics as the released (PyTorch < 0.4) files do: dropped, unused
    assert any(k.endswith("running_mean") for k in torch.load(SINGLE / "latest_net_G.pth", weights_only=True))
    loaded = load_generation(str(run))
    assert loaded.recipe.direction == "BA"  # sample and eval translate the imported direction
    record = torch.load(SINGLE / "reference_outputs.pt", weights_only=True)["G.G_AB"]
    x = record["inputs"][0]
    assert float((loaded.recipe.translate(loaded.nets, x, "BA") - record["output"]).abs().max()) <= 1e-5
    with pytest.raises(BigtrainError, match=r"holds no A -> B generator \(G_AB\): it was imported from one "
                                            r"generator, B -> A .*refusing to run untrained weights"):
        loaded.recipe.translate(loaded.nets, x, "AB")

    with pytest.warns(UserWarning, match=r"holds no A -> B generator .*; G.G_AB starts from its initial weights"):
        initial = state.initial_weights(str(run), ["G", "D_A", "D_B"])
    weights, ema, absent = initial["G"]
    assert absent == ("G_AB",) and ema is None
    cfg = load_config(str(SINGLE / "config.yaml"))
    pair = build_recipe(cfg, loaded.info).players()[0].build()
    fresh = {k: v.clone() for k, v in pair.state_dict().items()}
    with pytest.raises(Exception, match="has no 'G_AB.net.1.weight'"):  # the gap is allowed only where recorded
        state.load_initial(pair, weights, "the import's G")
    state.load_initial(pair, weights, "the import's G", absent)
    after = pair.state_dict()
    assert all(torch.equal(after[k], fresh[k]) for k in after if k.startswith("G_AB."))
    assert all(torch.equal(after[k], weights[k]) for k in weights) and all(k.startswith("G_BA.") for k in weights)
