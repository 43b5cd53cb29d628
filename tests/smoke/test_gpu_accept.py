"""The GPU acceptance run's CPU dry run (issue 28): `python bench/gpu/accept.py --cpu-dry-run --out DIR`,
as the README's "Checking on a GPU" gives it, runs every check at toy sizes and writes the JSON that
bench/gpu/README.md documents. Checks with a CPU form pass here for real; those that need CUDA are
skipped with their reason, never passed; the runner and bad options: tests/unit/test_gpu_accept_runner.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO))

from bench.gpu.checks import CHECKS  # noqa: E402

CPU_FORMS = ("fp16_accelerate", "bf16_accelerate", "resume_exact", "throughput_cyclegan", "throughput_stylegan2",
             "throughput_progan", "throughput_biggan", "biggan_layouts")  # fmt: skip


def test_cpu_dry_run_runs_every_check_and_writes_the_documented_json(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "bench/gpu/accept.py", "--cpu-dry-run", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (out / "accept.log").read_text()[-3000:]
    report = json.loads((out / "accept.json").read_text())
    assert report["schema"] == "bigtrain-gpu-accept/1" and report["mode"] == "cpu-dry-run"
    assert report["install"]["status"] == "skip" and report["start_method"] == "fork"
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == [c.name for c in CHECKS]
    assert report["summary"] == {s: sum(c["status"] == s for c in checks.values()) for s in report["summary"]}
    for name, c in checks.items():
        assert c["status"] in ("pass", "skip"), (name, c)
        assert c["seconds"] <= c["budget_s"] + 5
        if c["status"] == "skip":
            assert c["reason"].startswith("needs "), (name, c["reason"])  # needs CUDA, or 2 CUDA devices
    assert [n for n, c in checks.items() if c["status"] == "pass"] == list(CPU_FORMS)

    fp16 = checks["fp16_accelerate"]["figures"]
    at = {s["player"]: s for s in fp16["steps"] if s["step"] == fp16["overflow_at_step"]}
    assert at["D"]["skipped"] and not at["D"]["weights_moved"] and at["D"]["scale_after"] == at["D"]["scale_before"] / 2
    assert not at["G"]["skipped"] and at["G"]["weights_moved"]
    resume = checks["resume_exact"]["figures"]
    assert resume["process_group"] == "gloo" and resume["tensors_unequal"] == 0 and resume["tensors_compared"] > 100
    assert resume["resumed_at_step"] == 2 and resume["losses_equal"]  # the second run did resume, at K
    syncs = checks["host_syncs"]
    assert syncs["status"] == "skip" and syncs["figures"]["iterations_run"] == 4  # its harness drove the Trainer
    assert syncs["figures"]["iterations_counted"] == 2  # and watched the two after warm-up
    for name in ("throughput_biggan", "biggan_layouts", "throughput_progan", "throughput_cyclegan",
                 "throughput_stylegan2"):  # fmt: skip
        runs = checks[name]["figures"]["runs"]
        assert all(r["img_per_s"] > 0 for r in runs.values() if "skipped" not in r), (name, runs)
    assert set(checks["throughput_biggan"]["figures"]["runs"]) == {"mb2_bf16", "mb2_fp32"}
    assert checks["biggan_layouts"]["figures"]["runs"]["channels_last"]["channels_last"]["held"] is True
    assert checks["biggan_layouts"]["figures"]["runs"]["compile"]["skipped"].startswith("needs CUDA")
    assert "== biggan_layouts" in (out / "accept.log").read_text()

    documented = set(re.findall(r"`([a-z_0-9]+)`", (REPO / "bench" / "gpu" / "README.md").read_text()))
    fields = set(report) | set(report["machine"]) | {k for c in checks.values() for k in c} | set(checks)
    assert fields <= documented, f"undocumented in bench/gpu/README.md: {sorted(fields - documented)}"
