"""slurm/*.sbatch under a fake SLURM (issue 15): `srun` and `scontrol` are small scripts on PATH
that log their calls; the batch scripts run as `bash` on this machine, one node, torchrun with
one CPU process. A requeue cycle: the time-limit warning (USR1 to the batch shell, as
--signal=B:USR1 sends it) makes the run checkpoint and stop, the script requeues the job, and
the requeued job resumes and ends with the losses and weights of an uninterrupted run. A
preemption (SIGTERM to every process of the job) ends the same way; the requeue limit holds;
the sweep and eval scripts run."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults import harness
from tests.faults.test_preempt import STEPS, _config, _wait_for_step

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

SLURM = harness.REPO / "slurm"
# srun runs the step's one task and ends with its exit code, which it logs; signals do not end
# it: SLURM delivers them to every process of the step itself
FAKE_SRUN = """#!/bin/bash
echo "srun $*" >> "$FAKE_SLURM_LOG"
while [[ "$1" == --* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0
trap : TERM INT USR1
"$@"
code=$?
echo "srun exit $code" >> "$FAKE_SLURM_LOG"
exit $code
"""
# `scontrol requeue` fails with FAKE_REQUEUE_REFUSAL where set (SLURM requeues the job already),
# else ends the job as SLURM does, with a SIGTERM to the batch shell (the session's leader);
# `scontrol show job` reports FAKE_RESTARTS as the job's restart count and FAKE_COMMAND as the
# submitted script
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
case "$1 $2" in
    "show hostnames") echo localhost ;;
    "show job") echo "JobId=$3 JobState=RUNNING Requeue=1 Restarts=${FAKE_RESTARTS:-0} Command=${FAKE_COMMAND:-} WorkDir=$PWD" ;;
    requeue*) if [ -n "${FAKE_REQUEUE_REFUSAL:-}" ]; then echo "$FAKE_REQUEUE_REFUSAL" >&2; exit 1; fi
              kill -TERM "$(ps -o sid= -p $$ | tr -d ' ')" ;;
esac
"""
# squeue answers the job's end time (train.slurm_deadline, where SLURM sets no SLURM_JOB_END_TIME):
# FAKE_END_TIME seconds from now, a day where unset
FAKE_SQUEUE = """#!/bin/bash
echo "squeue $*" >> "$FAKE_SLURM_LOG"
date -d "+${FAKE_END_TIME:-86400} seconds" +%Y-%m-%dT%H:%M:%S
"""
# logs its arguments instead of training (tests of what the scripts ask torchrun for)
FAKE_TORCHRUN = """#!/bin/bash
echo "torchrun $*" >> "$FAKE_SLURM_LOG"
"""
# every Python process of the job imports this first (PYTHONPATH): each training iteration
# sleeps SLOW_STEP_S, so the signals find the run mid-way
SITECUSTOMIZE = """
import os
if os.environ.get("SLOW_STEP_S"):
    import time
    from bigtrain.engine import loop
    _iteration = loop.Trainer.iteration
    def _slow(self, tracker):
        _iteration(self, tracker)
        time.sleep(float(os.environ["SLOW_STEP_S"]))
    loop.Trainer.iteration = _slow
"""


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    fakes = (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("squeue", FAKE_SQUEUE), ("sitecustomize.py", SITECUSTOMIZE))
    for name, text in fakes:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "slurm-calls.log"
    env = {**os.environ, **harness.ENV, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": f"{bin_dir}:{harness.REPO}",
           "FAKE_SLURM_LOG": str(log), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1",
           "SLURM_GPUS_PER_NODE": "1", "SLURM_SUBMIT_DIR": str(harness.REPO), "MASTER_PORT": str(harness_port()), "OMP_NUM_THREADS": "1"}
    return env, log


def harness_port() -> int:
    from tests.golden.harness import _free_port

    return _free_port()


def _sbatch(script: str, args: list[str], env: dict, **extra) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SLURM / script), *args], cwd=harness.REPO, env={**env, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.is_file() else []


def _without_torchrun(tmp_path, env: dict) -> dict:
    """`env` with FAKE_TORCHRUN first on PATH and no MASTER_PORT."""
    bin_dir = tmp_path / "fake-torchrun"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(FAKE_TORCHRUN)
    (bin_dir / "torchrun").chmod(0o755)
    return {**{k: v for k, v in env.items() if k != "MASTER_PORT"}, "PATH": f"{bin_dir}:{env['PATH']}"}


def _torchrun_options(log: Path) -> list[dict]:
    """Each torchrun call's --options (up to the `--`) and what followed `-m --`."""
    out = []
    for line in _calls(log):
        if line.startswith("torchrun "):
            words = line.split()[1:]
            options, rest = words[:words.index("-m")], words[words.index("--") + 1:]
            out.append({**dict(zip(options[::2], options[1::2])), "module": rest})
    return out


# slow (the default run's 15-minute budget; the requeue paths are in the default run)
@pytest.mark.slow
def test_time_limit_warning_checkpoints_requeues_and_the_requeued_job_resumes_exactly(tmp_path, fake_slurm):
    env, log = fake_slurm
    cfg = _config(tmp_path)
    whole = harness.finish(harness.command(cfg, ["run.name=whole"]))
    assert whole.returncode == 0, whole.stderr[-2000:]
    run = tmp_path / "runs" / "job"

    job = _sbatch("train.sbatch", [str(cfg), "run.name=job"], env, SLOW_STEP_S="0.05")
    _wait_for_step(job, run, 8)
    job.send_signal(signal.SIGUSR1)  # --signal=B:USR1@300: the batch shell only
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    stopped = json.loads((run / "stopped.json").read_text())
    assert stopped["reason"] == "stop file" and 8 <= stopped["step"] < STEPS
    assert (stopped["slurm_job_id"], stopped["slurm_restart_count"]) == ("4242", 0)  # this start of the job wrote it
    assert "scontrol requeue 4242" in _calls(log) and "requeued job 4242" in out
    assert "srun exit 0" in _calls(log)  # a checkpointed stop is no failed step (torchrun itself exits 1)
    assert not (run / "STOP").exists()

    again = _sbatch("train.sbatch", [str(cfg), "run.name=job"], env, SLURM_RESTART_COUNT="1")  # SLURM starts the requeued job
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert _calls(log).count("scontrol requeue 4242") == 1 and not (run / "stopped.json").exists()
    assert harness.identical(tmp_path / "runs" / "whole", run)


def test_preemption_sigterm_to_the_whole_job_and_the_requeue_limit(tmp_path, fake_slurm):
    env, log = fake_slurm
    cfg = _config(tmp_path)
    run = tmp_path / "runs" / "pre"
    job = _sbatch("train.sbatch", [str(cfg), "run.name=pre"], env, SLOW_STEP_S="0.05", SLURM_RESTART_COUNT="3", BIGTRAIN_MAX_REQUEUES="3")
    _wait_for_step(job, run, 5)
    os.killpg(job.pid, signal.SIGTERM)  # a preemption: SLURM signals every process of the job
    out, err = job.communicate(timeout=300)
    assert job.returncode == 75, err[-3000:]  # checkpointed, but requeued 3 times already: not again
    assert json.loads((run / "stopped.json").read_text())["reason"] in ("signal SIGTERM", "stop file")  # torchrun forwards it; the shell's trap asks too
    assert not [c for c in _calls(log) if c.startswith("scontrol requeue")] and "not again" in err


def test_without_slurm_job_end_time_the_run_still_stops_before_the_job_ends(tmp_path, fake_slurm):
    """SLURM 22.05 sets no SLURM_JOB_END_TIME: bigtrain asks squeue for the job's end time. 30 s
    left is inside the least margin (train.exit_margin_minutes, 1): the run checkpoints after
    its first iteration, and the job is requeued."""
    env, log = fake_slurm
    cfg = _config(tmp_path)
    run = tmp_path / "runs" / "deadline"
    job = _sbatch("train.sbatch", [str(cfg), "run.name=deadline"], env, FAKE_END_TIME="30")
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    stopped = json.loads((run / "stopped.json").read_text())
    assert stopped["reason"].startswith("time budget") and stopped["step"] < STEPS
    assert "squeue --noheader --jobs 4242 --format %e" in _calls(log) and "scontrol requeue 4242" in _calls(log)


def test_a_requeue_slurm_already_made_ends_the_job_cleanly(tmp_path, fake_slurm):
    """An administrator's `scontrol requeue` (or a preemption that requeues) sends SIGTERM to the
    job and requeues it: the run checkpoints, the script's own `scontrol requeue` is refused
    (SLURM: "Job is pending execution"), and the job's restart count is already past this
    start's. That is the requeue the script wanted: exit 0, and the step ended with 0 too (sacct
    showed FAILED for every interruption)."""
    env, log = fake_slurm
    cfg = _config(tmp_path)
    run = tmp_path / "runs" / "admin"
    job = _sbatch("train.sbatch", [str(cfg), "run.name=admin"], env, SLOW_STEP_S="0.05",
                  FAKE_REQUEUE_REFUSAL="Job is pending execution for job 4242", FAKE_RESTARTS="1")
    _wait_for_step(job, run, 5)
    os.killpg(job.pid, signal.SIGTERM)  # what SLURM does to the job it requeues
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert json.loads((run / "stopped.json").read_text())["step"] < STEPS
    assert "scontrol requeue 4242" in _calls(log) and "srun exit 0" in _calls(log)
    assert "requeued already" in out and "Job is pending execution" in out


def test_a_requeued_job_that_fails_before_training_does_not_requeue_for_the_previous_stop(tmp_path, fake_slurm):
    """The previous start of job 4242 stopped with a checkpoint and was requeued; the requeued
    start (restart 1) fails before training (its data is gone), so stopped.json is still the
    previous start's: that is no reason to requeue again (on a real cluster: two pointless
    requeues, then FAILED 75)."""
    env, log = fake_slurm
    cfg = _config(tmp_path)
    run = tmp_path / "runs" / "job"
    run.mkdir(parents=True)
    previous = {"reason": "stop file", "step": 9, "exit_code": 75, "slurm_job_id": "4242", "slurm_restart_count": 0}
    (run / "stopped.json").write_text(json.dumps(previous))
    gone = f"data.path={tmp_path / 'gone.npz'}"
    job = _sbatch("train.sbatch", [str(cfg), "run.name=job", gone], env, SLURM_RESTART_COUNT="1")
    out, err = job.communicate(timeout=300)
    assert job.returncode != 0 and "gone.npz" in err, err[-3000:]
    assert not [c for c in _calls(log) if c.startswith("scontrol requeue")], out


def test_array_tasks_on_one_node_get_ports_of_their_own_and_cpu_clusters_set_the_processes(tmp_path, fake_slurm):
    """Two array tasks on one node both listened on 29500 (EADDRINUSE): the port follows the job
    id unless MASTER_PORT is set. Processes per node: one per GPU of --gpus-per-node ("h100:4"),
    BIGTRAIN_PROCS_PER_NODE where set (CPU clusters: exporting SLURM_GPUS_PER_NODE would change
    srun's request), one where the job has no GPUs."""
    env, log = fake_slurm
    env = _without_torchrun(tmp_path, env)
    cfg = _config(tmp_path)
    jobs = [  # job id, environment, processes expected
        ("5001", {"SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "0", "SLURM_GPUS_PER_NODE": "h100:4"}, "4"),
        ("5002", {"SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "1", "BIGTRAIN_PROCS_PER_NODE": "3"}, "3"),
        ("24999", {"SLURM_GPUS_PER_NODE": "0"}, "1"),
        ("5003", {"MASTER_PORT": "23456"}, "1"),
    ]
    for job_id, extra, _ in jobs:
        job = _sbatch("train.sbatch", [str(cfg), "run.name=ports"], env, SLURM_JOB_ID=job_id, **extra)
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err[-3000:]
    calls = _torchrun_options(log)
    assert [c["--master_port"] for c in calls] == ["15001", "15002", "14999", "23456"]  # 10000 + id % 20000
    assert [c["--nproc_per_node"] for c in calls] == [expected for _, _, expected in jobs]
    assert all(c["module"] == ["bigtrain", "train", str(cfg), "run.name=ports"] for c in calls)


def test_the_scripts_work_from_any_submit_directory(tmp_path, fake_slurm):
    """sbatch runs a copy of the script from its spool directory, in the directory it was
    submitted from: the sweep finds train.sbatch beside the script that was submitted (the job's
    Command), not in the submit directory."""
    env, log = fake_slurm
    env = _without_torchrun(tmp_path, env)
    cfg = _config(tmp_path)
    elsewhere, spool = tmp_path / "elsewhere", tmp_path / "spool"
    elsewhere.mkdir()
    spool.mkdir()
    (spool / "slurm_script").write_text((SLURM / "sweep.sbatch").read_text())
    job = subprocess.run(["bash", str(spool / "slurm_script"), str(cfg), "optim.g.lr", "1e-4", "3e-4"], cwd=elsewhere,
                         env={**env, "SLURM_SUBMIT_DIR": str(elsewhere), "SLURM_ARRAY_TASK_ID": "1",
                              "FAKE_COMMAND": str(SLURM / "sweep.sbatch")}, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-3000:]
    call, = _torchrun_options(log)
    assert call["module"] == ["bigtrain", "train", str(cfg), "optim.g.lr=3e-4", "run.name=c-optim_g_lr-3e-4"]


@pytest.mark.slow
def test_sweep_task_trains_its_value_and_eval_script_scores_the_run(tmp_path, fake_slurm, weights):
    env, log = fake_slurm
    cfg = _config(tmp_path)
    job = _sbatch("sweep.sbatch", [str(cfg), "optim.g.lr", "1e-4", "3e-4", "--", "train.total_kimg=0.064"], env, SLURM_ARRAY_TASK_ID="1")
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    run = tmp_path / "runs" / "c-optim_g_lr-3e-4"
    resolved = (run / "config.yaml").read_text()
    assert "lr: 0.0003" in resolved and "total_kimg: 0.064" in resolved
    job = _sbatch("eval.sbatch", [str(run), "--metrics", "is", "--num", "4", "--weights", str(weights), "--no-download", "--device", "cpu", "--batch-size", "4"], env)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    result = json.loads((run / "eval-4242.json").read_text())
    assert result["is"] > 0 and result["protocol"]["generated"]["num_images"] == 4


def test_eval_script_as_a_job_array_scores_its_part_of_the_checkpoints(tmp_path, fake_slurm):
    """`sbatch --array=2-5 slurm/eval.sbatch RUN ...`: task 3 is the array's second (SLURM_ARRAY_TASK_MIN
    2) of 4, so it runs `bigtrain eval --all-checkpoints --part 1/4` and writes its JSON to
    RUN/eval-<array job>_<task>.json; outside an array the script evaluates one checkpoint as before."""
    env, log = fake_slurm
    env = _without_torchrun(tmp_path, env)
    run = tmp_path / "run"
    run.mkdir()
    array = {"SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "2",
             "SLURM_ARRAY_TASK_COUNT": "4"}
    job = _sbatch("eval.sbatch", [str(run), "--metrics", "fid", "--num", "8"], env, **array)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err[-3000:]
    job = _sbatch("eval.sbatch", [str(run), "--num", "8"], env)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err[-3000:]
    in_array, alone = _torchrun_options(log)
    assert in_array["module"] == ["bigtrain", "eval", "--run", str(run), "--all-checkpoints", "--part", "1/4",
                                  "--metrics", "fid", "--num", "8"]
    assert alone["module"] == ["bigtrain", "eval", "--run", str(run), "--num", "8"]
    assert (run / "eval-4240_3.json").is_file() and (run / "eval-4242.json").is_file()
