"""Errors that the command line reports as one line: bad input (exit code 2), a diverged run (3)."""
from __future__ import annotations


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
