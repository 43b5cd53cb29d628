"""The GPU acceptance run: every CUDA-only claim of bigtrain checked in one call (issue 28).

    python3 bench/gpu/accept.py --out DIR            # on the GPU machine (the README's "Checking on a GPU")
    python bench/gpu/accept.py --cpu-dry-run --out DIR  # here: the same script at toy sizes on the CPU

First it installs what the GPU machine lacks (the wheels bench/gpu/prepare_wheels.py put in .whl/, then
this checkout, both with --no-deps into one folder that goes first on the path); then it runs every
check of CHECKS in its own forked process under its own time budget (and the run's whole budget), and
writes DIR/accept.json (bench/gpu/README.md documents it) after each check, and DIR/accept.log (every
check's output). A check that fails, raises, dies or runs out of time is recorded as such and the next
one runs. Exit status: 0 when no check failed or erred, else 1.

Why a fork per check: each check gets a fresh CUDA context, process group, sync-debug mode and
allocator peak, and a check that hangs (a collective, a compiler) can be killed at its budget, while
torch and bigtrain are imported once (the parent never touches CUDA, so forking is safe).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench.gpu from this checkout (no torch import until the install is done)

from bench.gpu.checks import CHECKS  # noqa: E402
from bench.gpu.common import STATUSES, Ctx, describe, module_of, result  # noqa: E402

SCHEMA = "bigtrain-gpu-accept/1"
RUN_BUDGET_S = {"gpu": 440, "cpu": 240}  # the whole run's checks (install excluded): see README.md's sizing
MIN_START_S = 8  # a check is not started with less time than this left in the run's budget


def install(wheels: Path, site: Path, log) -> dict:
    """pip-install the carried wheels and this checkout (both --no-deps, no index) into `site`."""
    started = time.monotonic()
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    steps = []
    if found:
        steps.append(pip + ["--upgrade", "--target", str(site), *map(str, found)])
    # the project itself (its console script, its entry points); no build isolation: nothing can be fetched there
    steps.append(pip + ["--no-build-isolation", "--upgrade", "--target", str(site), str(REPO)])
    for cmd in steps:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            return result("error", {"wheels": [w.name for w in found]}, f"pip exited with {proc.returncode}: {cmd}")
    figures = {"wheels": [w.name for w in found], "site": str(site), "seconds": round(time.monotonic() - started, 1)}
    if not found:
        return result("skip", figures, f"no wheels in {wheels} (run bench/gpu/prepare_wheels.py here first)")
    return result("pass", figures)


def run_child(check, ctx, path: Path, log_path: Path) -> None:
    """The forked process of one check: its own process group (so a timeout kills what it started; not a
    session of its own, which would outlive a killed parent on the device machine), its output into
    the log, its record into `path`."""
    os.setpgid(0, 0)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    try:
        record = check.run(ctx)
    except (Exception, SystemExit) as exc:  # recorded, never raised: the next check runs (benches exit on misuse)
        traceback.print_exc()
        frames = traceback.extract_tb(exc.__traceback__)
        record = result("error", {}, describe(exc))
        record["raised_at"] = f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else None
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(path)
    sys.stdout.flush()
    sys.stderr.flush()


def run_check(check, ctx, timeout: float, log_path: Path, start_method: str) -> dict:
    """Run one check in a child process for at most `timeout` seconds; its record."""
    path = ctx.out / "checks" / f"{check.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.partial = path.with_suffix(".partial.json")
    proc = multiprocessing.get_context(start_method).Process(target=run_child, args=(check, ctx, path, log_path))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the check's own group: its torchrun, compilers, workers
        except ProcessLookupError:  # its group not made yet
            proc.kill()
        proc.join()
        if not ctx.partial.is_file():
            return result("error", {}, f"timed out after {timeout:.0f} s (its budget)")
        so_far = json.loads(ctx.partial.read_text())
        return result("error", so_far, f"timed out after {timeout:.0f} s (its budget); figures: what it had measured")
    if path.is_file():
        return json.loads(path.read_text())
    return result("error", {}, f"the check's process died with exit code {proc.exitcode} and left no record")


def machine() -> dict:
    """What ran it, read without touching CUDA (the parent must stay fork-safe)."""
    import torch

    def version(name: str) -> str | None:
        from importlib import metadata

        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    def read(*cmd: str) -> str:
        """A command's output, "" where the program is missing or fails (no .git in a copied tree)."""
        if shutil.which(cmd[0]) is None:
            return ""
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    smi = read("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")
    return {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpus": [line.strip() for line in smi.splitlines() if line.strip()],
        "cpu_count": os.cpu_count(),
        "packages": {n: version(n) for n in ("accelerate", "deepspeed", "torchmetrics", "webdataset", "omegaconf")},
        "commit": read("git", "-C", str(REPO), "rev-parse", "HEAD") or None,
    }


def write_report(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same checks at toy sizes on the CPU")
    parser.add_argument("--only", default="", help="comma-separated check names (default: all)")
    parser.add_argument("--budget", type=float, default=0, help="seconds for all checks (default: 440 GPU, 240 dry)")
    parser.add_argument("--wheels", default=str(REPO / ".whl"), help="the wheels to install first")
    parser.add_argument("--site", default=str(Path(tempfile.gettempdir()) / "bigtrain-site"))
    parser.add_argument("--no-install", action="store_true", help="use the installed packages as they are")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is required where $OUT is not set")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: exists and is not a folder")
    if (out / "accept.json").exists():
        parser.error(f"--out {out}: holds a previous run's accept.json; give an empty or new folder")
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {c.name for c in CHECKS})
    if unknown:
        parser.error(f"--only: no check named {', '.join(unknown)}; the checks: {', '.join(c.name for c in CHECKS)}")
    checks = [c for c in CHECKS if not wanted or c.name in wanted]
    out.mkdir(parents=True, exist_ok=True)
    log_path, json_path = out / "accept.log", out / "accept.json"
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.monotonic()

    with open(log_path, "a") as log:
        log.write(f"== bigtrain GPU acceptance ({mode}), {started.isoformat()}\n")
        if args.cpu_dry_run or args.no_install:
            setup = result("skip", {}, "uses this machine's environment (--cpu-dry-run or --no-install)")
        else:
            setup = install(Path(args.wheels), Path(args.site), log)
    if "site" in setup["figures"]:
        sys.path[:0] = [str(REPO), args.site]  # this checkout first, then what was installed
    # children started by a check (torchrun, the console script) import this checkout, then the installed wheels
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), args.site, os.environ.get("PYTHONPATH")) if p)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without a CUDA context: fork-safe
    if args.cpu_dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run's point: the CPU forms, also on a GPU machine
    broken = {}  # a module that does not import (a wheel missing): its checks are recorded as errors
    for module in sorted({module_of(c.fn) for c in checks}):  # imported once, here; every fork inherits them
        try:
            importlib.import_module(module)
        except Exception as exc:
            traceback.print_exc()
            broken[module] = f"{module} does not import: {describe(exc)}"
    import torch

    # a CUDA context in this process would be unusable in forked children: start fresh interpreters instead
    start_method = "spawn" if torch.cuda.is_initialized() else "fork"
    budget = args.budget or RUN_BUDGET_S["cpu" if args.cpu_dry_run else "gpu"]
    report = {
        "schema": SCHEMA,
        "mode": mode,
        "started": started.isoformat(),
        "budget_s": budget,
        "machine": machine(),
        "install": setup,
        "start_method": start_method,
        "checks": [],
    }
    write_report(json_path, report)
    deadline = time.monotonic() + budget
    with tempfile.TemporaryDirectory(prefix="bigtrain-accept-") as tmp:
        for check in checks:
            ctx = Ctx(dry=args.cpu_dry_run, out=out, tmp=Path(tmp) / check.name)
            ctx.tmp.mkdir(parents=True)
            left = deadline - time.monotonic()
            cap = check.budget(ctx)
            check_start = time.monotonic()
            if module_of(check.fn) in broken:
                record = result("error", {}, broken[module_of(check.fn)])
            elif left < MIN_START_S:
                record = result("skip", {}, f"not run: the run's budget of {budget:.0f} s was spent")
            else:
                with open(log_path, "a") as log:
                    log.write(f"\n== {check.name} (budget {min(cap, left):.0f} s)\n")
                record = run_check(check, ctx, min(cap, left), log_path, start_method)
            entry = {
                "name": check.name,
                "claim": check.claim,
                **record,
                "seconds": round(time.monotonic() - check_start, 1),
                "budget_s": round(min(cap, max(left, 0)), 1),
            }
            report["checks"].append(entry)
            write_report(json_path, report)
            print(f"{check.name:32s} {entry['status']:5s} {entry['seconds']:7.1f} s  {entry.get('reason', '')}")
            sys.stdout.flush()
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["summary"] = {s: sum(c["status"] == s for c in report["checks"]) for s in STATUSES}
    write_report(json_path, report)
    print(json.dumps({"json": str(json_path), "log": str(log_path), **report["summary"], "wall_s": report["wall_s"]}))
    return 1 if report["summary"]["fail"] or report["summary"]["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
