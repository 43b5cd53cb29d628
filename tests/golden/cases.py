"""The golden cases: which runs are recorded, with which CLI arguments, on which tiny data.

record.py and test_golden.py both build their runs from here, so a test reruns exactly what
was recorded. A case is a base run (a config of configs/ or a learning-test family, shrunk to
a few seconds) in one matrix cell: acc1 / acc2 = Accelerate on 1 / 2 processes, ds1 / ds2 =
DeepSpeed ZeRO-2 on 1 / 2 processes.

Arguments hold two placeholders, filled in at run time: $DATA (the folder make_data writes)
and $RUNS (the parent of the run directories).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.conftest import REPO, write_images_npz

DATA, RUNS = "$DATA", "$RUNS"
SEED = 1
CELLS = {"acc1": (1, "accelerate"), "acc2": (2, "accelerate"), "ds1": (1, "deepspeed"), "ds2": (2, "deepspeed")}
BACKEND_OVERRIDES = {"accelerate": [], "deepspeed": ["backend.kind=deepspeed", "backend.zero_stage=2"]}
SHARD_SIZE = 64  # 256 images -> 4 shards, so 2 ranks x 2 workers each walk their own order


@dataclass(frozen=True)
class Base:
    """One run, before it is put into a matrix cell."""

    name: str
    config: str  # relative to the repo, or under $DATA
    data: str  # digits | rgb (npz) | shards
    batch: int
    iters: int  # G iterations; each is d_steps D updates + one G update
    overrides: tuple[str, ...] = ()
    num_workers: int = 0
    resume_at: int = 0  # > 0: stop after this many iterations, then resume to `iters`

    def stages(self, run_name: str, backend: str) -> list[list[str]]:
        """The `bigtrain train` argument lists, one per invocation."""
        ends = [self.resume_at, self.iters] if self.resume_at else [self.iters]
        return [["train", self.config, *self.overrides, *self._common(run_name, end), *BACKEND_OVERRIDES[backend]] for end in ends]

    def _common(self, run_name: str, iters: int) -> list[str]:
        if self.data == "shards":
            data = ["data.source=shards", f"data.path={DATA}/shards/dataset.json"]
        else:
            data = ["data.source=npz", f"data.path={DATA}/{'digits' if self.data == 'digits' else 'rgb32'}.npz"]
        return [
            f"run.out_dir={RUNS}", f"run.name={run_name}", f"run.seed={SEED}",
            *data, f"data.num_workers={self.num_workers}",
            f"train.batch_size={self.batch}", f"train.total_kimg={_kimg(self.batch * iters)}", "train.precision=fp32",
            # one metrics.jsonl record per iteration; no grids, checkpoints or evaluations on the way
            f"log.every_kimg={_kimg(self.batch)}", "log.progress_bar=false", "log.samples_every_kimg=1000",
            "checkpoint.every_kimg=1000", "eval.every_kimg=0",
        ]


def _kimg(nimg: int) -> str:
    return repr(round(nimg / 1000, 6))


DCGAN_16 = ("data.resolution=16", "model.g.width=8", "model.d.width=8")
SNGAN_32 = ("data.resolution=32", "model.g.width=2", "model.d.width=4")
MLP_SMALL = ("model.g.width=128", "model.d.width=64")

# Every config of configs/, shrunk: widths, resolution and batch only; its loss, optimizers,
# d_steps and regularizers stay as they are (that is what the golden outputs protect).
CONFIG_BASES = [
    Base("gan_mlp", "configs/gan_mlp.yaml", "digits", 100, 24, MLP_SMALL),
    Base("cgan_digits", "configs/cgan_digits.yaml", "digits", 100, 24, MLP_SMALL),
    Base("began_digits", "configs/began_digits.yaml", "digits", 16, 24, ("data.resolution=16", "model.g.width=16", "model.d.width=16", "model.g.h_dim=16", "model.d.h_dim=16")),
    Base("dcgan_digits", "configs/dcgan_digits.yaml", "digits", 64, 24, DCGAN_16),
    Base("dcgan_cifar10", "configs/dcgan_cifar10.yaml", "rgb", 64, 24, DCGAN_16),
    Base("lsgan_cifar10", "configs/lsgan_cifar10.yaml", "rgb", 64, 24, DCGAN_16),
    Base("wgan_clip_cifar10", "configs/wgan_clip_cifar10.yaml", "rgb", 64, 12, DCGAN_16),
    Base("wgan_gp_cifar10", "configs/wgan_gp_cifar10.yaml", "rgb", 16, 8, SNGAN_32),
    Base("sngan_cifar10", "configs/sngan_cifar10.yaml", "rgb", 16, 8, SNGAN_32),
    Base("sngan_proj_imagenet128", "configs/sngan_proj_imagenet128.yaml", "rgb", 16, 8, SNGAN_32),
]

# Runs that really stream WebDataset shards (loader workers, shuffle buffer, flips), and a
# resumed one: the data position a resume restarts the stream from must stay as it is.
EXTRA_BASES = [
    Base("dcgan_cifar10_shards", "configs/dcgan_cifar10.yaml", "shards", 64, 24, DCGAN_16, num_workers=2),
    Base("wgan_clip_cifar10_shards_resume", "configs/wgan_clip_cifar10.yaml", "shards", 64, 12, DCGAN_16, num_workers=1, resume_at=6),
    # gradient accumulation: 4 rounds of 8 on one process, 2 on two
    Base("dcgan_digits_accum", "configs/dcgan_digits.yaml", "digits", 32, 24, (*DCGAN_16, "train.micro_batch=8")),
]

# tests/learning/test_families.py's FAMILIES and CONDITIONAL as of commit aabe828, frozen here
# (without their train.total_kimg) so that later edits of the learning tests do not move the
# golden runs. They train from the defaults: the config file is an empty YAML.
_MLP_8 = ("data.resolution=8", "model.z_dim=32", "model.g.arch=mlp", "model.d.arch=mlp", "model.g.width=256", "model.d.width=256")
_DCGAN_16 = ("data.resolution=16", "model.z_dim=32", "model.g.arch=dcgan", "model.d.arch=dcgan", "model.g.width=16", "model.d.width=16")
# name: (batch, iterations, overrides); the d_steps=5 families run 12 iterations (60 D updates)
FAMILIES = {
    "gan_mlp_nonsaturating": (64, 24, _MLP_8 + ("loss.type=nonsaturating", "optim.g.lr=0.0005", "optim.d.lr=0.0005")),
    "gan_mlp_minimax": (64, 24, _MLP_8 + ("loss.type=minimax", "optim.g.lr=0.0005", "optim.d.lr=0.0005")),
    "dcgan": (64, 24, _DCGAN_16 + ("loss.type=nonsaturating",)),
    "lsgan": (64, 24, _DCGAN_16 + ("loss.type=lsgan",)),
    "hinge": (64, 24, _DCGAN_16 + ("loss.type=hinge",)),
    "wgan_clip": (64, 12, _DCGAN_16 + ("loss.type=wgan", "loss.clip_d_weights=0.01", "train.d_steps=5", "optim.g.type=rmsprop", "optim.d.type=rmsprop", "optim.g.lr=0.0005", "optim.d.lr=0.0005")),
    "wgan_gp": (64, 12, _DCGAN_16 + ("loss.type=wgan", "loss.gp_weight=10", "train.d_steps=5", "optim.g.lr=0.0003", "optim.d.lr=0.0003", "optim.g.betas=[0.0,0.9]", "optim.d.betas=[0.0,0.9]")),
    "r1_lazy": (64, 24, _DCGAN_16 + ("loss.type=nonsaturating", "loss.r1_gamma=1", "loss.r1_interval=4")),
    "began": (32, 24, ("data.resolution=16", "model.z_dim=32", "model.g.arch=began", "model.d.arch=began", "model.g.width=16", "model.d.width=16", "model.g.h_dim=32", "model.d.h_dim=32", "loss.type=began", "loss.began_lambda_k=0.01", "optim.g.lr=0.0005", "optim.d.lr=0.0005")),
    # batch 32 in the learning test; 16 keeps the 32x32 ResNet quick, as fewer iterations do
    "sngan_hinge": (16, 16, ("data.resolution=32", "model.z_dim=32", "model.g.arch=sngan", "model.d.arch=sngan", "model.g.width=4", "model.d.width=8", "model.d.spectral_norm=true", "model.d.norm=none", "loss.type=hinge", "optim.g.betas=[0.0,0.9]", "optim.d.betas=[0.0,0.9]")),
    "cgan_mlp_concat": (64, 24, _MLP_8 + ("model.num_classes=10", "model.g.cond=concat", "model.d.cond=concat", "optim.g.lr=0.0005", "optim.d.lr=0.0005")),
    "diffaugment": (64, 24, _DCGAN_16 + ("loss.type=nonsaturating", "augment.policy=translation,cutout")),
    "dcgan_projection": (64, 24, _DCGAN_16 + ("model.num_classes=10", "model.d.cond=projection")),
    "acgan": (64, 24, _DCGAN_16 + ("model.num_classes=10", "model.d.cond=acgan")),
}
LEARNING_BASES = [
    Base(f"learn_{name}", f"{DATA}/defaults.yaml", "digits", batch, iters, overrides) for name, (batch, iters, overrides) in FAMILIES.items()
]

# The families added after the first recordings (recorded before the engine's move to family
# folders, issue 24), each from its digits or grid config, shrunk: GMAN and MAD-GAN on the
# digits as perceptrons, ProGAN growing 4 -> 8 -> 16 with GP and drift, BigGAN (hinge,
# orthogonal regularisation, G_ema), CycleGAN on two streams of one file, Pix2Pix on digits
# split into left|right halves.
_PROGAN = ("model.g.fmap_base=64", "model.g.fmap_max=16", "model.d.fmap_base=64", "model.d.fmap_max=16", "data.resolution=16",
           "progan.training_kimg=0.128", "progan.transition_kimg=0.128", "train.micro_batch=0")
FAMILY_BASES = [
    Base("gman_digits", f"{DATA}/defaults.yaml", "digits", 64, 16, _MLP_8 + ("recipe=gman", "gman.discriminators=3", "gman.combiner=soft_mean")),
    Base("madgan_digits", f"{DATA}/defaults.yaml", "digits", 60, 16, _MLP_8 + ("recipe=madgan", "madgan.generators=3")),
    Base("progan_digits", "configs/progan_digits.yaml", "digits", 64, 10, _PROGAN),  # minibatch 64 at 4 and 8, 32 at 16
    Base("biggan_digits", "configs/biggan_digits.yaml", "digits", 16, 8, ("model.g.width=4", "model.d.width=8", "model.g.shared_dim=8", "train.precision=fp32", "ema.start_kimg=0.064")),
    Base("cyclegan_digits", "configs/cyclegan_digits.yaml", "digits", 8, 8, ("model.g.width=4", "model.g.blocks=1", "model.d.width=4", f"data.streams.A.path={DATA}/digits.npz",
                                                                             f"data.streams.B.path={DATA}/digits.npz", f"cyclegan.eval_inputs={DATA}/digits.npz")),
    # g_first: the order these goldens were recorded in (issue 27 made d_first, the reference's, the default;
    # tests/unit/test_img2img_recipes.py pins it against a hand-made reference step)
    Base("pix2pix_digits", "configs/pix2pix_digits.yaml", "digits", 8, 8, ("model.g.width=4", "model.d.width=4", f"pix2pix.eval_inputs={DATA}/digits.npz", "pix2pix.order=g_first")),
]

BASES = {b.name: b for b in CONFIG_BASES + EXTRA_BASES + LEARNING_BASES + FAMILY_BASES}

# The bases of the other cells: every config, the shard, resume and accumulation runs, and the
# learning families that add what no config has (minimax, lazy R1, DiffAugment, AC-GAN, GP on DCGAN).
MULTI = [b.name for b in CONFIG_BASES + EXTRA_BASES] + ["learn_gan_mlp_minimax", "learn_r1_lazy", "learn_diffaugment", "learn_wgan_gp", "learn_acgan"]
FAMILY_MULTI = [b.name for b in FAMILY_BASES]  # acc2 and ds2 only: a family's distributed path (ProGAN resets no optimizer under DeepSpeed)
MATRIX = {"acc1": list(BASES), "acc2": MULTI + FAMILY_MULTI, "ds1": MULTI, "ds2": MULTI + [n for n in FAMILY_MULTI if n != "progan_digits"]}

# Run by a plain `pytest` (everything else is marked slow; all of acc1 would take ~3 min): the
# acc1 runs that between them cover every loss, penalty, conditioning and data path, and a few
# runs on two processes or DeepSpeed (DDP, shards, GP, ZeRO-2 on one and two processes).
DEFAULT = {
    "acc1": {
        "gan_mlp", "began_digits", "dcgan_digits", "wgan_gp_cifar10", "sngan_proj_imagenet128",
        "dcgan_cifar10_shards", "wgan_clip_cifar10_shards_resume",
        "learn_gan_mlp_minimax", "learn_wgan_gp", "learn_r1_lazy",
        "learn_cgan_mlp_concat", "learn_diffaugment", "learn_acgan",
        "progan_digits", "biggan_digits", "cyclegan_digits", "gman_digits", "madgan_digits",
    },
    "acc2": {"gan_mlp"},  # wgan_gp_cifar10 and dcgan_cifar10_shards: slow since the budget of 2026-12-07
    "ds1": {"dcgan_digits"},
    "ds2": {"gan_mlp"},
}


@dataclass(frozen=True)
class Case:
    base: Base
    cell: str

    @property
    def name(self) -> str:
        return f"{self.base.name}-{self.cell}"

    @property
    def nproc(self) -> int:
        return CELLS[self.cell][0]

    @property
    def backend(self) -> str:
        return CELLS[self.cell][1]

    @property
    def slow(self) -> bool:
        return self.base.name not in DEFAULT[self.cell]

    def stages(self) -> list[list[str]]:
        return self.base.stages(self.name, self.backend)


CASES = {c.name: c for c in (Case(BASES[b], cell) for cell, bases in MATRIX.items() for b in bases)}


# ---- the tiny data ------------------------------------------------------------------------------


def make_data(folder: Path) -> Path:
    """Write every data set the cases read into `folder` (the same bytes every time)."""
    from bigtrain.demo import write_digits_npz

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "defaults.yaml").write_text("{}\n")
    write_digits_npz(folder / "digits.npz")
    # CIFAR-like: 3 channels, 10 classes, 32x32 (the sngan ladders start at 32)
    write_images_npz(folder / "rgb32.npz", n=256, res=32, channels=3, classes=10, seed=0)
    proc = subprocess.run(
        [sys.executable, "-m", "bigtrain", "make-shards", str(folder / "rgb32.npz"), str(folder / "shards"), "--shard-size", str(SHARD_SIZE), "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make-shards failed:\n{proc.stderr[-3000:]}")
    return folder


def data_fingerprint(folder: Path) -> dict:
    """sha256 of the arrays and shard files (npz files carry zip timestamps, so not their bytes)."""
    out = {}
    for name in ("digits.npz", "rgb32.npz"):
        with np.load(folder / name) as f:
            out[name] = {k: hashlib.sha256(np.ascontiguousarray(f[k]).tobytes()).hexdigest() for k in sorted(f.files)}
    out["shards"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "shards").glob("*.tar"))}
    return out
