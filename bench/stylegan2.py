"""StyleGAN2-ADA throughput and memory per preset through the real engine (bigtrain's Trainer), and,
side by side in the same run on the same CPU, the reference's own training loop on the same nets.

Per preset (a config, shrunk to a CPU size by --channel-base / --channel-max / --resolution, on random
uint8 images of its channels and classes written to a temporary npz):

- bigtrain: `Trainer(cfg).train()` for `--intervals` log intervals; img/s is bigtrain's own
  `perf/img_per_s`, the median over the intervals after the first (warm-up); s/kimg from it; peak
  memory is `perf/peak_mem_mb` (the resident set's high-water mark on a CPU, the allocator's peak on a
  GPU) and the side's process's `ru_maxrss`; the exact overrides; G / D parameter counts.
- reference: NVlabs/stylegan2-ada-pytorch's own Generator, Discriminator (training/networks.py),
  AugmentPipe 'bgc' (training/augment.py) and StyleGAN2Loss (training/loss.py), built with the same
  hyperparameters as the bigtrain run and driven as its training/training_loop.py drives them
  (phases Gmain / Greg / Dmain / Dreg with their intervals, Adam with the mb_ratio-corrected lr and
  betas, rounds of micro-batches through `loss.accumulate_gradients`, nan_to_num on the gradients,
  G_ema, the ADA adjustment every ada_interval iterations), on the CPU (its ops take their reference
  paths: nothing is compiled), for the same images, batch and micro-batch, timed over the same
  intervals the same way (img/s: median after the first; peak memory: the process's ru_maxrss).
  The driver is this script's; the reference's modules are imported from the checkout named by
  $BIGTRAIN_REF_STYLEGAN2. Its dnnlib/util.py imports `requests`: where that is not installed, put a
  folder holding a stand-in `requests.py` (an empty module will do) on $BIGTRAIN_REF_STYLEGAN2_SHIMS
  (os.pathsep-separated) or on PYTHONPATH. Unset, or not importable: "reference": {"skipped": why}.
  Its fp16 resolutions would compute in float16 on the CPU; they run in float32 here (num_fp16_res 0),
  as bigtrain's nets do on a CPU whatever num_fp16_res says.

Each side of each preset runs in its own subprocess (this script with --side), so that peak memory is
that side's alone. Prints one JSON object with both sides, the ratio bigtrain img/s / reference img/s
per preset, and the reference's published V100 figures (GPU anchors, not measurements of this run).

    python bench/stylegan2.py [--configs configs/stylegan2_digits.yaml,configs/stylegan2_cifar10.yaml] \
        [--kimg 0.32] [--intervals 5] [--batch 16] [--micro-batch 0] [--channel-base 2048] [--channel-max 128] \
        [--resolution 32] [--fixed-p P] [--threads N] [--device cpu|cuda]
    BIGTRAIN_REF_STYLEGAN2=/path/to/stylegan2-ada-pytorch [BIGTRAIN_REF_STYLEGAN2_SHIMS=/path/to/shims] \
        python bench/stylegan2.py ...

Both sides run the same number of iterations: --kimg rounded to whole iterations of --batch, split in
--intervals equal intervals (16 iterations, the lazy regularisers' common cycle, make the intervals alike;
shorter ones differ in which hold an R1 phase, and the median picks the common kind). --fixed-p P runs
both sides at a fixed augmentation probability (stylegan2.augment fixed) instead of the presets' ADA
from p = 0, where bigtrain's pipe is the identity and draws nothing while the reference's still warps.
--threads N sets torch's CPU threads on both sides (default: torch's). --device cuda trains the bigtrain
side on the GPU (the reference side is then skipped: it runs on the CPU here); the default hides any GPU
from both sides. The defaults take about 10 minutes on 2 CPU cores (about 3 img/s a side).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bigtrain from this checkout

from bench.common import log_intervals, peak_mem_mb  # noqa: E402
from bigtrain.families import load_config  # noqa: E402
from bigtrain.families.base import optim_for  # noqa: E402

REF_ENV, SHIMS_ENV = "BIGTRAIN_REF_STYLEGAN2", "BIGTRAIN_REF_STYLEGAN2_SHIMS"
DEFAULT_CONFIGS = "configs/stylegan2_digits.yaml,configs/stylegan2_cifar10.yaml"
DATA_IMAGES = 256
PUBLISHED = {
    "what": "published GPU figures of the reference (training speed, 8 V100s), not measurements of this run",
    "source": "NVlabs/stylegan3 docs/configs.md (the StyleGAN2 configs' table)",
    "paper256_8xV100_s_per_kimg": 4.01,
    "stylegan2_1024_8xV100_s_per_kimg": 17.55,
    "configs": {"paper256": "configs/stylegan2_256.yaml", "stylegan2_1024": "configs/stylegan2_1024.yaml"},
}
# the reference's train.py augpipe_specs['bgc']: blit, geometric and colour transforms at their default strengths
BGC = dict(
    xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1, lumaflip=1, hue=1,
    saturation=1,
)  # fmt: skip


def peak_rss_mb() -> float:
    """This process's resident set high-water mark, MB (ru_maxrss: kB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / 2**20 if sys.platform == "darwin" else rss / 2**10, 1)


def plan(args) -> tuple[int, int, int]:
    """(iterations per interval, intervals, micro-batch): --kimg in whole iterations of --batch."""
    per = max(1, round(args.kimg * 1000 / args.batch / args.intervals))
    micro = args.micro_batch or args.batch
    if args.batch % micro:
        raise SystemExit(f"--batch {args.batch} is no multiple of --micro-batch {micro}")
    return per, args.intervals, micro


def overrides(args, base, data: Path, out: Path, name: str) -> list[str]:
    """The overrides both sides load the preset with: the CPU size, the data, the schedule, no
    grids or checkpoints between the first and the last iteration."""
    per, intervals, micro = plan(args)
    interval_kimg = per * args.batch / 1000
    total_kimg = round(interval_kimg * intervals, 6)
    over = [
        f"run.name={name}",
        f"run.out_dir={out}",
        "data.source=npz",
        f"data.path={data}",
        f"data.resolution={args.resolution}",
        f"data.channels={base.data.channels or 3}",
        f"model.num_classes={base.model.num_classes}",
        f"train.batch_size={args.batch}",
        f"train.micro_batch={micro}",
        f"train.total_kimg={total_kimg}",
        "log.progress_bar=false",
        f"log.every_kimg={interval_kimg}",
        f"log.samples_every_kimg={round(total_kimg * 10, 6)}",
        "log.grid_rows=2",
        "log.grid_cols=2",
        f"checkpoint.every_kimg={round(total_kimg * 10, 6)}",
    ]
    for side in ("g", "d"):
        over += [f"model.{side}.channel_base={args.channel_base}", f"model.{side}.channel_max={args.channel_max}"]
    if args.fixed_p is not None:
        over += ["stylegan2.augment=fixed", f"stylegan2.augment_p={args.fixed_p}"]
    return over


def write_data(path: Path, res: int, channels: int, classes: int) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(DATA_IMAGES, res, res, channels), dtype=np.uint8)
    arrays = {"x": x}
    if classes:
        arrays["y"] = (np.arange(DATA_IMAGES) % classes).astype(np.int64)
    np.savez(path, **arrays)
    return path


# ---- the bigtrain side ---------------------------------------------------------------------------------------
def bigtrain_side(args, over: list[str]) -> dict:
    from bigtrain.engine.loop import Trainer  # here: the reference's process does without the engine

    cfg = load_config(args.preset, over)
    before = peak_rss_mb()
    trainer = Trainer(cfg)
    counts = {name: sum(p.numel() for p in trainer.players[name].net.parameters()) for name in ("G", "D")}
    device = str(trainer.backend.device)
    trainer.train()
    trainer.backend.close()
    rows, rates, img_s = log_intervals(Path(cfg.run.out_dir) / cfg.run.name, "raise --intervals")
    return {
        "img_per_s": round(img_s, 2),
        "s_per_kimg": round(1000 / img_s, 3),
        "interval_img_per_s": [round(r, 2) for r in rates],
        "peak_mem_mb": peak_mem_mb(rows),
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_before_training_mb": before,
        "images": int(round(rows[-1]["kimg"] * 1000)),
        "augment_p_per_interval": [r.get("augment/p") for r in rows],  # the mean p its iterations ran at
        "params": counts,
        "device": device,
        "threads": torch.get_num_threads(),
    }


# ---- the reference side --------------------------------------------------------------------------------------
def import_reference(path: str) -> tuple[Optional[dict], str]:
    """The reference's modules from the checkout at `path` (and $BIGTRAIN_REF_STYLEGAN2_SHIMS), or why not."""
    if not (Path(path) / "training" / "networks.py").is_file():
        return None, f"{path} holds no training/networks.py: not a checkout of NVlabs/stylegan2-ada-pytorch"
    shims = [p for p in os.environ.get(SHIMS_ENV, "").split(os.pathsep) if p]
    sys.path[:0] = [*shims, path]
    try:
        import training.augment as augment
        import training.loss as loss
        import training.networks as networks
        from torch_utils import misc, training_stats
        from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
    except Exception as err:  # any failure to import is a reason to skip, reported as is
        hint = f" (a stand-in `requests` module goes on ${SHIMS_ENV})" if "requests" in str(err) else ""
        return None, f"the reference at {path} does not import: {type(err).__name__}: {err}{hint}"
    where = Path(networks.__file__).resolve()
    if not where.is_relative_to(Path(path).resolve()):
        return None, f"`training.networks` came from {where}, not from the reference at {path}"
    mods = dict(augment=augment, loss=loss, networks=networks, misc=misc, training_stats=training_stats)
    return {**mods, "conv2d_gradfix": conv2d_gradfix, "grid_sample_gradfix": grid_sample_gradfix}, ""


def reference_side(args, over: list[str]) -> dict:
    ref, why = import_reference(os.environ.get(REF_ENV, ""))
    if ref is None:
        return {"skipped": why}
    cfg = load_config(args.preset, over)
    return drive_reference(ref, cfg, args)


def build_reference(ref: dict, cfg, channels: int) -> tuple[Any, Any, Any, dict]:
    """The reference's G, D and pipe with the bigtrain run's hyperparameters, and what they were built with."""
    g, d, o = cfg.model.g, cfg.model.d, cfg.stylegan2
    res, c_dim = cfg.data.resolution, cfg.model.num_classes
    # float32 on a CPU, as bigtrain's nets there (the reference's fp16 blocks would run float16 on the CPU)
    g_kwargs = dict(
        z_dim=cfg.model.z_dim,
        c_dim=c_dim,
        w_dim=g.w_dim,
        img_resolution=res,
        img_channels=channels,
        mapping_kwargs=dict(num_layers=g.map, lr_multiplier=g.map_lr_mult, w_avg_beta=g.w_avg_beta),
        synthesis_kwargs=dict(
            channel_base=g.channel_base,
            channel_max=g.channel_max,
            num_fp16_res=0,
            conv_clamp=g.clamp(),
            architecture=g.architecture,
            resample_filter=list(g.resample_filter),
        ),
    )
    d_kwargs = dict(
        c_dim=c_dim,
        img_resolution=res,
        img_channels=channels,
        architecture=d.architecture,
        channel_base=d.channel_base,
        channel_max=d.channel_max,
        num_fp16_res=0,
        conv_clamp=d.clamp(),
        cmap_dim=d.cmap_dim or None,
        block_kwargs=dict(resample_filter=list(d.resample_filter)),
        mapping_kwargs=dict(num_layers=d.map),
        epilogue_kwargs=dict(
            mbstd_group_size=d.mbstd_group or None, mbstd_num_channels=d.mbstd_channels if d.mbstd_group else 0
        ),
    )
    net = ref["networks"]
    G = net.Generator(**g_kwargs).train().requires_grad_(False)
    D = net.Discriminator(**d_kwargs).train().requires_grad_(False)
    # the loop's rule: a pipe when p starts above 0 or ADA steers it
    ada_target = o.ada_target if o.augment == "ada" else None
    p0 = o.augment_p if o.augment != "noaug" else 0.0
    pipe = None
    if o.augment != "noaug" and (p0 > 0 or ada_target is not None):
        pipe = ref["augment"].AugmentPipe(**BGC).train().requires_grad_(False)
        pipe.p.copy_(torch.as_tensor(p0))
    built = {
        "G": g_kwargs,
        "D": d_kwargs,
        "augment_pipe": "bgc" if pipe is not None else None,
        "ada_target": ada_target,
    }
    return G, D, pipe, built


def drive_reference(ref: dict, cfg, args) -> dict:
    """The reference's training loop, as training/training_loop.py runs it on one GPU, on the CPU."""
    import copy

    o, t = cfg.stylegan2, cfg.train
    arrays = np.load(cfg.data.path)
    images = torch.from_numpy(arrays["x"]).permute(0, 3, 1, 2).contiguous()  # uint8 [N, C, H, W]
    n_data, channels = images.shape[0], images.shape[1]
    c_dim = cfg.model.num_classes
    labels = np.zeros([n_data, c_dim], np.float32)  # one-hot, as the reference's dataset gives them
    if c_dim:
        labels[np.arange(n_data), arrays["y"]] = 1
    before = peak_rss_mb()
    np.random.seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    ref["conv2d_gradfix"].enabled = True  # as the loop sets them; on a CPU conv2d_gradfix takes torch's conv2d,
    # and grid_sample_gradfix on this torch (not 1.7-1.9) warns on every call and takes torch's grid_sample: the
    # same op, without the warning
    ref["grid_sample_gradfix"].enabled = False
    G, D, pipe, built = build_reference(ref, cfg, channels)
    G_ema = copy.deepcopy(G).eval()
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in (("G", G), ("D", D))}
    ada_target = built["ada_target"]
    ada_stats = ref["training_stats"].Collector(regex="Loss/signs/real") if pipe is not None and ada_target else None
    loss = ref["loss"].StyleGAN2Loss(
        device=torch.device("cpu"),
        G_mapping=G.mapping,
        G_synthesis=G.synthesis,
        D=D,
        augment_pipe=pipe,
        style_mixing_prob=o.style_mixing,
        r1_gamma=o.r1_gamma,
        pl_batch_shrink=o.pl_batch_shrink,
        pl_decay=o.pl_decay,
        pl_weight=o.pl_weight,
    )
    # phases as the loop builds them: lazy (main + reg, Adam corrected by mb_ratio) where a player has a reg
    # interval; bigtrain: G always lazy at pl_interval, D lazy when r1_interval > 1 (else R1 in its main phase)
    phases = []
    for name, module, opt_cfg, interval in (
        ("G", G, optim_for(cfg, "G"), o.pl_interval),
        ("D", D, optim_for(cfg, "D"), o.r1_interval if o.r1_interval > 1 else None),
    ):
        kwargs = dict(lr=opt_cfg.lr, betas=list(opt_cfg.betas), eps=opt_cfg.eps)
        if interval is None:
            phases.append((name + "both", module, torch.optim.Adam(module.parameters(), **kwargs), 1))
            continue
        mb_ratio = interval / (interval + 1)
        kwargs.update(lr=kwargs["lr"] * mb_ratio, betas=[beta**mb_ratio for beta in kwargs["betas"]])
        opt = torch.optim.Adam(module.parameters(), **kwargs)
        phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
    if cfg.ema.decay is not None:
        raise SystemExit("the reference's loop has a half-life EMA only: leave ema.decay null")
    batch, micro = t.batch_size, t.micro_batch or t.batch_size
    per, intervals, _ = plan(args)
    ada_kimg = o.ada_kimg or 500.0
    misc = ref["misc"]

    rates, p_per_interval, p_used, cur_nimg, batch_idx = [], [], [], 0, 0
    last_time, last_img = time.perf_counter(), 0
    for _ in range(per * intervals):
        # data: real images and labels, latents and the fakes' labels for every phase (the loop's fetch)
        idx = np.random.randint(n_data, size=batch)
        phase_real_img = (images[idx].to(torch.float32) / 127.5 - 1).split(micro)
        phase_real_c = torch.from_numpy(labels[idx]).split(micro)
        all_gen_z = torch.randn([len(phases) * batch, G.z_dim])
        all_gen_z = [phase_gen_z.split(micro) for phase_gen_z in all_gen_z.split(batch)]
        all_gen_c = [labels[np.random.randint(n_data)] for _ in range(len(phases) * batch)]
        all_gen_c = torch.from_numpy(np.stack(all_gen_c))
        all_gen_c = [phase_gen_c.split(micro) for phase_gen_c in all_gen_c.split(batch)]
        if pipe is not None:
            p_used.append(float(pipe.p))
        for (name, module, opt, interval), phase_gen_z, phase_gen_c in zip(phases, all_gen_z, all_gen_c):
            if batch_idx % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            rounds = zip(phase_real_img, phase_real_c, phase_gen_z, phase_gen_c)
            for round_idx, (real_img, real_c, gen_z, gen_c) in enumerate(rounds):
                sync = round_idx == batch // micro - 1
                loss.accumulate_gradients(
                    phase=name, real_img=real_img, real_c=real_c, gen_z=gen_z, gen_c=gen_c, sync=sync, gain=interval
                )
            module.requires_grad_(False)
            for param in module.parameters():
                if param.grad is not None:
                    misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            opt.step()
        # G_ema
        ema_nimg = cfg.ema.half_life_kimg * 1000
        if cfg.ema.rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * cfg.ema.rampup)
        ema_beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(G_ema.parameters(), G.parameters()):
            p_ema.copy_(p.lerp(p_ema, ema_beta))
        for b_ema, b in zip(G_ema.buffers(), G.buffers()):
            b_ema.copy_(b)
        cur_nimg += batch
        batch_idx += 1
        # ADA
        if ada_stats is not None and batch_idx % o.ada_interval == 0:
            ada_stats.update()
            adjust = np.sign(ada_stats["Loss/signs/real"] - ada_target) * (batch * o.ada_interval) / (ada_kimg * 1000)
            pipe.p.copy_((pipe.p + adjust).max(misc.constant(0, device=pipe.p.device)))
        if batch_idx % per == 0:  # a log interval, timed as bigtrain's (its tick's status line here does nothing)
            now = time.perf_counter()
            rates.append((cur_nimg - last_img) / (now - last_time))
            p_per_interval.append(statistics.fmean(p_used) if pipe is not None else None)
            p_used = []
            last_time, last_img = now, cur_nimg
    img_s = statistics.median(rates[1:])
    return {
        "img_per_s": round(img_s, 2),
        "s_per_kimg": round(1000 / img_s, 3),
        "interval_img_per_s": [round(r, 2) for r in rates],
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_before_training_mb": before,
        "images": cur_nimg,
        "augment_p_per_interval": p_per_interval,  # the mean p its iterations ran at
        "params": counts,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "built_with": built,
        "source": os.environ.get(REF_ENV, ""),
    }


# ---- the parent: one subprocess per side and preset ------------------------------------------------------------
def run_side(args, side: str, preset: str, over: list[str], tmp: Path) -> dict:
    result = tmp / f"{Path(preset).stem}-{side}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--preset", str(Path(preset).resolve())]
    cmd += ["--result", str(result)]
    cmd += [f"--set={o}" for o in over]
    cmd += ["--kimg", str(args.kimg), "--intervals", str(args.intervals), "--batch", str(args.batch)]
    cmd += ["--micro-batch", str(args.micro_batch), "--threads", str(args.threads)]
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        if side == "reference":
            return {"skipped": f"the reference's run failed (exit {proc.returncode}): {tail[0]}"}
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the bigtrain side of {preset} failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(result.read_text())


def bench_preset(args, preset: str, tmp: Path) -> dict:
    path = preset if Path(preset).is_file() else str(REPO / preset)  # the defaults: relative to the repository
    base = load_config(path, [])
    channels, classes = base.data.channels or 3, base.model.num_classes
    data = write_data(tmp / f"{Path(preset).stem}.npz", args.resolution, channels, classes)
    over = overrides(args, base, data, tmp / "runs", Path(preset).stem)
    ours = run_side(args, "bigtrain", path, over, tmp)
    if args.device != "cpu":
        ref = {"skipped": "the reference side runs on the CPU only (--device cpu)"}
    elif not os.environ.get(REF_ENV):
        ref = {"skipped": f"${REF_ENV} is not set (a checkout of NVlabs/stylegan2-ada-pytorch)"}
    else:
        ref = run_side(args, "reference", path, over, tmp)
    out = {"config": preset, "overrides": over, "bigtrain": ours, "reference": ref}
    if "img_per_s" in ref:
        out["ratio_img_per_s_bigtrain_over_reference"] = round(ours["img_per_s"] / ref["img_per_s"], 3)
        out["ratio_peak_rss_bigtrain_over_reference"] = round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3)
        out["same_parameter_counts"] = ours["params"] == ref["params"]
    return out


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's options (bench/gpu/ parses its runs' options with it too)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated stylegan2 configs")
    parser.add_argument("--kimg", type=float, default=0.32, help="images (thousands) per side and preset")
    parser.add_argument("--intervals", type=int, default=5, help="log intervals (the first is warm-up)")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--micro-batch", type=int, default=0, help="per accumulation round; 0 = the batch")
    parser.add_argument("--channel-base", type=int, default=2048)
    parser.add_argument("--channel-max", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--fixed-p", type=float, default=None, help="both sides at this fixed augmentation p")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the bigtrain side's device")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads of both sides; 0 = torch's default")
    parser.add_argument("--side", choices=("bigtrain", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.intervals < 2:
        parser.error("--intervals must be at least 2 (the first is warm-up)")
    if args.side:
        if args.threads:
            torch.set_num_threads(args.threads)
        side = bigtrain_side if args.side == "bigtrain" else reference_side
        Path(args.result).write_text(json.dumps(side(args, args.set)))
        return
    per, intervals, micro = plan(args)
    with tempfile.TemporaryDirectory() as tmp:
        presets = [bench_preset(args, p, Path(tmp)) for p in args.configs.split(",")]
    print(
        json.dumps(
            {
                "bench": "stylegan2",
                "schedule": {
                    "batch": args.batch,
                    "micro_batch": micro,
                    "iterations_per_interval": per,
                    "intervals": intervals,
                    "images_per_side": per * intervals * args.batch,
                    "img_per_s": "median over the intervals after the first",
                },
                "size": f"{args.resolution}x{args.resolution}, channel_base {args.channel_base}, channel_max "
                f"{args.channel_max} (G and D); the rest as each config",
                "presets": presets,
                "notes": [
                    "each side in its own process, one after the other, on the same CPU threads; peak_rss_mb is "
                    "that process's ru_maxrss (peak_mem_mb: bigtrain's perf/peak_mem_mb)",
                    "the reference's fp16 resolutions run in float32 here (num_fp16_res 0), as bigtrain's on a CPU",
                    "ADA from p = 0: bigtrain's pipe is the identity while p = 0, the reference's warps at any p "
                    "(augment_p_per_interval says when p left 0; --fixed-p P compares at a fixed p)",
                ],
                "published_gpu_anchors": PUBLISHED,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
