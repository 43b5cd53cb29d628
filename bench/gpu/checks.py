"""The checks of the GPU acceptance run, in the order they run (cheap and fundamental first, so a run
cut short still holds them), each with its time budget on the GPU and in the CPU dry run (seconds;
bench/gpu/README.md says how the GPU budgets were estimated)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu import checks_speed as speed  # noqa: E402
from bench.gpu import checks_train as train  # noqa: E402
from bench.gpu.common import Check, Ctx, Skip, result  # noqa: E402


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
        "nccl": ".".join(map(str, torch.cuda.nccl.version())), "cudnn": torch.backends.cudnn.version(),
    }  # fmt: skip
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    figures["deepspeed"] = deepspeed.__version__
    figures["deepspeed_accelerator"] = get_accelerator().device_name()
    ok = figures["deepspeed_accelerator"] == "cuda"
    return result("pass" if ok else "fail", figures, None if ok else "DeepSpeed does not see CUDA")


CHECKS = [
    Check("cuda_device", "the GPU, its CUDA/NCCL/bf16, and DeepSpeed on CUDA", cuda_device, 20, 5),
    Check("fp16_accelerate", "fp16 under Accelerate: D's overflow at a chosen step skips only D's step (its scale "
          "halves), G steps", train.precision_check("accelerate", "fp16"), 30, 40),
    Check("fp16_deepspeed_zero2", "fp16 under DeepSpeed ZeRO-2: the same, with DeepSpeed's loss scaler",
          train.precision_check("deepspeed", "fp16"), 45, 5),
    Check("bf16_accelerate", "bf16 under Accelerate trains with finite losses, no step skipped",
          train.precision_check("accelerate", "bf16"), 25, 40),
    Check("bf16_deepspeed_zero2", "bf16 under DeepSpeed ZeRO-2 trains with finite losses, no step skipped",
          train.precision_check("deepspeed", "bf16"), 40, 5),
    Check("resume_exact", "on a process group of one (NCCL), K + resume + K iterations equal 2K bit for bit "
          "under deterministic algorithms", train.resume_exact, 40, 60),
    Check("resume_exact_two_processes", "the same on two processes (two GPUs)", train.resume_two_processes, 60, 5),
    Check("host_syncs", "no host-device sync in 20 iterations of BigGAN-128 with prefetch and fused Adam",
          train.host_syncs, 40, 40),
    Check("eval_inception", "Inception features img/s on CUDA; FID of the same images on CUDA = CPU's to 1e-3",
          speed.eval_inception, 45, 40),
    Check("throughput_cyclegan", "CycleGAN 256 px batch 1 img/s and peak memory", speed.throughput_cyclegan, 25, 40),
    Check("throughput_stylegan2", "StyleGAN2 paper256 s/kimg against the published 8 x V100 figure",
          speed.throughput_stylegan2, 45, 40),
    Check("throughput_progan", "ProGAN img/s per resolution 4-1024 and the paper schedule's implied time",
          speed.throughput_progan, 60, 40),
    Check("throughput_biggan", "BigGAN-128 ch96 img/s and peak memory at micro-batch 32/64/128, bf16 and fp32; "
          "BigGAN-PyTorch's 150k iterations at those rates", speed.throughput_biggan, 110, 60),
    Check("biggan_layouts", "BigGAN-128 with channels-last and with torch.compile against eager",
          speed.biggan_layouts, 150, 40),
]  # fmt: skip
