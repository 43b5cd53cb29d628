"""Stopping on request (issue 15): real signals to a running `bigtrain train` (on every rank, on
one rank only, through torchrun), during a checkpoint write and during an evaluation, the stop
file, the time budget and a second SIGINT. Each stop must write a checkpoint, exit with 75
(EXIT_STOPPED) and leave stopped.json; the same command then finishes the run with exactly the
per-step losses and final weights of an uninterrupted one. The run lock refuses a second start
and never stays stale. docs/design.md, "Preemption and requeue"."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigtrain.errors import EXIT_STOPPED
from tests.conftest import tiny_config, write_config, write_images_npz
from tests.dist.test_ddp import _free_port, torchrun
from tests.faults import harness

STEPS = 40  # of 16 images; log every 3 steps (a stop between two log lines), checkpoint every 20
BACKENDS = {"accelerate": [], "deepspeed": ["backend.kind=deepspeed", "backend.zero_stage=2"]}
# `python -c` prelude: every iteration sleeps SLOW_STEP_S (so a signal finds the run mid-way);
# the PAUSE_SAVE-th checkpoint write pauses PAUSE_S after its first file, and every evaluation
# PAUSE_S before it starts, each saying so on stderr
PRELUDE = """
import os, sys, time
from bigtrain.engine import checkpoint, loop
step_s, pause_s, pause_save = float(os.environ.get("SLOW_STEP_S", "0")), float(os.environ.get("PAUSE_S", "0")), int(os.environ.get("PAUSE_SAVE", "0"))
iteration, evaluate, save, saves = loop.Trainer.iteration, loop.Trainer.evaluate, checkpoint.torch.save, [0]
def slow_iteration(self, tracker):
    iteration(self, tracker)
    time.sleep(step_s)
def paused_save(obj, f, *a, **k):
    save(obj, f, *a, **k)
    if ".tmp-step-" in str(f) and str(f).endswith("trainer.pt"):
        saves[0] += 1
        if saves[0] == pause_save:
            print("INSIDE-CHECKPOINT-WRITE", file=sys.stderr, flush=True)
            time.sleep(pause_s)
def paused_evaluate(self, tracker, saved):
    print("INSIDE-EVALUATION", file=sys.stderr, flush=True)
    time.sleep(pause_s)
    return evaluate(self, tracker, saved)
loop.Trainer.iteration, loop.Trainer.evaluate, checkpoint.torch.save = slow_iteration, paused_evaluate, paused_save
from bigtrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _config(tmp_path, **sections):
    data = write_images_npz(tmp_path / "d.npz", n=64, res=8, classes=4)
    cfg = tiny_config(tmp_path, data, model={"num_classes": 4}, train={"total_kimg": STEPS * 0.016, "batch_size": 16},
                      log={"every_kimg": 0.048, "samples_every_kimg": 100, "progress_bar": False},
                      checkpoint={"every_kimg": 0.32, "keep_last": 5}, augment={"policy": "translation"}, **sections)
    return write_config(tmp_path / "c.yaml", cfg)


def _cmd(cfg, name, backend="accelerate", procs=1, *extra):
    return harness.command(cfg, [f"run.name={name}", *BACKENDS[backend], *extra], torchrun() if procs == 2 else None, prelude=(PRELUDE,))


def _start(cmd, **env):
    return subprocess.Popen(cmd, cwd=harness.REPO, env={**os.environ, **harness.ENV, "SLOW_STEP_S": "0.05", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_step(proc, run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = harness.rows(run_dir)
        if r and r[-1].get("step", 0) >= step:
            return
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before step {step}: {proc.stderr.read()[-2000:]}"
        time.sleep(0.02)
    raise TimeoutError(f"no step {step} in {timeout} s")


def _wait_for_line(proc, marker: str) -> None:
    for line in proc.stderr:
        if marker in line:
            return
    raise AssertionError(f"the run ended (exit {proc.wait()}) without printing {marker}")


def _ranks(proc) -> dict[int, int]:
    """rank -> pid of the processes torchrun started."""
    out = {}
    for pid in harness._descendants(proc.pid):
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == proc.pid and "RANK" in env:
            out[int(env["RANK"])] = pid
    return out


def _finish(proc, timeout: float = 300) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        harness._kill(proc)
        raise AssertionError("the run did not exit after the stop (a hang)")
    return proc.returncode, err


def _stopped(run_dir: Path) -> dict:
    record = json.loads((run_dir / "stopped.json").read_text())
    ckpt = Path(record["checkpoint"])
    assert ckpt.name == f"step-{record['step']:08d}" and (ckpt / "trainer.pt").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpt.name
    assert record["exit_code"] == EXIT_STOPPED
    return record


def _resume_matches(cfg, tmp_path, name, whole, backend="accelerate", procs=1) -> None:
    done = harness.finish(_cmd(cfg, name, backend, procs))
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / name
    assert not (run / "stopped.json").exists()  # it described the stopped run
    assert [r[0] for r in harness.losses(run)] == list(range(3, STEPS + 1, 3)) + ([STEPS] if STEPS % 3 else [])
    assert harness.identical(whole, run)


@pytest.fixture()
def whole(tmp_path):
    cfg = _config(tmp_path)
    out = harness.finish(_cmd(cfg, "whole"))
    assert out.returncode == 0, out.stderr[-2000:]
    return cfg, tmp_path / "runs" / "whole"


def test_sigterm_checkpoints_at_the_next_iteration_and_resumes_bit_for_bit(tmp_path, whole):
    cfg, whole_dir = whole
    run = tmp_path / "runs" / "stopped"
    proc = _start(_cmd(cfg, "stopped"))
    _wait_for_step(proc, run, 10)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == EXIT_STOPPED, err[-2000:]
    record = _stopped(run)
    assert record["reason"] == "signal SIGTERM" and 10 <= record["step"] < STEPS and record["step"] % 20  # not a periodic checkpoint
    assert "run the same command again" in err
    _resume_matches(cfg, tmp_path, "stopped", whole_dir)


@pytest.mark.slow
def test_sigterm_on_one_deepspeed_process_resumes_bit_for_bit(tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    cfg = _config(tmp_path)
    out = harness.finish(_cmd(cfg, "whole", "deepspeed"))
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "stopped"
    proc = _start(_cmd(cfg, "stopped", "deepspeed"))
    _wait_for_step(proc, run, 10)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == EXIT_STOPPED, err[-2000:]
    assert _stopped(run)["reason"] == "signal SIGTERM"
    _resume_matches(cfg, tmp_path, "stopped", tmp_path / "runs" / "whole", "deepspeed")


# slow (the default run's 15-minute budget; SIGTERM's checkpoint and resume are in the default run)
@pytest.mark.slow
def test_signal_during_a_checkpoint_write_and_during_an_evaluation(tmp_path, whole, weights):
    cfg, whole_dir = whole
    run = tmp_path / "runs" / "in_save"
    proc = _start(_cmd(cfg, "in_save"), PAUSE_SAVE="1", PAUSE_S="2")  # the step-20 checkpoint
    _wait_for_line(proc, "INSIDE-CHECKPOINT-WRITE")
    proc.send_signal(signal.SIGUSR1)
    code, err = _finish(proc)
    assert code == EXIT_STOPPED, err[-2000:]
    assert _stopped(run)["step"] == 20  # the write in progress completed and is the stop's checkpoint
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    _resume_matches(cfg, tmp_path, "in_save", whole_dir)

    ev = ["eval.every_kimg=0.16", "eval.metrics=[is]", "eval.num_samples=4", "eval.batch_size=4", f"eval.inception_weights={weights}"]
    run = tmp_path / "runs" / "in_eval"
    proc = _start(_cmd(cfg, "in_eval", "accelerate", 1, *ev), PAUSE_S="1")
    _wait_for_line(proc, "INSIDE-EVALUATION")
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == EXIT_STOPPED, err[-2000:]
    record = _stopped(run)
    assert record["step"] == 10  # the evaluation at step 10 ran to its end, then the stop
    assert any("eval/is" in r for r in harness.rows(run) if r["step"] == 10)


def test_stop_file_time_budget_and_second_sigint(tmp_path):
    cfg = _config(tmp_path)
    run = tmp_path / "runs" / "file"
    proc = _start(_cmd(cfg, "file"))
    _wait_for_step(proc, run, 6)
    (run / "STOP").touch()
    code, err = _finish(proc)
    assert code == EXIT_STOPPED, err[-2000:]
    assert _stopped(run)["reason"] == "stop file" and not (run / "STOP").exists()

    run = tmp_path / "runs" / "budget"  # 3 s of budget, no least margin: stops well before 40 steps of 0.2 s
    code, err = _finish(_start(_cmd(cfg, "budget", "accelerate", 1, "train.max_minutes=0.05", "train.exit_margin_minutes=0"), SLOW_STEP_S="0.2"))
    assert code == EXIT_STOPPED, err[-2000:]
    record = _stopped(run)
    assert record["reason"].startswith("time budget") and record["step"] < STEPS

    run = tmp_path / "runs" / "twice"  # Ctrl-C during a checkpoint write, then again: abort at once
    proc = _start(_cmd(cfg, "twice"), PAUSE_SAVE="1", PAUSE_S="30")
    _wait_for_line(proc, "INSIDE-CHECKPOINT-WRITE")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc, timeout=20)
    assert code == 130 and "interrupted" in err, err[-2000:]
    assert not (run / "stopped.json").exists() and not (run / "checkpoints" / "latest").exists()  # the torn write never became a checkpoint


def test_ctrl_c_to_the_process_group_with_shard_loader_workers(tmp_path):
    """A Ctrl-C reaches every process of the group, the loader workers too: they ignore it and
    the run still writes its checkpoint and exits 75."""
    cfg = _config(tmp_path)
    made = harness.finish([sys.executable, "-m", "bigtrain", "make-shards", str(tmp_path / "d.npz"), str(tmp_path / "shards"), "--shard-size", "16", "--no-progress"])
    assert made.returncode == 0, made.stderr[-2000:]
    run = tmp_path / "runs" / "shards"
    proc = _start(_cmd(cfg, "shards", "accelerate", 1, "data.source=shards", f"data.path={tmp_path / 'shards' / 'dataset.json'}", "data.num_workers=2"))
    _wait_for_step(proc, run, 5)
    os.killpg(proc.pid, signal.SIGINT)
    code, err = _finish(proc)
    assert code == EXIT_STOPPED, err[-2000:]
    assert _stopped(run)["reason"] == "signal SIGINT"


def test_a_second_start_on_the_same_run_is_refused_and_a_dead_runs_lock_is_not(tmp_path):
    cfg = _config(tmp_path)
    run = tmp_path / "runs" / "busy"
    proc = _start(_cmd(cfg, "busy"), SLOW_STEP_S="1")  # busy for 35 s more: the second start meets it running even on a loaded machine
    _wait_for_step(proc, run, 3)
    second = harness.finish(harness.command(cfg, ["run.name=busy"]))
    assert second.returncode == 2 and "is in use by another run" in second.stderr and f"pid {proc.pid}" in second.stderr, second.stderr[-2000:]
    harness._kill(proc)  # SIGKILL: the lock file stays behind, its flock goes with the process
    assert (run / "train.lock").is_file()
    again = harness.finish(harness.command(cfg, ["run.name=busy"]))
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.parametrize("backend", ["accelerate", pytest.param("deepspeed", marks=pytest.mark.slow)])
@pytest.mark.dist
def test_two_processes_stop_together_when_one_rank_or_torchrun_is_signalled(tmp_path, backend):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    cfg = _config(tmp_path)
    out = harness.finish(_cmd(cfg, "whole", backend, 2))
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "stopped"
    proc = _start(_cmd(cfg, "stopped", backend, 2))
    _wait_for_step(proc, run, 8)
    os.kill(_ranks(proc)[1], signal.SIGTERM)  # rank 1 only: rank 0 learns of it from the agreement
    code, err = _finish(proc)
    first = _stopped(run)
    assert first["reason"] == "signal (on another rank)" and code != 0, err[-2000:]  # torchrun reports a failed rank: stopped.json says why
    assert "after writing" in err
    proc = _start(_cmd(cfg, "stopped", backend, 2))  # then torchrun itself, which forwards SIGTERM
    _wait_for_step(proc, run, first["step"] + 6)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    second = _stopped(run)
    assert second["reason"] == "signal SIGTERM" and second["step"] > first["step"], err[-2000:]
    _resume_matches(cfg, tmp_path, "stopped", tmp_path / "runs" / "whole", backend, 2)


def _deepspeed_launcher(cfg, name: str) -> list[str]:
    """The deepspeed launcher on this host, 2 processes (--no_local_rank: the prelude's `python
    -c` would take the --local_rank it adds for a python option; the CLI's own parse is tested
    in test_the_cli_takes_the_deepspeed_launchers_local_rank)."""
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()), "--no_local_rank", "--no_python"]
    return [*launcher, sys.executable, "-c", PRELUDE, "train", str(cfg), f"run.name={name}", *BACKENDS["deepspeed"]]


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("target", ["launch", "group"])
def test_the_deepspeed_launchers_signal_forwarding_stops_with_a_checkpoint(tmp_path, target):
    """SIGTERM to deepspeed.launcher.launch, which forwards it to one rank at a time (it waits up
    to 30 s for each to exit before signalling the next), or to the launcher's whole process
    group (SLURM, Ctrl-C): both ranks stop at the same step with one checkpoint, and the run
    continues bit for bit."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
    cfg = _config(tmp_path)
    out = harness.finish(_cmd(cfg, "whole", "deepspeed", 2))
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "stopped"
    proc = _start(_deepspeed_launcher(cfg, "stopped"))
    _wait_for_step(proc, run, 8)
    if target == "launch":
        launch = [pid for pid in harness._descendants(proc.pid) if b"deepspeed.launcher.launch" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(launch) == 1
        os.kill(launch[0], signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    code, err = _finish(proc)
    record = _stopped(run)
    assert record["reason"].startswith("signal") and 8 <= record["step"] < STEPS, err[-2000:]
    assert err.count(f"stopped at step {record['step']} ") == 2, err[-3000:]  # both ranks, at the same step
    _resume_matches(cfg, tmp_path, "stopped", tmp_path / "runs" / "whole", "deepspeed", 2)


def test_the_cli_takes_the_deepspeed_launchers_local_rank(tmp_path, monkeypatch, capsys):
    """The deepspeed launcher starts `bigtrain --local_rank=N COMMAND ...`; LOCAL_RANK (which it
    sets too) is kept, or set from the flag when missing."""
    from bigtrain.cli import main

    cfg = _config(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "0")  # recorded, so that the LOCAL_RANK main sets is undone after the test
    monkeypatch.delenv("LOCAL_RANK")
    assert main(["--local_rank=1", "train", str(cfg), "--dry-run"]) == 0
    assert os.environ["LOCAL_RANK"] == "1" and "backend:" in capsys.readouterr().out
    assert main(["--local-rank", "0", "train", str(cfg), "--print-run-dir"]) == 0
    assert os.environ["LOCAL_RANK"] == "1"  # the launcher's environment wins


def test_stop_requests_time_budget_margin_follows_what_was_measured(tmp_path):
    from bigtrain.engine.stopping import NONE, STOP_REQUESTED, TIME_BUDGET, StopRequests

    now = [1000.0]
    s = StopRequests([], tmp_path, is_main=True, max_minutes=10, min_margin_s=30, env={}, clock=lambda: now[0])
    assert s.deadline == 1600.0 and s.local_reason() == NONE
    now[0] = 1569.0
    assert s.local_reason() == NONE  # 31 s left, margin 30
    s.observe(pass_s=5, checkpoint_s=20)  # margin 2 x 20 + 2 x 5 = 50 s
    assert s.margin_s() == 50 and s.local_reason() == TIME_BUDGET
    worker = StopRequests([], tmp_path, is_main=False, max_minutes=10, env={}, clock=lambda: now[0])
    assert worker.local_reason() == NONE  # only rank 0 reads the clock and the stop file
    slurm = StopRequests([], tmp_path, is_main=True, max_minutes=60, env={"SLURM_JOB_END_TIME": "5000"}, clock=lambda: 0.0, wall=lambda: 4000.0)
    assert slurm.deadline == 1000.0  # SLURM's end, 1000 s away, comes before the hour
    (tmp_path / "STOP").touch()
    assert StopRequests([], tmp_path, is_main=True, env={}).local_reason() == STOP_REQUESTED


def test_run_lock_without_flock_goes_by_the_files_age(tmp_path, monkeypatch):
    import errno
    import fcntl

    from bigtrain.engine.stopping import RunLock
    from bigtrain.errors import BigtrainError

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    (tmp_path / "train.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(BigtrainError, match="pid 1 on elsewhere"):
        RunLock(tmp_path, stale_minutes=10).acquire()
    old = time.time() - 11 * 60
    os.utime(tmp_path / "train.lock", (old, old))
    lock = RunLock(tmp_path, stale_minutes=10)
    lock.acquire()  # untouched for 11 minutes: a dead run's; taken over
    assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "train.lock").exists()
