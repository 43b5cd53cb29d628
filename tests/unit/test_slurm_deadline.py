"""train.slurm_deadline where SLURM sets no SLURM_JOB_END_TIME (22.05): the job's end time comes
from `squeue -h -j $SLURM_JOB_ID -o %e`, asked in UTC (so the machine's time zone does not move
it) and in SLURM's standard time format (a user's SLURM_TIME_FORMAT would change it). No time
limit gives no deadline, quietly; a missing squeue, an error, nonsense or a hang give none with
one warning, and never stop or hang the run. The squeue here is a script on the PATH given in
`env`, run for real; the fake `run` of the last tests stands in for subprocess.run."""
import subprocess
import time
import warnings

import pytest

from bigtrain.engine.stopping import StopRequests, slurm_job_end_time

END = 1_700_000_000  # 2023-11-14T22:13:20Z


def _squeue(tmp_path, body: str) -> dict:
    """An env whose PATH holds only a `squeue` running `body`; it logs its arguments and environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "squeue"
    log = tmp_path / "call"
    script.write_text(f'#!/bin/bash\necho "$* TZ=$TZ FORMAT=$SLURM_TIME_FORMAT" > {log}\n{body}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "1234",
            "TZ": "America/New_York", "SLURM_TIME_FORMAT": "relative"}  # the user's settings, not squeue's


def _quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        return slurm_job_end_time(**kwargs)


def _one_warning(match: str, **kwargs):
    with pytest.warns(UserWarning, match=match) as caught:
        out = slurm_job_end_time(**kwargs)
    assert len(caught) == 1
    return out


def test_the_end_time_is_asked_in_utc_and_the_standard_format_whatever_the_users_settings(tmp_path):
    env = _squeue(tmp_path, f'date -d @{END} +%Y-%m-%dT%H:%M:%S')  # as squeue prints it, in the TZ it was given
    assert _quiet(env=env) == END
    call = (tmp_path / "call").read_text().split()
    assert call == ["--noheader", "--jobs", "1234", "--format", "%e", "TZ=UTC0", "FORMAT=standard"]


def test_slurm_job_end_time_is_taken_as_it_is_and_nothing_is_asked(tmp_path):
    env = _squeue(tmp_path, "exit 1")
    assert _quiet(env={**env, "SLURM_JOB_END_TIME": str(END)}) == END
    assert not (tmp_path / "call").exists()


def test_outside_slurm_nothing_is_asked(tmp_path):
    env = _squeue(tmp_path, "exit 1")
    del env["SLURM_JOB_ID"]
    assert _quiet(env=env) is None and not (tmp_path / "call").exists()


@pytest.mark.parametrize("answer", ["NONE", "N/A", "Unknown"])
def test_a_job_without_time_limit_has_no_deadline_and_no_warning(tmp_path, answer):
    assert _quiet(env=_squeue(tmp_path, f"echo {answer}")) is None


def test_a_failing_squeue_costs_one_warning_not_the_run(tmp_path):
    env = _squeue(tmp_path, 'echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1')
    assert _one_warning("Unable to contact slurm controller", env=env) is None


def test_an_answer_that_is_no_time_costs_one_warning(tmp_path):
    assert _one_warning("12:34:56", env=_squeue(tmp_path, "echo 12:34:56")) is None


def test_a_missing_squeue_costs_one_warning(tmp_path):
    env = {"PATH": str(tmp_path), "SLURM_JOB_ID": "1234"}
    assert _one_warning("squeue", env=env) is None


def test_a_hanging_squeue_is_given_up_after_the_timeout(tmp_path):
    env = _squeue(tmp_path, "sleep 30")
    started = time.monotonic()
    assert _one_warning("timed out", env=env, timeout_s=0.5) is None
    assert time.monotonic() - started < 10


def test_stop_requests_take_the_deadline_from_squeue_on_rank_0_only(tmp_path):
    asked = []

    def end_time(env):
        asked.append(env)
        return 5000.0

    env = {"SLURM_JOB_ID": "1234"}
    s = StopRequests([], tmp_path, is_main=True, max_minutes=60, env=env, clock=lambda: 0.0, wall=lambda: 4000.0,
                     job_end_time=end_time)
    assert s.deadline == 1000.0 and asked == [env]  # SLURM's end, 1000 s away, comes before the hour
    worker = StopRequests([], tmp_path, is_main=False, env=env, job_end_time=end_time)
    assert worker.deadline is None and len(asked) == 1  # one squeue a job, not one a rank
    off = StopRequests([], tmp_path, is_main=True, env=env, slurm_deadline=False, job_end_time=end_time)
    assert off.deadline is None and len(asked) == 1


def test_the_command_runs_with_a_timeout_through_the_given_run(tmp_path):
    calls = []

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 0, stdout="2023-11-14T22:13:20\n", stderr="")

    assert _quiet(env={"SLURM_JOB_ID": "9"}, run=run, timeout_s=3.0) == END
    (cmd, kwargs), = calls
    assert cmd[0] == "squeue" and kwargs["timeout"] == 3.0 and kwargs["env"]["TZ"] == "UTC0"
