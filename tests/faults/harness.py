"""Kill a training run (SIGKILL, as a preempted or crashed node does) at chosen points, resume
it, and compare with an uninterrupted run: per-step losses and final weights, bit for bit.
Used by tests/faults and bench/faults.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
# `python -c` prelude: the Nth checkpoint write (1-based) pauses after its first file, so a
# kill lands inside it; it says so on stderr
SLOW_SAVE = """
import sys, time
from bigtrain.engine import checkpoint
N = int(sys.argv[1])
calls = [0]
save = checkpoint.torch.save
def slow(obj, f, *a, **k):
    save(obj, f, *a, **k)
    if ".tmp-step-" in str(f):
        calls[0] += 1
        if calls[0] == N:
            print("INSIDE-CHECKPOINT-WRITE", file=sys.stderr, flush=True)
            time.sleep(60)
checkpoint.torch.save = slow
from bigtrain.cli import main
sys.exit(main(sys.argv[2:]))
"""


def command(config: Path, overrides: list[str], launcher: list[str] | None = None, prelude: tuple[str, ...] = ()) -> list[str]:
    head = [*launcher, "--no-python", sys.executable] if launcher and prelude else [*(launcher or [sys.executable])]
    if prelude:
        return [*head, "-c", prelude[0], *prelude[1:], "train", str(config), *overrides]
    return [*head, "-m", "bigtrain", "train", str(config), *overrides]


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def losses(run_dir: Path) -> list[tuple]:
    return [(r["step"], *sorted((k, v) for k, v in r.items() if k.startswith("loss/"))) for r in rows(run_dir) if any(k.startswith("loss/") for k in r)]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its ranks in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank at once, as a lost node."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_and_kill_at_step(cmd: list[str], run_dir: Path, step: int, timeout: float = 300) -> bool:
    """Start `cmd`, SIGKILL it once metrics.jsonl reaches `step`; False if it finished first."""
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        r = rows(run_dir)
        if r and r[-1].get("step", 0) >= step:
            _kill(proc)
            return True
        time.sleep(0.02)
    if proc.poll() is None:
        _kill(proc)
        raise TimeoutError(f"{cmd}: no step {step} in {timeout} s")
    return False


def kill_inside_checkpoint_write(cmd: list[str], timeout: float = 300) -> None:
    """Start a SLOW_SAVE command; SIGKILL it while it writes the checkpoint it pauses in."""
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        if "INSIDE-CHECKPOINT-WRITE" in line or time.monotonic() > deadline:
            break
    _kill(proc)


def finish(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout)


def final_weights(run_dir: Path) -> dict:
    """Every player's weights and every EMA copy of the run's latest checkpoint (DeepSpeed's
    engine files joined by `bigtrain export`)."""
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    if not all("net" in p for p in state["players"].values()):
        out = finish([sys.executable, "-m", "bigtrain", "export", "--checkpoint", str(ckpt)])
        assert out.returncode == 0, out.stderr[-2000:]
        state = torch.load(run_dir / "export" / ckpt.name / "trainer.pt", weights_only=True)
    flat = {f"{name}/{k}": v for name, p in state["players"].items() for k, v in p["net"].items()}
    flat.update({f"{key}/{k}": v for key, sd in state.items() if key.endswith("_ema") and sd for k, v in sd.items()})
    return flat


def identical(a: Path, b: Path) -> bool:
    """Same per-step losses and the same final weights, bit for bit."""
    wa, wb = final_weights(a), final_weights(b)
    return losses(a) == losses(b) and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


HOST_READS = ("item", "__bool__", "tolist", "__float__", "__int__")


def count_host_reads(monkeypatch, run, names=HOST_READS) -> list[str]:
    """The host reads (Tensor methods `names`) and tensors built from host values (`torch.tensor`)
    that `run()` makes, in order; on a GPU each of them waits for the device."""
    reads = []
    for name in names:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1])
    monkeypatch.setattr(torch, "tensor", lambda *a, _o=torch.tensor, **k: (reads.append("torch.tensor"), _o(*a, **k))[1])
    try:
        run()
    finally:
        monkeypatch.undo()
    return reads
