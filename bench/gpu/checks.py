"""The checks of the GPU acceptance run, in the order they run (cheap and fundamental first, so a run
cut short still holds them), each with its time budget on the GPU and in the CPU dry run (seconds;
bench/gpu/README.md says how the GPU budgets were estimated). Each names its function as
"module:function" of bench/gpu/, imported when the runner preloads them (after its install: they
import torch and bigtrain), so that this list is read before anything is installed."""

from __future__ import annotations

from bench.gpu.common import Check

CHECKS = [
    Check("cuda_device", "the GPU, its CUDA/NCCL/bf16, and DeepSpeed on CUDA", "checks_train:cuda_device", 20, 5),
    Check("fp16_accelerate", "fp16 under Accelerate: D's overflow at a chosen step skips only D's step (its scale "
          "halves), G steps", "checks_train:fp16_accelerate", 30, 40),
    Check("fp16_deepspeed_zero2", "fp16 under DeepSpeed ZeRO-2: the same, with DeepSpeed's loss scaler",
          "checks_train:fp16_deepspeed_zero2", 45, 5),
    Check("bf16_accelerate", "bf16 under Accelerate trains with finite losses, no step skipped",
          "checks_train:bf16_accelerate", 25, 40),
    Check("bf16_deepspeed_zero2", "bf16 under DeepSpeed ZeRO-2 trains with finite losses, no step skipped",
          "checks_train:bf16_deepspeed_zero2", 40, 5),
    Check("resume_exact", "on a process group of one (NCCL), K + resume + K iterations equal 2K bit for bit "
          "under deterministic algorithms", "checks_train:resume_exact", 40, 60),
    Check("resume_exact_two_processes", "the same on two processes (two GPUs)",
          "checks_train:resume_two_processes", 60, 5),
    Check("host_syncs", "no host-device sync in 20 iterations of BigGAN-128 with prefetch and fused Adam",
          "checks_train:host_syncs", 40, 40),
    Check("eval_inception", "Inception features img/s on CUDA; FID of the same images on CUDA = CPU's to 1e-3",
          "checks_speed:eval_inception", 45, 40),
    Check("throughput_cyclegan", "CycleGAN 256 px batch 1 img/s and peak memory",
          "checks_speed:throughput_cyclegan", 25, 40),
    Check("throughput_stylegan2", "StyleGAN2 paper256 s/kimg against the published 8 x V100 figure",
          "checks_speed:throughput_stylegan2", 45, 40),
    Check("throughput_progan", "ProGAN img/s per resolution 4-1024 and the paper schedule's implied time",
          "checks_speed:throughput_progan", 75, 40),
    Check("throughput_biggan", "BigGAN-128 ch96 img/s and peak memory at micro-batch 32/64/128, bf16 and fp32; "
          "BigGAN-PyTorch's 150k iterations at those rates", "checks_speed:throughput_biggan", 110, 60),
    Check("biggan_layouts", "BigGAN-128 with channels-last and with torch.compile against eager",
          "checks_speed:biggan_layouts", 150, 40),
]  # fmt: skip
