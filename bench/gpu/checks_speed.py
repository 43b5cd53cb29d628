"""The GPU acceptance checks of speed and evaluation: throughput and peak memory through bigtrain's
Trainer (bench/biggan.py, bench/progan.py, bench/img2img.py, bench/stylegan2.py, run in this process
with their own options), torch.compile and channels-last, and the FID network on CUDA against the
CPU. Throughput checks have no threshold: "pass" means every run was measured. See bench/gpu/README.md.
"""

from __future__ import annotations

import copy
import gc
import math
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import biggan, img2img, progan, stylegan2  # noqa: E402
from bench import eval as bench_eval  # noqa: E402
from bench.gpu.common import Ctx, Skip, describe, result  # noqa: E402

BGP_ITERATIONS, BGP_BATCH, BGP_GPUS = 150_000, 2048, 8  # BigGAN-PyTorch's ImageNet 128 run (bench/biggan.py)
# NVlabs/stylegan2-ada-pytorch README, "Expected training time": 256x256 on one V100, --cfg=auto (batch 16,
# channel_base 16384, mapping 2 layers), sec/kimg as its log.txt reports (the range it gives)
SG2_1XV100_256_S_PER_KIMG = (21.6, 24.2)
FID_TOLERANCE = 1e-3


def release_memory() -> None:
    """Before a run: what earlier runs left (a failed one's Trainer lives in reference cycles) freed, and
    the allocator's peak restarted, so each run's peak memory is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measured(runs: dict[str, dict], extra: dict | None = None) -> dict:
    """The record of a set of runs: pass when every run measured, else error naming those that did not."""
    failed = [name for name, r in runs.items() if "error" in r]
    figures = {**(extra or {}), "runs": runs}
    return result("error" if failed else "pass", figures, f"failed: {', '.join(failed)}" if failed else None)


def biggan_runs(ctx: Ctx, variants: dict[str, list[str]]) -> dict[str, dict]:
    """bench/biggan.py's run per variant (its options), each from a fresh allocator peak; a run that
    fails is recorded with bench/biggan.py's failure record and the next one runs."""
    runs = {}
    for name, argv in variants.items():
        if argv is None:
            runs[name] = {"skipped": "needs CUDA: inductor's CPU compile takes minutes, beyond the dry run"}
            continue
        args = biggan.parse_args(argv)
        tmp = ctx.tmp / name
        tmp.mkdir(parents=True)
        release_memory()
        try:
            r = biggan.run(args, 1, tmp)
        except Exception as exc:  # e.g. out of memory at micro-batch 128 in fp32: recorded, the next runs
            traceback.print_exc()
            r = biggan.failure(args, 1, exc)
        keep = ("img_per_s", "iteration_s", "peak_mem_mb", "params", "global_batch", "error", "raised_at",
                "from_bigtrain", "channels_last", "compile", "weights_updated", "intervals")  # fmt: skip
        runs[name] = {k: r[k] for k in keep if k in r}
        ctx.progress({"runs": runs})
    return runs


def biggan_argv(ctx: Ctx, micro: int, precision: str, *flags: str) -> list[str]:
    """BigGAN-128 ch 96 on the GPU (4 intervals of 3 iterations); dry: 32 px ch 4, 2 intervals of 1."""
    iters = ctx.size(12, 2)
    return ["--resolution", str(ctx.size(128, 32)), "--width", str(ctx.size(96, 4)), "--micro-batch", str(micro),
            "--precision", precision, "--kimg", str(iters * micro / 1000), "--intervals", str(ctx.size(4, 2)),
            *(["--attention", "none"] if ctx.dry else []), *flags]  # fmt: skip


def throughput_biggan(ctx: Ctx) -> dict:
    """BigGAN-128 ch 96 at micro-batch 32/64/128 in bf16 and fp32: img/s, peak memory, and what
    BigGAN-PyTorch's 150k iterations of batch 2048 would take on 8 such GPUs at that rate."""
    micros, precisions = ctx.size((32, 64, 128), (2,)), ("bf16", "fp32")
    runs = biggan_runs(ctx, {f"mb{m}_{p}": biggan_argv(ctx, m, p) for p in precisions for m in micros})
    for r in runs.values():
        if "img_per_s" in r:
            hours = BGP_ITERATIONS * BGP_BATCH / (r["img_per_s"] * BGP_GPUS) / 3600
            r["bgp_150k_iterations_hours_on_8"] = round(hours, 1)
    return measured(runs, {"reference": biggan.REFERENCE, "implied": "150k x 2048 images / (8 x img/s): 8 GPUs "
                           "assumed to scale linearly, no evaluation pauses"})  # fmt: skip


def biggan_layouts(ctx: Ctx) -> dict:
    """BigGAN-128 ch 96, micro-batch 64, bf16: eager, channels-last, torch.compile (inductor)."""
    m = ctx.size(64, 2)
    runs = biggan_runs(ctx, {
        "eager": biggan_argv(ctx, m, "bf16"),
        "channels_last": biggan_argv(ctx, m, "bf16", "--channels-last"),
        "compile": None if ctx.dry else biggan_argv(ctx, m, "bf16", "--compile"),
    })  # fmt: skip
    base = runs["eager"].get("img_per_s")
    for r in runs.values():
        if base and "img_per_s" in r:
            r["speedup_over_eager"] = round(r["img_per_s"] / base, 3)
    return measured(runs)


def throughput_progan(ctx: Ctx) -> dict:
    """ProGAN's paper nets (fmap_base 8192, max 512) held at each resolution 4..1024, batch 16: img/s,
    peak memory, and the paper's CelebA-HQ schedule (800 + 800 kimg a level) at those rates."""
    argv = ctx.size(["--resolutions", "4,8,16,32,64,128,256,512,1024", "--kimg", "0.32", "--fmap-base", "8192",
                     "--fmap-max", "512", "--batch", "16", "--images", "32"],
                    ["--resolutions", "4,8", "--kimg", "0.04", "--fmap-base", "64", "--fmap-max", "16",
                     "--batch", "4", "--images", "8"])  # fmt: skip
    args = progan.parse_args(argv)
    data = progan.write_data(args, ctx.tmp / "d.npz")
    levels, errors = [], {}
    for res in args.resolution_list:
        release_memory()
        try:
            levels.append(progan.level(args, res, data, ctx.tmp / "runs"))
        except Exception as exc:  # recorded per level; the next level runs
            traceback.print_exc()
            errors[str(res)] = describe(exc)
        ctx.progress({"levels": levels, "errors": errors})
    figures = progan.report(args, levels)
    runs = {str(lv["resolution"]): lv for lv in levels} | {r: {"error": e} for r, e in errors.items()}
    return measured(runs, {k: v for k, v in figures.items() if k != "levels"})


def throughput_cyclegan(ctx: Ctx) -> dict:
    """CycleGAN at 256 px, batch 1, the reference's nets (ngf = ndf = 64), fp32 and bf16: img/s and
    peak memory (the dry run: fp32 only)."""
    argv = ctx.size(["--width", "64", "--resolution", "256", "--iters", "40", "--intervals", "4"],
                    ["--width", "4", "--resolution", "32", "--iters", "4", "--intervals", "2"])  # fmt: skip
    runs = {}
    for precision in ctx.size(("fp32", "bf16"), ("fp32",)):
        args = img2img.build_parser().parse_args(["--recipes", "cyclegan", "--batch", "1", "--precision", precision,
                                                  *argv])  # fmt: skip
        (ctx.tmp / precision).mkdir()
        release_memory()
        try:
            runs[f"cyclegan_{precision}"] = img2img.bench(args, "cyclegan", ctx.tmp / precision, 1)
        except Exception as exc:
            traceback.print_exc()
            runs[f"cyclegan_{precision}"] = {"error": describe(exc)}
    return measured(runs, {"reference": "junyanz/pytorch-CycleGAN-and-pix2pix: batch 1, one GPU, fp32"})


def throughput_stylegan2(ctx: Ctx) -> dict:
    """StyleGAN2 paper256 (configs/stylegan2_256.yaml: batch 64) on one GPU: s/kimg beside the reference's
    published V100 figures (one V100 at 256 px; 8 V100s for paper256, as GPU-seconds a kimg)."""
    argv = ctx.size(["--configs", "configs/stylegan2_256.yaml", "--resolution", "256", "--channel-base", "16384",
                     "--channel-max", "512", "--batch", "64", "--micro-batch", "32", "--kimg", "2.048",
                     "--intervals", "2", "--device", "cuda"],
                    ["--configs", "configs/stylegan2_digits.yaml", "--resolution", "16", "--channel-base", "256",
                     "--channel-max", "16", "--batch", "4", "--kimg", "0.016", "--intervals", "2"])  # fmt: skip
    args = stylegan2.build_parser().parse_args(argv)
    args.preset = str(REPO / args.configs)
    base = stylegan2.load_config(args.preset, [])
    data = stylegan2.write_data(ctx.tmp / "d.npz", args.resolution, base.data.channels or 3, base.model.num_classes)
    release_memory()
    try:
        run = stylegan2.bigtrain_side(args, stylegan2.overrides(args, base, data, ctx.tmp / "runs", "sg2"))
    except Exception as exc:
        traceback.print_exc()
        run = {"error": describe(exc)}
    published = {
        **stylegan2.PUBLISHED,
        "256_1xV100_cfg_auto_s_per_kimg": SG2_1XV100_256_S_PER_KIMG,
        "256_1xV100_source": "NVlabs/stylegan2-ada-pytorch README, Expected training time (--cfg=auto: batch 16, "
        "mapping 2 layers; this run is paper256: batch 64, mapping 8)",
        "paper256_8xV100_gpu_s_per_kimg": round(stylegan2.PUBLISHED["paper256_8xV100_s_per_kimg"] * 8, 2),
    }
    return measured({Path(args.configs).stem: run}, {"published": published})


def inception_net(device: torch.device):
    """The FID network with its real weights where they are on disk (no download), else seeded random
    weights, identical on every device."""
    from bigtrain.eval.inception import InceptionV3, load_inception

    try:
        return load_inception(None, device="cpu", download=False), "the TF Inception weights file"
    except Exception:
        torch.manual_seed(0)
        return InceptionV3(), "random (seeded, untrained): the weights file is not on this machine"


def features(net, images: torch.Tensor, device: torch.device, batch: int = 50) -> tuple[torch.Tensor, float]:
    """Pool features of `images` (uint8) on `device`, and the seconds they took."""
    net = net.to(device)
    out, start = [], time.perf_counter()
    for i in range(0, len(images), batch):
        out.append(net(images[i : i + batch].to(device))[0].double().cpu())
    return torch.cat(out), time.perf_counter() - start


def fid(a: torch.Tensor, b: torch.Tensor, device: str) -> float:
    from bigtrain.eval.metrics import new_fid

    metric = new_fid(a.shape[1], device)
    metric.update(a.to(device).float(), real=True)
    metric.update(b.to(device).float(), real=False)
    return float(metric.compute())


def eval_inception(ctx: Ctx) -> dict:
    """Inception feature extraction img/s on CUDA, and the FID of the same images computed on CUDA
    equal to the CPU's to 1e-3."""
    cpu = torch.device("cpu")
    net, weights = inception_net(cpu)
    n = ctx.size(256, 2)  # images per side of the FID (256: 1e-6 relative noise in the features moves it by ~4e-6)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    f_cpu, s_cpu = features(copy.deepcopy(net), images, cpu, batch=ctx.size(50, 4))
    figures = {"weights": weights, "images_per_side": n, "input": "uint8 3x32x32 (resized to 299 by the net)",
               "cpu_img_per_s": round(2 * n / s_cpu, 1)}  # fmt: skip
    if ctx.dry:
        raise_skip = f"needs CUDA: the CPU side ran ({figures['cpu_img_per_s']} img/s on {2 * n} images)"
        return result("skip", figures, raise_skip)
    if not torch.cuda.is_available():
        raise Skip("needs CUDA: torch sees no CUDA device")
    cuda = torch.device("cuda")
    figures["extract"] = bench_eval.time_extraction(copy.deepcopy(net).to(cuda), cuda, batches=20)
    figures["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    f_cuda, _ = features(copy.deepcopy(net), images, cuda)
    fid_cpu = fid(f_cpu[:n], f_cpu[n:], "cpu")
    fid_cuda = fid(f_cuda[:n], f_cuda[n:], "cuda")
    figures.update(fid_cpu=fid_cpu, fid_cuda=fid_cuda, abs_diff=abs(fid_cpu - fid_cuda),
                   fid_cuda_features_on_cpu=fid(f_cuda[:n], f_cuda[n:], "cpu"),
                   features_max_abs_diff=(f_cpu - f_cuda).abs().max().item())  # fmt: skip
    if figures["abs_diff"] > FID_TOLERANCE:  # a diagnosis for the record: is it TF32's convolutions?
        allow = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        f_full, _ = features(copy.deepcopy(net), images, cuda)
        torch.backends.cudnn.allow_tf32 = allow
        figures["fid_cuda_without_tf32"] = fid(f_full[:n], f_full[n:], "cuda")
    ok = math.isfinite(fid_cuda) and figures["abs_diff"] <= FID_TOLERANCE
    return result("pass" if ok else "fail", figures, None if ok else f"|FID cuda - cpu| = {figures['abs_diff']:.3g}")
