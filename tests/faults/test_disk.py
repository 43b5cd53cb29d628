"""A full disk while a checkpoint is written (simulated: the Nth file write raises ENOSPC):
the run stops with one line and exit code 2, the previous checkpoint stays `latest`, and once
there is room again the run resumes and ends exactly as an uninterrupted one."""
from tests.faults import harness
from tests.faults.test_kill import STEPS, _config

FULL_DISK = """
import errno, sys
from bigtrain.engine import checkpoint
N = int(sys.argv[1])
calls = [0]
save = checkpoint.torch.save
def full(obj, f, *a, **k):
    if ".tmp-step-" in str(f):
        calls[0] += 1
        if calls[0] == N:
            raise OSError(errno.ENOSPC, "No space left on device")
    save(obj, f, *a, **k)
checkpoint.torch.save = full
from bigtrain.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_full_disk_at_a_checkpoint_stops_cleanly_and_resumes_exactly(tmp_path):
    cfg = _config(tmp_path)
    assert harness.finish(harness.command(cfg, ["run.name=whole"])).returncode == 0
    # files 1-2 are the first checkpoint (rank0.pt, trainer.pt); the 4th is the second's trainer.pt
    out = harness.finish(harness.command(cfg, ["run.name=full"], prelude=(FULL_DISK, "4")))
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [l for l in out.stderr.splitlines() if l.startswith("bigtrain: error")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "previous checkpoints are untouched" in errors[0]
    ckpts = tmp_path / "runs" / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002"] and (ckpts / "latest").read_text().strip() == "step-00000002"
    again = harness.finish(harness.command(cfg, ["run.name=full"]))
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r[0] for r in harness.losses(tmp_path / "runs" / "full")] == list(range(1, STEPS + 1))
    assert harness.identical(tmp_path / "runs" / "whole", tmp_path / "runs" / "full")
