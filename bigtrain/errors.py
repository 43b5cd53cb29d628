"""Errors that the command line reports as one line: bad input (exit code 2), a diverged run (3),
a run stopped on request with a checkpoint (75)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

EXIT_STOPPED = (
    75  # sysexits' EX_TEMPFAIL: checkpointed on request (signal, stop file, time budget); run it again to continue
)


class BigtrainError(Exception):
    """Bad input the user can fix: the message names the culprit."""


class ConfigError(BigtrainError):
    """An unknown, ill-typed or invalid configuration value."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"config error: {key}: {reason}")
        self.key = key
        self.reason = reason


class DataError(BigtrainError):
    """A missing, unreadable or malformed data file."""


class CheckpointError(BigtrainError):
    """A missing, unreadable or incompatible checkpoint."""


class TrainingDiverged(Exception):
    """Training produced non-finite values it cannot recover from (train.max_nonfinite steps
    skipped in a row, or non-finite weights at a checkpoint): exit code 3, nothing saved."""


class Stopped(Exception):
    """The run stopped early on request after writing a checkpoint (exit code EXIT_STOPPED);
    the same command continues it (docs/design.md, "Preemption and requeue")."""

    def __init__(self, reason: str, step: int, checkpoint: Optional[Path]):
        super().__init__(
            f"stopped at step {step} ({reason}) after writing {checkpoint}; run the same command again to continue"
        )
        self.reason, self.step, self.checkpoint = reason, step, checkpoint
