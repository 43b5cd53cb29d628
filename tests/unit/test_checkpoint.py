import pytest
import torch

from bigtrain.engine import checkpoint
from bigtrain.errors import CheckpointError


def _save(root, step, value):
    trainer = {"players": {"G": {"w": torch.full((3,), float(value))}}, "counters": {"step": step, "nimg": step * 10}, "config": {}, "data_info": {}}
    return checkpoint.save(root, checkpoint.checkpoint_name(step), trainer_state=trainer, rank_state={"data_pos": step}, rank=0, barrier=lambda: None, keep_last=2)


def test_save_keeps_last_and_points_to_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _save(root, step, step)
    names = [p.name for p in checkpoint.list_checkpoints(root)]
    assert names == ["step-00000002", "step-00000003"]
    assert (root / "latest").read_text().strip() == "step-00000003"
    assert not list(root.glob(".tmp-*"))
    folder, trainer, rank = checkpoint.load_for_resume(root, "auto", rank=0)
    assert folder.name == "step-00000003" and trainer["counters"]["step"] == 3 and rank["data_pos"] == 3


def test_an_existing_folder_is_moved_aside_not_overwritten(tmp_path):
    _save(tmp_path, 5, 5)
    with pytest.warns(UserWarning, match="replaced-step-00000005"):
        _save(tmp_path, 5, 6)
    kept = checkpoint.load(tmp_path / "replaced-step-00000005", rank=0)[0]
    new = checkpoint.load(tmp_path / "step-00000005", rank=0)[0]
    assert kept["players"]["G"]["w"][0] == 5 and new["players"]["G"]["w"][0] == 6


def test_truncated_latest_falls_back_with_warning(tmp_path):
    _save(tmp_path, 1, 1)
    newest = _save(tmp_path, 2, 2)
    data = (newest / "trainer.pt").read_bytes()
    (newest / "trainer.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="step-00000002"):
        folder, trainer, _ = checkpoint.load_for_resume(tmp_path, "auto", rank=0)
    assert folder.name == "step-00000001" and trainer["counters"]["step"] == 1
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        checkpoint.load_for_resume(tmp_path, str(newest), rank=0)


def test_weights_only_refuses_code(tmp_path):
    folder = _save(tmp_path, 1, 1)

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"players": Evil(), "counters": {}, "config": {}, "data_info": {}}, folder / "trainer.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(folder, rank=0)


def test_missing_rank_file_and_folder(tmp_path):
    folder = _save(tmp_path, 1, 1)
    with pytest.raises(CheckpointError, match="written by 1 process.*rank 1"):
        checkpoint.load(folder, rank=1)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope", rank=0)
