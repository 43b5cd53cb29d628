"""slurm/train.sbatch on a real SLURM (issue 23): a one-node cluster from Debian's packages
(slurm/local-cluster.sh, daemons and files in a temporary directory; the packages are installed
when missing and this runs as root, else the test is skipped). The script is submitted
unchanged, its #SBATCH values overridden on the sbatch command line (one node, no GPUs, one
CPU), from a directory that is not the repository. The job is interrupted twice and must end with
the per-step losses and final weights of an uninterrupted run:

1. the time-limit warning: USR1 to the batch shell alone (`scancel --batch --signal=USR1`, what
   --signal=B:USR1@300 sends); the run checkpoints and the script requeues the job;
2. an administrator's `scontrol requeue` (a preemption): SLURM sends SIGTERM to every process of
   the job and requeues it; the run checkpoints, the script's own requeue is refused ("Job is
   pending execution") and recognised.

No start may end FAILED (SLURM's job completion log) or with a failed srun step (srun would say
"Exited with exit code" in the log), and no STOP file may be left for the next start. SLURM holds
a requeued job for about two minutes (BeginTime): the test checks the hold is there, then lifts
it (`scontrol update StartTime=now`) once the node is done with the previous start. 85-105 s of
test and 95-115 s with the cluster's start and stop, on 2 shared CPUs (measured); slow."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.faults import harness
from tests.faults.test_preempt import STEPS, _config
from tests.faults.test_slurm import SITECUSTOMIZE

pytestmark = [pytest.mark.slow, pytest.mark.dist, pytest.mark.timeout(900)]

SLURM = harness.REPO / "slurm"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
COMMANDS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel"]
INSTALL = f"apt-get install -y --no-install-recommends {' '.join(PACKAGES)}"


def _install_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"the local SLURM cluster runs slurmd as root (and {INSTALL} needs root)")
    if all(shutil.which(c) for c in COMMANDS):
        return
    if not shutil.which("apt-get"):
        pytest.skip(f"no SLURM here and no apt-get to install it ({INSTALL})")
    done = subprocess.run(INSTALL.split(), env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0 or not all(shutil.which(c) for c in COMMANDS):
        pytest.skip(f"{INSTALL} failed: {done.stderr[-1000:]}")


@pytest.fixture()
def slurm_cluster():
    """The cluster's environment (SLURM_CONF) and directory; its daemons stopped at the end."""
    _install_or_skip()
    # not pytest's tmp_path: munged's socket path must fit a unix socket's 108 bytes
    folder = Path(tempfile.mkdtemp(prefix="bigtrain-slurm-"))
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        started = subprocess.run(["bash", str(SLURM / "local-cluster.sh"), "start", str(folder)], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr + _logs(folder)
        yield env, folder
    finally:
        subprocess.run(["bash", str(SLURM / "local-cluster.sh"), "stop", str(folder)], env=env, timeout=180)
        shutil.rmtree(folder, ignore_errors=True)


def _logs(folder: Path) -> str:
    return "".join(f"\n== {f.name}\n{f.read_text()[-3000:]}" for f in sorted((folder / "log").glob("*")) if f.is_file())


def _slurm(env: dict, *args: str) -> str:
    done = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def _job(env: dict, job_id: str) -> dict:
    """`scontrol show job`'s fields (no value here holds a space)."""
    return dict(f.split("=", 1) for f in _slurm(env, "scontrol", "show", "job", "-o", job_id).split() if "=" in f)


def _wait(what: str, ready, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"no {what} in {timeout} s")


def _last_step(run: Path) -> int:
    rows = harness.rows(run)
    return rows[-1].get("step", 0) if rows else 0


def _trained_to(env: dict, job_id: str, run: Path, step: int) -> bool:
    """The running job's run has logged `step`; an error once the job has ended without it."""
    state = _job(env, job_id)["JobState"]
    assert state in ("PENDING", "CONFIGURING", "RUNNING"), f"the job is {state} before step {step}"
    return state == "RUNNING" and _last_step(run) >= step


def _requeued(env: dict, job_id: str, restarts: int, run: Path) -> dict:
    """Wait for the job to be PENDING again after its stop; check SLURM's hold, lift it; the stop's record."""
    info = _wait(f"requeue {restarts}",
                 lambda: (i := _job(env, job_id))["JobState"] == "PENDING" and i["Restarts"] == str(restarts) and i)
    begin = time.mktime(time.strptime(info["EligibleTime"], "%Y-%m-%dT%H:%M:%S"))
    assert info["Reason"] == "BeginTime" and begin - time.time() > 60, info  # about two minutes' hold
    stopped = json.loads((run / "stopped.json").read_text())  # before the next start deletes it
    assert not (run / "STOP").exists()  # not asked again by the SIGTERM that ends a requeued job
    # the hold is SLURM's guard: slurmd refuses a start in the second its previous start's credential
    # was revoked ("Job credential revoked": the job ends FAILED, seen here), so the node must be
    # done with that start, and a few seconds past it, before the hold is lifted
    _wait("an idle node", lambda: _slurm(env, "sinfo", "-h", "-n", "localhost", "-o", "%T").strip() == "idle")
    time.sleep(3)
    _slurm(env, "scontrol", "update", f"JobId={job_id}", "StartTime=now")
    return stopped


def test_train_sbatch_on_a_real_slurm_stops_requeues_twice_and_resumes_exactly(tmp_path, slurm_cluster):
    env, cluster = slurm_cluster
    began = time.monotonic()
    cfg = _config(tmp_path)
    whole = harness.finish(harness.command(cfg, ["run.name=whole"]))
    assert whole.returncode == 0, whole.stderr[-2000:]
    run, out = tmp_path / "runs" / "job", tmp_path / "job.out"
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)  # every iteration sleeps SLOW_STEP_S
    submit_env = {**env, **harness.ENV, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
                  "PYTHONPATH": f"{site}:{harness.REPO}", "SLOW_STEP_S": "0.3"}
    submit_env.pop("MASTER_PORT", None)
    sbatch = ["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20",
              f"--output={out}", str(SLURM / "train.sbatch"), str(cfg), "run.name=job"]
    job_id = subprocess.run(sbatch, cwd=elsewhere, env=submit_env, capture_output=True, text=True, check=True,
                            timeout=60).stdout.strip().split(";")[0]
    try:
        # (1) the time-limit warning
        _wait("step 8", lambda: _trained_to(env, job_id, run, 8))
        _slurm(env, "scancel", "--batch", "--signal=USR1", job_id)
        first = _requeued(env, job_id, 1, run)
        assert first["reason"] == "stop file" and (first["slurm_job_id"], first["slurm_restart_count"]) == (job_id, 0)
        # (2) an administrator's requeue, once the second start has trained a while
        _wait("the second start's progress", lambda: _trained_to(env, job_id, run, first["step"] + 9))
        _slurm(env, "scontrol", "requeue", job_id)
        second = _requeued(env, job_id, 2, run)
        assert second["slurm_restart_count"] == 1 and first["step"] < second["step"] < STEPS
        info = _wait("the end", lambda: (i := _job(env, job_id))["JobState"] in ("COMPLETED", "FAILED") and i)
    finally:  # shown when the test fails
        log = out.read_text() if out.is_file() else ""
        print(f"== job log\n{log}\n== last step {_last_step(run)}, {_job(env, job_id)}{_logs(cluster)}")
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "2"), log[-3000:]
    assert f"requeued job {job_id}" in log and f"job {job_id} was requeued already" in log, log[-3000:]
    assert "Exited with exit code" not in log, log[-3000:]  # srun's word for a failed task
    # the job completion log has a line for each start's end (a requeued one says PENDING): no FAILED, no exit code
    lines = (cluster / "log" / "jobcomp.txt").read_text().splitlines()
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in lines]
    ends = [(e["JobState"], e["ExitCode"]) for e in fields if e["JobId"] == job_id]
    assert ends == [("PENDING", "0:0"), ("PENDING", "0:0"), ("COMPLETED", "0:0")], lines
    assert harness.identical(tmp_path / "runs" / "whole", run)
    took = time.monotonic() - began
    print(f"real SLURM: stops at steps {first['step']} and {second['step']}, {took:.0f} s", *lines, sep="\n")
