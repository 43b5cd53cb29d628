import pytest
import torch

from bigtrain.engine import checkpoint
from bigtrain.errors import CheckpointError


def _save(root, step, value):
    trainer = {"players": {"G": {"w": torch.full((3,), float(value))}}, "counters": {"step": step, "nimg": step * 10}, "config": {}, "data_info": {}}
    return checkpoint.save(root, checkpoint.checkpoint_name(step), trainer_state=trainer, rank_state={"data_pos": step}, rank=0, keep_last=2)


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
    # a rank the checkpoint never had (a resume on more processes): rank 0's data positions,
    # the rest is the Trainer's to derive (tests/dist/test_resume_world.py)
    assert checkpoint.load(folder, rank=1)[1] == {"new_rank": True, "data_pos": 1}
    state = torch.load(folder / "trainer.pt", weights_only=True)
    torch.save({**state, "world_size": 2}, folder / "trainer.pt")  # written by 2, rank1.pt lost
    with pytest.raises(CheckpointError, match="written by 2 processes, but rank1.pt is missing"):
        checkpoint.load(folder, rank=1)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope", rank=0)


def _state(step):
    return {"players": {}, "counters": {"step": step, "nimg": step}, "config": {}, "data_info": {}}


def test_a_failed_write_on_any_rank_stops_every_rank_and_keeps_the_old_checkpoints(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    _save(root, 1, 1)
    # another process could not write (the agreement comes back False at the writing stage)
    answers = iter([True, False])
    with pytest.raises(CheckpointError, match="writing failed on another process"):
        checkpoint.save(root, "step-00000002", trainer_state=_state(2), rank_state={}, rank=0, keep_last=2, all_ranks=lambda ok: ok and next(answers))
    # this process cannot write: its own error, and its peers are told (all_ranks sees False)
    told = []
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if str(path).endswith("rank0.pt"):
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"writing failed on this process: \[Errno 28\] No space left"):
        checkpoint.save(root, "step-00000003", trainer_state=_state(3), rank_state={}, rank=0, keep_last=2, all_ranks=lambda ok: told.append(ok) or ok)
    assert told == [True, False]
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step-00000001"]
    assert (root / "latest").read_text().strip() == "step-00000001"
