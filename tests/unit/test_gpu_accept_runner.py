"""bench/gpu/accept.py's runner: a check that runs out of time, raises, exits or dies is recorded as an error
(with the figures it had measured, for a timeout) and the run goes on; bad options are refused before
anything is written; prepare_wheels.py carries everything the GPU machine lacks (issue 28). The whole
dry run is tests/smoke/test_gpu_accept.py."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO))

from bench.gpu import accept, prepare_wheels  # noqa: E402
from bench.gpu.common import Check, Ctx, result  # noqa: E402

HERE = "tests.unit.test_gpu_accept_runner"


def sleeper(ctx: Ctx) -> dict:
    ctx.progress({"measured_before_the_timeout": 1})
    time.sleep(60)
    return result("pass")


def raiser(ctx: Ctx) -> dict:
    raise ValueError("a broken check\nsecond line")


def exiter(ctx: Ctx) -> dict:
    raise SystemExit("only 1 log interval(s): raise --intervals")  # what bench/common.py raises


def dier(ctx: Ctx) -> dict:
    os._exit(3)


def passer(ctx: Ctx) -> dict:
    return result("pass", {"value": 2})


def run(tmp_path: Path, fn: str, timeout: float) -> dict:
    ctx = Ctx(dry=True, out=tmp_path, tmp=tmp_path)
    return accept.run_check(Check(fn, "claim", f"{HERE}:{fn}", timeout, timeout), ctx, timeout, tmp_path / "log",
                            "fork")  # fmt: skip


def test_timeout_raise_and_death_are_errors_and_the_next_check_runs(tmp_path):
    started = time.monotonic()
    timed_out = run(tmp_path, "sleeper", 3)
    assert time.monotonic() - started < 20  # killed at its budget, not after its minute
    assert timed_out["status"] == "error" and timed_out["reason"].startswith("timed out after 3 s")
    assert timed_out["figures"] == {"measured_before_the_timeout": 1}
    raised = run(tmp_path, "raiser", 30)
    assert raised["status"] == "error" and raised["reason"] == "ValueError: a broken check"
    assert "test_gpu_accept_runner.py" in raised["raised_at"]
    exited = run(tmp_path, "exiter", 30)
    assert exited["status"] == "error" and exited["reason"] == "SystemExit: only 1 log interval(s): raise --intervals"
    died = run(tmp_path, "dier", 30)
    assert died["status"] == "error" and "exit code 3" in died["reason"]
    assert run(tmp_path, "passer", 30) == {"status": "pass", "figures": {"value": 2}}
    assert "ValueError: a broken check" in (tmp_path / "log").read_text()  # the child's traceback is in the log


def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    for argv, culprit in (
        (["--out", str(a_file)], "is not a folder"),
        (["--out", str(tmp_path / "new"), "--only", "fp16_accelerate,nosuch"], "no check named nosuch"),
    ):
        with pytest.raises(SystemExit) as exit_:
            accept.main(["--cpu-dry-run", *argv])
        assert exit_.value.code == 2 and culprit in capsys.readouterr().err
    assert a_file.read_text() == "keep" and not (tmp_path / "new").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "accept.json").write_text("{}")
    with pytest.raises(SystemExit):
        accept.main(["--cpu-dry-run", "--out", str(used)])
    assert "previous run's accept.json" in capsys.readouterr().err and (used / "accept.json").read_text() == "{}"


def test_carried_wheels_leave_no_requirement_unmet():
    """What bigtrain and every carried package need (at the versions installed here, which the wheels
    have) is carried or on the GPU machine."""
    from importlib import metadata

    have = {prepare_wheels.canonical(n) for n in prepare_wheels.CARRIED + prepare_wheels.ON_DEVICE}
    needs = {"bigtrain": prepare_wheels.bigtrain_requirements()}
    needs |= {n: prepare_wheels.requirements(metadata.requires(n) or []) for n in prepare_wheels.CARRIED}
    assert "omegaconf" in needs["bigtrain"] and "pydantic" in needs["deepspeed"]
    assert {who: sorted(names - have) for who, names in needs.items() if names - have} == {}


def test_sync_watch_counts_each_sync_report_where_it_was_caused():
    """The host-sync check's counter (its torch mode setter replaced: a CPU has no sync debug mode)."""
    from bench.gpu.checks_train import SyncWatch

    modes = []

    def syncs_here():
        warnings.warn("called a synchronizing CUDA operation")  # torch's report of a sync

    with warnings.catch_warnings(record=True) as seen:
        with SyncWatch(set_mode=modes.append) as watch:
            for _ in range(3):
                syncs_here()
            warnings.warn("not a sync", DeprecationWarning)  # passed on, not counted
    assert [str(w.message) for w in seen] == ["not a sync"]
    with SyncWatch(set_mode=modes.append) as again:
        syncs_here()
    assert modes == ["warn", "default", "warn", "default"]
    (where, count), = watch.places.items()
    assert count == 3 and where.startswith("tests/unit/test_gpu_accept_runner.py:") and "(syncs_here)" in where
    assert again.places == {where: 1}


def test_fp16_check_fails_when_g_and_d_share_one_scaler(tmp_path, monkeypatch):
    """The fp16 check at its dry-run size, against a backend whose players share one GradScaler (as
    Accelerate's own fp16 would): D's overflow then halves G's scale, which the check must refuse."""
    import bigtrain.engine.backends.accelerate as accelerate
    from bench.gpu import checks_train

    make_player, shared = accelerate.AccelerateBackend.make_player, {}

    def sharing(self, name, *args, **kwargs):
        player = make_player(self, name, *args, **kwargs)
        player.scaler = shared.setdefault("scaler", player.scaler)
        return player

    monkeypatch.setattr(accelerate.AccelerateBackend, "make_player", sharing)
    record = checks_train.fp16_accelerate(Ctx(dry=True, out=tmp_path, tmp=tmp_path))
    assert record["status"] == "fail" and "G's scale went" in record["reason"], record.get("reason")
    assert record["figures"]["overflow_at_step"] is not None
