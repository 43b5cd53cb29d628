"""Run a golden case through the CLI and reduce it to what is compared: per-step losses from
metrics.jsonl and checksums of the final weights (through `bigtrain export`).

Bit for bit holds only on the kind of machine a case was recorded on: the same float32 program
gives last-bit differences on another CPU (seen: an Intel Xeon with AVX-512/AMX against the AMD
EPYC of the recordings, e.g. a D loss of -0.0914875194 against the recorded -0.0914875120, from
the order of reductions in the matmul/convolution kernels, which the ATEN/oneDNN/MKL ISA
switches do not pin). So a recording names its machine (`machine()`); on that machine everything
must be equal exactly; elsewhere floats must agree to RTOL and every weight tensor's sum and
absolute sum to RTOL of its absolute sum. RTOL is about 1000 times the first cross-machine
differences seen (1.1e-7 to 1.4e-7 relative), room for their growth over a case's few steps.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import socket
import sys
from pathlib import Path

import torch

from tests.conftest import run_cli
from tests.golden.cases import DATA, RUNS, Case, data_fingerprint

METRIC_PREFIXES = ("loss/", "D/", "began/")
ENV = {"ACCELERATE_USE_CPU": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
TIMEOUT = 600
RTOL = 1e-4


def machine() -> dict:
    """What decides the last bits of float32 results here: torch, its CPU kernel level, the
    CPU's vendor/family/model and its AVX-512/AMX flags."""
    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model", "flags") and key not in cpu:
                cpu[key] = value.strip()
            if not line.strip() and cpu:
                break
    except OSError:
        pass
    flags = sorted(f for f in cpu.pop("flags", "").split() if f.startswith(("avx512", "amx", "avx2", "fma")))
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "arch": platform.machine(), **cpu, "flags": " ".join(flags)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(nproc: int) -> list[str] | None:
    """None: plain `python -m bigtrain`; else torchrun as tests/dist does it."""
    if nproc == 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]


def _fill(args: list[str], data: Path, runs: Path) -> list[str]:
    return [a.replace(DATA, str(data)).replace(RUNS, str(runs)) for a in args]


def _cli(args: list[str], nproc: int = 1) -> None:
    proc = run_cli(*args, env=ENV, timeout=TIMEOUT, launcher=launcher(nproc))
    if proc.returncode != 0:
        raise RuntimeError(f"bigtrain {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")


def run_case(case: Case, data: Path, runs: Path) -> dict:
    """Train `case` (every stage), export its final checkpoint and return the record to compare."""
    stages = case.stages()
    for args in stages:
        _cli(_fill(args, data, runs), case.nproc)
    run_dir = runs / case.name
    export_dir = run_dir / "golden-export"
    _cli(["export", "--run", str(run_dir), "--out", str(export_dir)])
    return {
        "case": case.name,
        "cell": case.cell,
        "nproc": case.nproc,
        "backend": case.backend,
        "launcher": "python" if case.nproc == 1 else f"torch.distributed.run --nproc_per_node {case.nproc}",
        "stages": stages,
        "machine": machine(),
        "data": data_fingerprint(data),
        "metrics": read_metrics(run_dir / "metrics.jsonl"),
        **export_checksums(export_dir / "trainer.pt"),
    }


def read_metrics(path: Path) -> list[dict]:
    """step, kimg and the loss/D/began scalars of every metrics.jsonl record, in order."""
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        rows.append({"step": r["step"], "kimg": r["kimg"], **{k: v for k, v in sorted(r.items()) if k.startswith(METRIC_PREFIXES)}})
    return rows


def tensor_checksum(t: torch.Tensor) -> dict:
    """sha256 of the bytes (compared on the recording's machine) and float64 sum and absolute sum
    (compared to RTOL elsewhere)."""
    t = t.detach().cpu().contiguous()
    d = t.double()
    return {"sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(), "dtype": str(t.dtype), "shape": list(t.shape),
            "sum": d.sum().item(), "abs_sum": d.abs().sum().item()}


def export_checksums(path: Path) -> dict:
    """The one place that knows the layout of an export's trainer.pt (adapt it here if that
    layout changes): checksums of every player's net and of G_ema, the counters, and the
    objective's state (BEGAN's k)."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    nets = {name: p["net"] for name, p in state["players"].items()}
    if state.get("G_ema") is not None:
        nets["G_ema"] = state["G_ema"]
    tensors = {f"{net}/{key}": tensor_checksum(value) for net, sd in sorted(nets.items()) for key, value in sorted(sd.items())}
    # the recipe's global state (BEGAN's k); checkpoints before recipes called it "objective"
    recipe_state = state.get("recipe", state.get("objective")) or {}
    objective = {k: tensor_checksum(v) if torch.is_tensor(v) else v for k, v in sorted(recipe_state.items())}
    return {"counters": dict(state["counters"]), "objective": objective, "tensors": tensors}


def _same(a, b, exact: bool = True) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        if not exact:
            return abs(a - b) <= RTOL * max(abs(a), abs(b)) + 1e-12
    return type(a) is type(b) and a == b


def _same_tensor(g: dict, r: dict, exact: bool) -> bool:
    if exact or g["dtype"] != r["dtype"] or g["shape"] != r["shape"] or "abs_sum" not in g:
        return g == r
    if not g["dtype"].startswith("torch.float"):
        return g["sha256"] == r["sha256"]  # integers (BN's num_batches_tracked) stay exact
    scale = RTOL * max(g["abs_sum"], r["abs_sum"]) + 1e-12
    return abs(g["sum"] - r["sum"]) <= scale and abs(g["abs_sum"] - r["abs_sum"]) <= scale


def compare(golden: dict, result: dict) -> list[str]:
    """Every difference between a recorded and a new run, most telling first; [] = identical.
    On the recording's machine floats must be equal exactly and checksums byte for byte;
    elsewhere to RTOL (see the module's docstring)."""
    exact = golden.get("machine") == result.get("machine")
    diffs = []
    if golden["data"] != result["data"]:
        diffs.append("the tiny data differs from the recording's (make_data or make-shards changed), so nothing else can match")
    if golden["stages"] != result["stages"]:
        diffs.append(f"CLI arguments differ from the recording (cases.py changed?): {golden['stages']} vs {result['stages']}")
    g_rows, r_rows = golden["metrics"], result["metrics"]
    for i, (g, r) in enumerate(zip(g_rows, r_rows)):
        keys = sorted(set(g) | set(r), key=lambda k: (k not in ("step", "kimg"), k))
        bad = [k for k in keys if not _same(g.get(k), r.get(k), exact)]
        if bad:
            k = bad[0]
            diffs.append(f"metrics record {i} (step {g.get('step')}): first differing key {k!r}: recorded {g.get(k)!r}, now {r.get(k)!r}" + (f" (and {len(bad) - 1} more keys)" if len(bad) > 1 else ""))
            break
    if len(g_rows) != len(r_rows):
        diffs.append(f"metrics.jsonl has {len(r_rows)} records, recorded {len(g_rows)}")
    if golden["counters"] != result["counters"]:
        diffs.append(f"counters: recorded {golden['counters']}, now {result['counters']}")
    g_o, r_o = golden["objective"], result["objective"]
    if set(g_o) != set(r_o) or not all(_same_tensor(v, r_o[k], exact) if isinstance(v, dict) and isinstance(r_o[k], dict) else _same(v, r_o[k], exact) for k, v in g_o.items()):
        diffs.append(f"objective state: recorded {golden['objective']}, now {result['objective']}")
    g_t, r_t = golden["tensors"], result["tensors"]
    missing, extra = sorted(set(g_t) - set(r_t)), sorted(set(r_t) - set(g_t))
    if missing:
        diffs.append(f"tensors missing from the export: {missing}")
    if extra:
        diffs.append(f"tensors not in the recording: {extra}")
    changed = [k for k in g_t if k in r_t and not _same_tensor(g_t[k], r_t[k], exact)]
    if changed:
        diffs.append(f"{len(changed)} of {len(g_t)} tensor checksums differ{'' if exact else f' beyond rtol {RTOL} (recorded on another machine)'}: {changed}")
    return diffs


def metric_deviation(golden: dict, result: dict) -> float:
    """The largest relative difference of any per-step scalar between two runs (inf when their
    records or keys do not line up): how far a re-recording moves the numbers."""
    g_rows, r_rows = golden["metrics"], result["metrics"]
    if len(g_rows) != len(r_rows) or any(set(g) != set(r) for g, r in zip(g_rows, r_rows)):
        return math.inf
    worst = 0.0
    for g, r in zip(g_rows, r_rows):
        for k, a in g.items():
            b = r[k]
            if isinstance(a, float) and isinstance(b, float) and not (math.isnan(a) and math.isnan(b)):
                worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-12))
            elif a != b:
                return math.inf
    return worst


def golden_path(folder: Path, case: Case) -> Path:
    return folder / f"{case.name}.json"


def dumps(record: dict) -> str:
    """JSON with one line per metrics record, tensor and stage, so diffs of a re-recording read
    well. Floats are written as repr, which reads back to the same float."""
    def block(value, opening: str, closing: str, items) -> str:
        return opening + "\n" + ",\n".join(f"  {item}" for item in items) + f"\n {closing}" if value else json.dumps(value)

    lines = []
    for key, value in record.items():
        if isinstance(value, list):
            text = block(value, "[", "]", (json.dumps(v) for v in value))
        elif isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            text = block(value, "{", "}", (f"{json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()))
        else:
            text = json.dumps(value)
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"

