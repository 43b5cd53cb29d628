"""The GPU acceptance checks of training itself: fp16 loss scaling per player (an overflow of D at a
chosen step), bf16, an exact resume on a process group, and host syncs per iteration. Each drives
bigtrain's Trainer on a BigGAN (configs/biggan_imagenet128.yaml at the size given) built by
bench/biggan.py's overrides, on random images. See bench/gpu/README.md for what each records.

Run directly only under torchrun, for the two-process resume:
    python -m torch.distributed.run --nproc_per_node 2 bench/gpu/checks_train.py RECORD.json TMP_DIR
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import traceback
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import biggan  # noqa: E402
from bench.gpu.common import Ctx, Skip, result  # noqa: E402
from bigtrain.engine.loop import Trainer  # noqa: E402
from bigtrain.families import load_config  # noqa: E402
from tests.conftest import write_images_npz  # noqa: E402

NO_DEEPSPEED_ON_CPU = {  # why the dry run leaves DeepSpeed out, by precision
    "fp16": "needs CUDA: DeepSpeed refuses fp16 on a CPU without AVX512-FP16/AMX",
    "bf16": "needs CUDA here: on a CPU DeepSpeed compiles a C++ op at its first start (minutes) and would double "
    "the dry run; the check's logic is bf16_accelerate's, which runs",
}
RESUME_TOLERANCE = 1e-3  # Adam moves a weight by up to lr (4e-4 here) per step whatever its gradient's size


def biggan_run(ctx: Ctx, name: str, iters: int, *, micro: int, precision: str = "fp32", backend: str = "accelerate",
               res: int | None = None, width: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """Overrides of a BigGAN run logging every iteration (bench/biggan.py's), `iters` iterations of
    one round, ending with a checkpoint; on the GPU 64 px ch 32, dry 32 px ch 4 without attention."""
    argv = ["--resolution", str(res or ctx.size(64, 32)), "--width", str(width or ctx.size(32, 4)),
            "--micro-batch", str(micro), "--precision", precision, "--backend", backend, "--zero-stage", "2",
            "--classes", "10", "--intervals", str(iters)] + (["--attention", "none"] if ctx.dry else [])  # fmt: skip
    args = biggan.parse_args(argv)
    data = ctx.tmp / f"data{args.resolution}-rank{os.environ.get('RANK', '0')}.npz"  # torchrun: one per rank
    if not data.is_file():
        write_images_npz(data, n=max(32, 2 * micro), res=args.resolution, channels=3, classes=10, layout="nhwc")
    return [*biggan.overrides(args, world(), data, ctx.tmp / "runs", 1, iters), f"run.name={name}", *extra]


def world() -> int:
    """The processes of this run: torchrun's WORLD_SIZE (a group of one sets it too), else 1."""
    return int(os.environ.get("WORLD_SIZE", 1))


def losses(run_dir: Path) -> list[dict]:
    """Per logged step, its `loss/*` values."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("loss/")}} for r in rows]


def all_finite(rows: list[dict]) -> bool:
    return all(math.isfinite(v) for r in rows for k, v in r.items() if k != "step")


def loss_scale(player) -> float | None:
    """The player's current fp16 loss scale: its GradScaler's, or its DeepSpeed optimizer's."""
    if player.scaler is not None:
        return float(player.scaler.get_scale())
    opt = getattr(player.engine, "optimizer", None)
    scale = getattr(opt, "cur_scale", None) or getattr(opt, "loss_scale", None)
    return float(scale) if scale is not None else None


def observe_steps(trainer: Trainer) -> list[dict]:
    """Wraps the backend's step to record, per player step: the iteration, whether it was skipped, the
    loss scale before and after and whether the weights moved."""
    records, step = [], trainer.backend.step

    def recorded(player, *args, **kwargs):
        before = [p.detach().clone() for p in player.net.parameters()]
        scale = loss_scale(player)
        skipped = step(player, *args, **kwargs)
        records.append({
            "step": trainer.counters.step, "player": player.name,
            "skipped": None if skipped is None else bool(float(skipped)),
            "scale_before": scale, "scale_after": loss_scale(player),
            "weights_moved": any(not torch.equal(a, b) for a, b in zip(before, player.net.parameters())),
        })  # fmt: skip
        return skipped

    trainer.backend.step = recorded
    return records


def inject_overflow(trainer: Trainer, records: list[dict]) -> dict:
    """A hook that multiplies one of D's gradients by inf at the first iteration after one where G and D
    both stepped (a fresh fp16 scale of 2^16 overflows for a few iterations on its own); `["at"]` says
    which iteration it chose, None while none."""
    chosen = {"at": None}

    def hook(grad: torch.Tensor) -> torch.Tensor:
        step = trainer.counters.step
        if chosen["at"] is None and step > 0:
            last = [r for r in records if r["step"] == step - 1]
            if len(last) == 2 and not any(r["skipped"] for r in last):
                chosen["at"] = step
        return grad * float("inf") if chosen["at"] == step else grad

    next(p for p in trainer.players["D"].net.parameters() if p.requires_grad).register_hook(hook)
    return chosen


def precision_check(backend: str, precision: str):
    """fp16: D's gradients overflow at one chosen iteration (`inject_overflow`); only D's step is
    skipped there, D's scale halves, G steps. bf16: every loss finite, no step skipped."""

    def check(ctx: Ctx) -> dict:
        if backend == "deepspeed" and ctx.dry:
            raise Skip(NO_DEEPSPEED_ON_CPU[precision])
        # fp16: room for a fresh 2^16 scale to halve down to where neither player overflows on its own
        iters = ctx.size(24, 9) if precision == "fp16" else ctx.size(8, 3)
        over = biggan_run(ctx, f"{precision}-{backend}", iters, micro=ctx.size(16, 2), precision=precision,
                          backend=backend)  # fmt: skip
        trainer = Trainer(load_config(biggan.CONFIG, over))
        records = observe_steps(trainer)
        chosen = inject_overflow(trainer, records) if precision == "fp16" else {"at": None}
        trainer.train()
        trainer.release()
        rows = losses(trainer.run_dir)
        overflow = chosen["at"]
        at = {r["player"]: r for r in records if r["step"] == overflow}
        other_skips = [r for r in records if r["skipped"] and r["step"] != overflow]
        figures = {
            "backend": backend + (" ZeRO-2" if backend == "deepspeed" else ""), "precision": precision,
            "device": str(trainer.backend.device), "iterations": iters, "steps": records,
            "losses_finite": all_finite(rows), "last_losses": rows[-1] if rows else None,
        }  # fmt: skip
        problems = [] if figures["losses_finite"] else ["a logged loss is not finite"]
        if precision == "fp16":
            figures["overflow_at_step"] = overflow
            d, g = at.get("D"), at.get("G")
            if overflow is None:
                problems.append(f"the loss scales never settled: G or D skipped every step of {iters}")
            elif d is None or g is None:
                problems.append(f"no D and G step recorded at step {overflow}")
            else:
                if not (d["skipped"] and not d["weights_moved"]):
                    problems.append("D's step was not skipped at the overflow")
                if not (d["scale_before"] and d["scale_after"] == d["scale_before"] / 2):
                    problems.append(f"D's scale went {d['scale_before']} -> {d['scale_after']}, not halved")
                if g["skipped"] or not g["weights_moved"]:
                    problems.append("G did not step at D's overflow")
                g_before = next(r for r in records if r["step"] == overflow - 1 and r["player"] == "G")["scale_after"]
                if not g_before == g["scale_before"] == g["scale_after"]:  # a scaler shared with D would halve
                    problems.append(f"G's scale went {g_before} -> {g['scale_after']} at D's overflow, not kept")
            figures["natural_skips"] = len(other_skips)  # a fresh scaler's first overflows are normal
        elif other_skips:
            problems.append(f"{len(other_skips)} step(s) skipped")
        return result("fail" if problems else "pass", figures, "; ".join(problems) or None)

    return check


def cuda_device(ctx: Ctx) -> dict:
    """The device, its CUDA, NCCL and bf16, and DeepSpeed's view of it (the carried wheel imports)."""
    if ctx.dry:
        raise Skip("needs CUDA: the dry run hides every GPU")
    if not torch.cuda.is_available():
        return result("fail", {"torch_cuda": torch.version.cuda}, "torch sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    figures = {
        "name": props.name, "capability": f"{props.major}.{props.minor}",
        "memory_gb": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(), "torch_cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported(),
        "nccl": str(torch.cuda.nccl.version()), "cudnn": torch.backends.cudnn.version(),
    }  # fmt: skip
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    figures["deepspeed"] = deepspeed.__version__
    figures["deepspeed_accelerator"] = get_accelerator().device_name()
    ok = figures["deepspeed_accelerator"] == "cuda"
    return result("pass" if ok else "fail", figures, None if ok else "DeepSpeed does not see CUDA")


fp16_accelerate = precision_check("accelerate", "fp16")
fp16_deepspeed_zero2 = precision_check("deepspeed", "fp16")
bf16_accelerate = precision_check("accelerate", "bf16")
bf16_deepspeed_zero2 = precision_check("deepspeed", "bf16")


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every player's weights and optimizer state and every EMA copy, on the CPU, by name."""
    out = {}

    def add(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = value.detach().cpu()
        elif isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                add(f"{prefix}.{i}", v)

    for name, player in trainer.players.items():
        with trainer.backend.full_parameters(player) as net:
            add(name, net.state_dict())
        if player.scaler is not None or not hasattr(player.engine, "save_checkpoint"):
            add(f"{name}.optimizer", player.optimizer.state_dict()["state"])
    for name, ema in trainer.emas.items():
        add(f"{name}_ema", ema.module.state_dict())
    return out


def group_of_one() -> None:
    """A process group of this one process (NCCL on CUDA, gloo on a CPU), as torchrun would set it up."""
    if "WORLD_SIZE" in os.environ:
        return
    if not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "1"  # Accelerate's gloo group (else it starts a group of no backend)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def resume_exact(ctx: Ctx) -> dict:
    """K + K iterations against K, a checkpoint, a new Trainer resuming to 2K: the same weights,
    optimizer states, EMA and logged losses, bit for bit under torch.use_deterministic_algorithms."""
    group_of_one()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode needs it
    torch.backends.cudnn.benchmark = False
    k, micro = ctx.size(4, 2), ctx.size(16, 2)
    runs, starts = {}, {}

    def train(name: str, iters: int, resume: bool) -> Trainer:
        extra = ("model.g.cross_replica=true", f"checkpoint.every_kimg={k * micro * world() / 1000}")
        extra += ("train.resume=auto",) if resume else ()
        trainer = Trainer(load_config(biggan.CONFIG, biggan_run(ctx, name, iters, micro=micro, extra=extra)))
        starts[name] = trainer.counters.step
        trainer.train()
        trainer.release()
        return trainer

    deterministic, warned = True, set()
    try:
        torch.use_deterministic_algorithms(True)
        runs["full"] = train("full", 2 * k, False)
    except RuntimeError as exc:  # an op without a deterministic implementation: run again, to a tolerance
        if "deterministic" not in str(exc):
            raise
        deterministic = False
        warned.add(str(exc).splitlines()[0])
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs["full"] = train("full-warn-only", 2 * k, False)  # a fresh folder: the first one is half-written
        warned |= {str(w.message).splitlines()[0] for w in caught if "deterministic" in str(w.message)}
    train("resumed", k, False)
    runs["resumed"] = train("resumed", 2 * k, True)
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return result("pass", {"rank": dist.get_rank()})
    a, b = snapshot(runs["full"]), snapshot(runs["resumed"])
    diff = {n: (a[n].double() - b[n].double()).abs().max().item() if a[n].numel() else 0.0
            for n in a if n in b and a[n].is_floating_point()}  # fmt: skip
    unequal = sorted(n for n in a if n not in b or not torch.equal(a[n], b[n]))
    la, lb = losses(runs["full"].run_dir), losses(runs["resumed"].run_dir)
    backend = runs["full"].backend
    figures = {
        "device": str(backend.device),
        "process_group": dist.get_backend() if dist.is_initialized() else None,
        "processes": backend.world_size,
        "cross_replica_bn": "model.g.cross_replica=true: " + (
            "a sum over the processes" if backend.world_size > 1 else "one process: plain batch norm"),
        "iterations": f"{2 * k} straight vs {k} + resume + {k}, micro-batch {micro} per process",
        "deterministic_algorithms": deterministic, "nondeterministic_ops": sorted(warned),
        "tensors_compared": len(a), "tensors_unequal": len(unequal), "unequal_first": unequal[:10],
        "max_abs_diff": max(diff.values(), default=0.0), "losses_equal": la == lb,
        "resumed_at_step": starts["resumed"],
    }  # fmt: skip
    if starts["resumed"] != k:
        return result("fail", figures, f"the second run of 'resumed' started at step {starts['resumed']}, not {k}")
    exact = not unequal and la == lb
    if exact:
        return result("pass", figures)
    if not deterministic and figures["max_abs_diff"] <= RESUME_TOLERANCE and set(a) == set(b):
        figures["tolerance"] = RESUME_TOLERANCE
        return result("pass", figures, f"not bit for bit (nondeterministic ops), within {RESUME_TOLERANCE}")
    return result("fail", figures, f"{len(unequal)} tensor(s) differ, max |diff| {figures['max_abs_diff']:.3g}")


def resume_two_processes(ctx: Ctx) -> dict:
    """The same resume on two processes (NCCL), where the machine has two GPUs: torchrun runs this file."""
    count = 0 if ctx.dry else torch.cuda.device_count()
    if count < 2:
        raise Skip(f"needs 2 CUDA devices; this machine has {count}")
    import subprocess

    record = ctx.tmp / "record.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, str(record), str(ctx.tmp)]
    proc = subprocess.run(cmd)
    if not record.is_file():
        return result("error", {}, f"torchrun exited with {proc.returncode} and left no record")
    return json.loads(record.read_text())


class SyncWatch:
    """Inside `with`: torch reports every host-device sync (`set_mode("warn")`, by default
    torch.cuda.set_sync_debug_mode), and each report is counted at the innermost frame of bigtrain's
    code on the stack, else the innermost caller (`places`: "file:line (function)" -> count). Other
    warnings pass through."""

    MESSAGE = "synchroniz"  # torch: "called a synchronizing CUDA operation"

    def __init__(self, set_mode=None):
        self.places: dict[str, int] = {}
        self.set_mode = set_mode or torch.cuda.set_sync_debug_mode
        self._catch = None

    def note(self, message, category, filename, lineno, file=None, line=None) -> None:
        if self.MESSAGE not in str(message):
            return self._shown(message, category, filename, lineno, file, line)
        stack = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith("warnings.py")]
        ours = [f for f in stack if f.filename.startswith(str(REPO / "bigtrain"))] or stack
        where = f"{os.path.relpath(ours[-1].filename, REPO)}:{ours[-1].lineno} ({ours[-1].name})"
        self.places[where] = self.places.get(where, 0) + 1

    def __enter__(self) -> "SyncWatch":
        self._catch = warnings.catch_warnings()  # restores the filters and showwarning on exit
        self._catch.__enter__()
        warnings.simplefilter("always")
        self._shown, warnings.showwarning = warnings.showwarning, self.note
        self.set_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        self.set_mode("default")
        self._catch.__exit__(*exc)


def host_syncs(ctx: Ctx) -> dict:
    """Host-device syncs inside 20 iterations of BigGAN-128 (ch 96, bf16) with prefetch and fused
    Adam, after warm-up, counted by a SyncWatch: zero, or where they are. The dry run drives the same
    harness with no sync mode to set (a CPU has none)."""
    warm, counted = ctx.size(3, 1), ctx.size(20, 2)
    extra = ("data.prefetch=true", "optim.g.fused=true", "optim.d.fused=true", "log.every_kimg=1000000",
             "log.samples_every_kimg=1000000", "checkpoint.every_kimg=1000000")  # fmt: skip
    over = biggan_run(ctx, "syncs", warm + counted + 1, micro=ctx.size(32, 2), precision=ctx.size("bf16", "fp32"),
                      res=ctx.size(128, 32), width=ctx.size(96, 4), extra=extra)  # fmt: skip
    trainer = Trainer(load_config(biggan.CONFIG, over))
    watch = SyncWatch(set_mode=(lambda mode: None) if ctx.dry else None)
    calls, watched_calls = [0], [0]
    iteration = trainer.iteration

    def watched(tracker) -> None:
        calls[0] += 1
        if not warm < calls[0] <= warm + counted:
            return iteration(tracker)
        if not ctx.dry:
            torch.cuda.synchronize()  # what earlier iterations queued is no sync of this one
        watched_calls[0] += 1
        with watch:
            iteration(tracker)

    trainer.iteration = watched
    trainer.train()
    trainer.release()
    figures = {"iterations_counted": watched_calls[0], "after_warmup": warm, "iterations_run": calls[0],
               "micro_batch": ctx.size(32, 2), "fused_adam": True, "prefetch": True}  # fmt: skip
    if ctx.dry:
        return result("skip", figures, "needs CUDA: torch.cuda.set_sync_debug_mode has no CPU form; the harness "
                      f"ran {calls[0]} iterations of the Trainer here, {watched_calls[0]} of them watched")  # fmt: skip
    syncs = sum(watch.places.values())
    figures.update(syncs=syncs, syncs_per_iteration=syncs / counted, places=watch.places)
    return result("pass" if not syncs else "fail", figures, f"{syncs} sync(s)" if syncs else None)


if __name__ == "__main__":  # torchrun: the two-process resume; rank 0 writes the record
    record_path, tmp = Path(sys.argv[1]), Path(sys.argv[2])
    record = resume_exact(Ctx(dry=False, out=tmp, tmp=tmp))
    if int(os.environ.get("RANK", 0)) == 0:
        record_path.write_text(json.dumps(record))
