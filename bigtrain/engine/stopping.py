"""Stopping a run on request and guarding its directory (docs/design.md, "Preemption and
requeue").

A run stops early, with a checkpoint, for one of three reasons: a signal (train.stop_signals,
on any rank), a stop file (RUN_DIR/STOP, seen by rank 0) or the time budget (train.max_minutes
or SLURM's job end time, judged by rank 0; `slurm_job_end_time`). A signal handler only records the signal; the loop
asks `local_reason()` after each iteration and the ranks agree on the largest reason with one
collective (Backend.max_over_ranks), so every rank stops after the same iteration, whichever
ranks were signalled. A second SIGINT aborts at once (KeyboardInterrupt, exit 130).

`RunLock` keeps two runs off one directory: rank 0 holds an flock on RUN_DIR/train.lock for the
whole run; the kernel drops it when the process dies, so a killed run never leaves it stale.
Where the filesystem refuses flock, the file's age is the test instead: rank 0 touches it while
it runs, and one untouched for `stale_minutes` is taken over.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, Optional

from bigtrain.config import catchable_signal
from bigtrain.errors import BigtrainError

STOP_FILE = "STOP"
STOPPED_FILE = "stopped.json"
LOCK_FILE = "train.lock"

NONE, SIGNAL, STOP_REQUESTED, TIME_BUDGET = 0, 1, 2, 3  # the agreed reason is the largest of the ranks'
REASONS = {SIGNAL: "signal", STOP_REQUESTED: "stop file", TIME_BUDGET: "time budget"}
NO_END_TIME = ("NONE", "N/A", "Unknown", "None")  # squeue's %e without a time limit (running, pending)


def slurm_job_end_time(
    env: Mapping[str, str] = os.environ, run=subprocess.run, timeout_s: float = 10.0
) -> Optional[float]:
    """This SLURM job's end time as a UNIX time; None outside SLURM or without a time limit.

    SLURM_JOB_END_TIME where SLURM sets it. SLURM 22.05 does not: then `squeue -h -j
    $SLURM_JOB_ID -o %e` tells, asked in UTC (squeue prints local time) and in SLURM's standard
    format (a user's SLURM_TIME_FORMAT would change it). A missing squeue, an error, an answer
    that is no time or no answer within `timeout_s` cost one warning and no deadline: never the
    run."""
    end = env.get("SLURM_JOB_END_TIME", "").strip()
    if end.isdigit():
        return float(end)
    job = env.get("SLURM_JOB_ID", "").strip()
    if not job:
        return None
    cmd = ["squeue", "--noheader", "--jobs", job, "--format", "%e"]
    try:
        done = run(
            cmd,
            env={**env, "TZ": "UTC0", "SLURM_TIME_FORMAT": "standard"},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # not installed, not executable, timed out
        return _no_end_time(cmd, str(exc))
    answer = done.stdout.strip()
    if done.returncode != 0:
        return _no_end_time(cmd, f"exit {done.returncode}: {(done.stderr or answer).strip()[-500:]}")
    if answer in NO_END_TIME:
        return None
    try:
        return float(calendar.timegm(time.strptime(answer, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return _no_end_time(cmd, f"answered {answer[-200:]!r}")


def _no_end_time(cmd: list[str], why: str) -> None:
    warnings.warn(
        f"train.slurm_deadline: no SLURM_JOB_END_TIME, and `{' '.join(cmd)}` did not tell the job's end "
        f"time ({why}); the run will not stop by itself before the time limit (the batch script's --signal "
        "still asks it to)",
        stacklevel=3,
    )
    return None


class StopRequests:
    """This rank's reasons to stop: caught signals; on rank 0 also the stop file and the clock.

    The time budget ends `margin_s()` before the deadline: the largest of `min_margin_s` and
    twice the longest checkpoint write plus twice the longest loop pass seen so far (a pass is
    an iteration with its logging, grids, checkpoint and evaluation; the ranks agree one pass
    late, so two passes and the final checkpoint must fit)."""

    def __init__(
        self,
        signals: list[str],
        run_dir: Path,
        *,
        is_main: bool,
        max_minutes: float = 0.0,
        min_margin_s: float = 60.0,
        slurm_deadline: bool = True,
        env=os.environ,
        clock=time.monotonic,
        wall=time.time,
        job_end_time: Callable[[Mapping[str, str]], Optional[float]] = slurm_job_end_time,
    ):
        self.run_dir, self.is_main, self.clock = run_dir, is_main, clock
        self.min_margin_s = min_margin_s
        self.caught: Optional[signal.Signals] = None
        self.longest_pass_s = self.longest_checkpoint_s = 0.0
        self._next_file_check = 0.0
        now = clock()
        deadlines = [now + 60.0 * max_minutes] if max_minutes > 0 else []
        # rank 0 alone judges the clock: one squeue a job, not one a rank
        end = job_end_time(env) if slurm_deadline and is_main else None
        if end is not None:  # a UNIX time; on the monotonic clock from here
            deadlines.append(now + end - wall())
        self.deadline: Optional[float] = min(deadlines) if deadlines else None
        self._previous: dict[signal.Signals, object] = {}
        for sig in {catchable_signal(name) for name in signals} - {None}:  # names checked by TrainConfig
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.caught == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        if self.caught is None:
            self.caught = signal.Signals(signum)

    def margin_s(self) -> float:
        return max(self.min_margin_s, 2.0 * self.longest_checkpoint_s + 2.0 * self.longest_pass_s)

    def observe(self, pass_s: float = 0.0, checkpoint_s: float = 0.0) -> None:
        self.longest_pass_s = max(self.longest_pass_s, pass_s)
        self.longest_checkpoint_s = max(self.longest_checkpoint_s, checkpoint_s)

    def local_reason(self) -> int:
        if self.caught is not None:
            return SIGNAL
        if not self.is_main:
            return NONE
        now = self.clock()
        if self.deadline is not None and now + self.margin_s() >= self.deadline:
            return TIME_BUDGET
        if now >= self._next_file_check:  # a stat at most once a second (a shared filesystem)
            self._next_file_check = now + 1.0
            if (self.run_dir / STOP_FILE).exists():
                return STOP_REQUESTED
        return NONE

    def describe(self, reason: int) -> str:
        if reason == SIGNAL:
            return f"signal {self.caught.name}" if self.caught is not None else "signal (on another rank)"
        if reason == TIME_BUDGET:
            return f"time budget (margin {self.margin_s():.0f} s)"
        return REASONS.get(reason, "unknown")

    def close(self) -> None:
        for sig, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, previous)
        self._previous.clear()


def write_stopped(run_dir: Path, record: dict, env: Mapping[str, str] = os.environ) -> None:
    """RUN_DIR/stopped.json (atomically), and the stop file it answered removed. Under SLURM the
    record also names the job and its start (`slurm_job_id`, `slurm_restart_count`): a requeued
    job that fails before training finds the previous start's file, and slurm/train.sbatch
    requeues only for a stop its own start wrote."""
    if env.get("SLURM_JOB_ID"):
        restarts = env.get("SLURM_RESTART_COUNT", "")
        record = {
            **record,
            "slurm_job_id": env["SLURM_JOB_ID"],
            "slurm_restart_count": int(restarts) if restarts.isdigit() else 0,
        }
    tmp = run_dir / f".{STOPPED_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(run_dir / STOPPED_FILE)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / STOP_FILE).unlink()


_HELD: dict[str, list] = {}  # lock path -> [RunLock holding the file, holders in this process]


class RunLock:
    """RUN_DIR/train.lock, held by rank 0 for the run (see the module docstring). Within one
    process the lock is shared (a Trainer built twice in one Python session, as tests do); only
    another process is refused."""

    def __init__(self, run_dir: Path, stale_minutes: float = 10.0):
        self.path = run_dir / LOCK_FILE
        self.stale_s = 60.0 * stale_minutes
        self.fd: Optional[int] = None
        self.flock = True
        self._touched = 0.0
        self._held = False

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return (
                f"pid {info.get('pid')} on {info.get('host')}"
                + (f" (SLURM job {info['slurm_job_id']})" if info.get("slurm_job_id") else "")
                + f", since {info.get('started')}"
            )
        except (OSError, ValueError, AttributeError):
            return "another process"

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            self._held = True
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BigtrainError(
                f"{self.path.parent} is in use by another run ({self._holder()}; {self.path}); wait for it to end or "
                "use another run.name"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                os.close(fd)
                raise
            self.flock = False  # a filesystem without locks: fall back to the file's age
            age = time.time() - os.fstat(fd).st_mtime
            if os.fstat(fd).st_size > 0 and age < self.stale_s:
                os.close(fd)
                raise BigtrainError(
                    f"{self.path.parent} is in use by another run ({self._holder()}; {self.path} touched {age:.0f} s "
                    "ago, "
                    f"stale after {self.stale_s:.0f} s); wait for it to end or use another run.name"
                ) from None
        self.fd = fd
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "flock": self.flock,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._touched = time.monotonic()
        _HELD[key] = [self, 1]
        self._held = True

    def touch(self) -> None:
        """Without flock: keep the file young while the run lives (at most once a minute)."""
        if self._held:
            _HELD[str(self.path.resolve())][0]._touch()

    def _touch(self) -> None:
        if self.fd is not None and not self.flock and time.monotonic() - self._touched > 60:
            os.utime(self.path)
            self._touched = time.monotonic()

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = str(self.path.resolve())
        owner = _HELD[key]
        owner[1] -= 1
        if owner[1] > 0:
            return
        del _HELD[key]
        owner[0]._close()

    def _close(self) -> None:
        if self.fd is None:
            return
        if not self.flock:  # an age-tested lock must go, or the next start waits until it is stale
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)  # drops the flock; the file stays (unlinking it could race a new holder)
        self.fd = None
