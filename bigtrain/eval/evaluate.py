"""Evaluating a generator: N samples across ranks -> Inception -> FID / IS / KID / PRDC + protocol.

For periodic evaluation in training, build one `Evaluator` (it loads Inception and the reference
once) and call it with a generation callable at every `eval.every_kimg`, on every rank at the
same time. The callable maps sample indices to images; sample i must depend only on (seed, i)
(as bigtrain.sampling and every recipe's `generate` do), and rank r generates the contiguous
share `rank_share(N, r, W)`, so the result equals a one-process evaluation of the same N
samples. This package knows no model family and imports nothing from the engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from bigtrain.errors import BigtrainError
from bigtrain.eval.metrics import NEEDS_REFERENCE, MetricSet, rank_share
from bigtrain.eval.prdc import DC_K, PR_K
from bigtrain.eval.protocol import compare, side
from bigtrain.eval.provenance import code_version, hardware
from bigtrain.eval.ref_stats import RefStats, load_ref_stats


class Evaluator:
    """Holds the Inception network, the reference and the metric states between evaluations.

    `inception` is any module mapping images to (pool [N, D], logits [N, K]) with `num_features`
    and `protocol()` (normally `bigtrain.eval.inception.InceptionV3`).
    """

    def __init__(
        self,
        metrics: Sequence[str],
        *,
        num_samples: int,
        reference: Optional[RefStats],
        inception: nn.Module,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        seed: int = 0,
        batch_size: int = 64,
        pr_k: int = PR_K,
        dc_k: int = DC_K,
    ):
        needs_reference = any(m in NEEDS_REFERENCE for m in metrics)
        self.metrics = MetricSet(
            metrics,
            reference=reference if needs_reference else None,
            num_samples=num_samples,
            num_features=inception.num_features,
            rank=rank,
            world_size=world_size,
            device=device,
            seed=seed,
            pr_k=pr_k,
            dc_k=dc_k,
        )
        self.num_samples = num_samples
        self.reference = reference if needs_reference else None
        self.inception = inception
        self.share = rank_share(num_samples, rank, world_size)
        # G runs this many batches on every rank: a generator partitioned across ranks (ZeRO-3)
        # gathers its weights in every forward, so the ranks must forward in lockstep
        longest = -(-num_samples // world_size)  # shares differ by at most one sample
        self.num_batches = -(-longest // batch_size)
        self.device = device
        self.world_size = world_size
        self.seed = seed
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(
        self,
        generate: Callable[[list[int]], Tensor],
        *,
        truncation: Optional[float] = None,
        class_idx: Optional[int] = None,
        ema: bool = True,
        kimg: Optional[float] = None,
        checkpoint: Optional[str] = None,
        inputs: Optional[dict] = None,
        label_sampling: Optional[str] = None,
        training: Optional[dict] = None,
        seed: Optional[int] = None,
    ) -> dict:
        """Evaluate a generator (collective: every rank calls it). `generate(indices)` returns
        float images [N, C, H, W] in [-1, 1] for those sample indices, made with this
        evaluator's seed (and the `truncation` / `class_idx` recorded in the protocol); the
        Inception network always runs in fp32. Returns the metric values (`fid`, `is`,
        `is_std`, `kid`, `kid_std`, as chosen), `protocol` and `warnings`; equal on every rank (but
        for `protocol.evaluation.seconds`, each rank's own).
        `inputs` (Recipe.generation_inputs) names the images a translating generator was given;
        `label_sampling` and `training` (bigtrain.eval.provenance) go into the generated side.
        `seed`: the seed `generate` draws with, when not this evaluator's (`eval --repeats`); it
        also seeds IS splits and KID subsets."""
        started = time.monotonic()
        if seed is not None:
            self.seed = self.metrics.seed = seed
        self.metrics.reset()
        resolution = None
        for b in range(self.num_batches):
            indices = self.share[b * self.batch_size : (b + 1) * self.batch_size]
            x = generate(list(indices) or [0])
            if not indices:  # this rank's share is done: that forward only kept the ranks in step
                continue
            x = x.float()
            if x.dim() != 4:
                raise BigtrainError("FID/IS/KID need an image generator; this one generates vectors")
            resolution = list(x.shape[-2:])
            pool, logits = self.inception(x.to(self.device))
            self.metrics.update(pool, logits)
        values = self.metrics.compute()
        generated = side(
            checkpoint or "generator",
            "generator",
            self.inception.protocol(),
            num_images=self.num_samples,
            image_resolution=resolution,
            resize_filter="none",
            seed=self.seed,
            truncation=truncation,
            class_idx=class_idx,
            ema=ema,
            kimg=kimg,
            code_version=code_version(),
            label_sampling=label_sampling,
            training=training,
            **({"inputs": inputs} if inputs else {}),
        )
        reference = self.reference.meta if self.reference is not None else None
        evaluation = {
            "processes": self.world_size,
            "device": hardware(self.device),
            "seconds": round(time.monotonic() - started, 3),
        }
        protocol = {"generated": generated, "reference": reference, "evaluation": evaluation, **self.metrics.settings()}
        return {**values, "protocol": protocol, "warnings": compare(generated, reference, "generated", "reference")}


def build_evaluator(
    metrics: Sequence[str],
    *,
    num_samples: int,
    ref_stats: Optional[str],
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    weights: Optional[str] = None,
    download: bool = True,
) -> Evaluator:
    """An Evaluator with the FID Inception (weights resolved as bigtrain.eval.weights says) and
    the reference statistics file `ref_stats` (needed for FID and KID)."""
    from bigtrain.eval.inception import load_inception

    reference = load_ref_stats(ref_stats) if ref_stats else None
    inception = load_inception(weights, device=device, download=download)
    return Evaluator(
        metrics, num_samples=num_samples, reference=reference, inception=inception, rank=rank,
        world_size=world_size, device=device, seed=seed, batch_size=batch_size,
    )  # fmt: skip


def evaluate_generator(
    generate: Callable[[list[int]], Tensor],
    *,
    num_samples: int,
    metrics: Sequence[str],
    ref_stats: Optional[str | RefStats],
    inception: nn.Module,
    seed: int = 0,
    truncation: Optional[float] = None,
    class_idx: Optional[int] = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
    ema: bool = True,
    kimg: Optional[float] = None,
    checkpoint: Optional[str] = None,
) -> dict:
    """One evaluation of `generate` (see `Evaluator.__call__`)."""
    reference = load_ref_stats(ref_stats) if isinstance(ref_stats, (str, Path)) else ref_stats
    evaluator = Evaluator(
        metrics, num_samples=num_samples, reference=reference, inception=inception, rank=rank,
        world_size=world_size, device=device, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    return evaluator(generate, truncation=truncation, class_idx=class_idx, ema=ema, kimg=kimg, checkpoint=checkpoint)


def log_record(result: dict) -> dict:
    """The fields of a result for metrics.jsonl: `eval/fid`, `eval/is`, `eval/is_std`,
    `eval/kid`, `eval/kid_std` (those computed) and `eval/protocol` (a nested object)."""
    record = {f"eval/{k}": v for k, v in result.items() if k not in ("protocol", "warnings")}
    record["eval/protocol"] = result["protocol"]
    return record
