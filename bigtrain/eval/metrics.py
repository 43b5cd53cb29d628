"""FID, IS, KID and PRDC through torchmetrics, in float64, inside one process or across ranks.

One Inception forward per batch serves every metric: the network's pool features and logits
are handed to torchmetrics' metrics through a pass-through feature module (`Precomputed`), so
torchmetrics does the statistics and the cross-rank synchronisation.

Distributed use (every rank builds the same MetricSet and calls `compute` together):
- rank r evaluates the contiguous share `rank_share(N, r, W)` of the N samples. torchmetrics
  gathers list states rank by rank, so contiguous shares reassemble the samples in the order one
  process would see them, and IS splits / KID subsets (seeded) come out the same;
- IS, KID and PRDC features are fed to torchmetrics in one update per rank at compute time: its sync
  gathers a list state element by element, which needs the same element count on every rank;
- reference statistics enter FID's sums on rank 0 only (sums add up across ranks); reference
  features for KID are split contiguously over the ranks like the samples; PRDC needs every
  reference feature on every rank (its k-NN radii are over the whole set; bigtrain.eval.prdc).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from bigtrain.errors import BigtrainError
from bigtrain.eval.prdc import DC_K, PR_K, compute_prdc
from bigtrain.eval.prdc import NAMES as PRDC_NAMES

if TYPE_CHECKING:
    from bigtrain.eval.ref_stats import RefStats

NEEDS_REFERENCE = ("fid", "kid", *PRDC_NAMES)  # the metrics that compare with a reference
IS_SPLITS = 10  # as in the original IS code
KID_SUBSETS = 100  # as in Binkowski et al. and torchmetrics
KID_SUBSET_SIZE = 1000  # capped by the sample counts


class Precomputed(nn.Module):
    """torchmetrics feature module for features computed outside: returns them as float64."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.double()


def rank_share(num_samples: int, rank: int, world_size: int) -> range:
    """Sample indices of `rank`: a contiguous block, sizes differing by at most one."""
    return range(rank * num_samples // world_size, (rank + 1) * num_samples // world_size)


def set_fid_stats(fid: FrechetInceptionDistance, mu: np.ndarray, sigma: np.ndarray, num: int, *, real: bool) -> None:
    """Put known statistics (mean, covariance of `num` samples) into one side of FID's state.

    torchmetrics keeps sum(f) and sum(f f^T); these are the sums that reproduce mu and sigma
    exactly through its compute (covariance with the n - 1 denominator, as np.cov).
    """
    side = "real" if real else "fake"
    mu_t = torch.as_tensor(np.asarray(mu, np.float64), device=fid.device)
    sigma_t = torch.as_tensor(np.asarray(sigma, np.float64), device=fid.device)
    setattr(fid, f"{side}_features_sum", mu_t * num)
    setattr(fid, f"{side}_features_cov_sum", sigma_t * (num - 1) + num * torch.outer(mu_t, mu_t))
    setattr(fid, f"{side}_features_num_samples", torch.tensor(num, dtype=torch.long, device=fid.device))
    fid.orig_dtype = torch.float64  # compute casts the result to this; set by update otherwise


def fid_stats(fid: FrechetInceptionDistance, *, real: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) of one side of FID's state, computed as torchmetrics' compute does."""
    side = "real" if real else "fake"
    n = int(getattr(fid, f"{side}_features_num_samples"))
    if n < 2:
        raise BigtrainError(f"statistics need at least 2 images, got {n}")
    mean = getattr(fid, f"{side}_features_sum") / n
    cov = (getattr(fid, f"{side}_features_cov_sum") - n * torch.outer(mean, mean)) / (n - 1)
    return mean.cpu().numpy(), cov.cpu().numpy(), n


def new_fid(num_features: int, device: torch.device | str = "cpu") -> FrechetInceptionDistance:
    """torchmetrics FID on precomputed features; its real side survives `reset`."""
    return FrechetInceptionDistance(feature=Precomputed(num_features), reset_real_features=False).to(device)


class PRDC(Metric):
    """torchmetrics state for PRDC: the reference features (whole, on every rank) and the fake
    features of each rank, gathered at compute time."""

    full_state_update = False

    def __init__(self, real_features: Tensor, *, pr_k: int = PR_K, dc_k: int = DC_K, **kwargs):
        super().__init__(**kwargs)
        if pr_k < 1 or dc_k < 1:
            raise ValueError(f"k must be >= 1, got pr_k={pr_k}, dc_k={dc_k}")
        self.pr_k, self.dc_k = pr_k, dc_k
        # kept in their dtype: float32 features are compared as prdc compares them (bigtrain.eval.prdc)
        self.register_buffer("real_features", real_features, persistent=False)
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor) -> None:
        """Fake features [B, D] of this rank."""
        self.fake_features.append(features)

    def compute(self) -> dict[str, float]:
        fake = self.fake_features
        fake = torch.cat(fake) if isinstance(fake, list) else fake  # a tensor after the gather
        return compute_prdc(self.real_features, fake, pr_k=self.pr_k, dc_k=self.dc_k)


class MetricSet:
    """The chosen metrics of generated samples against a reference, for one rank.

    `update(pool, logits)` with this rank's share of the samples, then `compute()` on every rank
    at once (it synchronises when torch.distributed is initialised); `reset()` before the next
    round keeps the reference.
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        reference: Optional["RefStats"],
        num_samples: int,
        num_features: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        seed: int = 0,
        pr_k: int = PR_K,
        dc_k: int = DC_K,
    ):
        for name in names:
            if name in NOT_PROVIDED:
                raise BigtrainError(f"{name}: {NOT_PROVIDED[name]}")
        unknown = [n for n in names if n not in METRICS]
        if unknown or not names:
            raise BigtrainError(f"unknown metrics {unknown or list(names)}; choose from {', '.join(METRICS)}")
        if num_samples < max(world_size, 2):
            raise BigtrainError(f"need at least 2 samples and one per rank; got {num_samples} for {world_size} ranks")
        self.names = list(dict.fromkeys(names))
        self.num_samples = num_samples
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self._pool: list[Tensor] = []
        self._logits: list[Tensor] = []
        self.fid = self.inception_score = self.kid = self.prdc = None
        with warnings.catch_warnings():  # IS/KID warn that they keep every feature: we know
            warnings.simplefilter("ignore", UserWarning)
            if "fid" in self.names:
                ref = _need(reference, "fid", ("mu", "sigma"), num_features)
                self.fid = new_fid(num_features, self.device)
                if rank == 0:
                    set_fid_stats(self.fid, ref.mu, ref.sigma, max(ref.num_images or 2, 2), real=True)
            if "is" in self.names:
                self.inception_score = InceptionScore(feature=Precomputed(0), splits=IS_SPLITS).to(self.device)
            if "kid" in self.names:
                ref = _need(reference, "kid", ("features",), num_features)
                share = rank_share(len(ref.features), rank, world_size)
                if len(share) == 0:
                    raise BigtrainError(f"KID: {len(ref.features)} reference features for {world_size} ranks")
                subset_size = min(KID_SUBSET_SIZE, num_samples, len(ref.features))
                self.kid = KernelInceptionDistance(
                    feature=Precomputed(num_features),
                    subsets=KID_SUBSETS,
                    subset_size=subset_size,
                    reset_real_features=False,
                ).to(self.device)
                self.kid.update(torch.as_tensor(ref.features[np.asarray(share)], device=self.device), real=True)
            chosen = [n for n in self.names if n in PRDC_NAMES]
            if chosen:
                ref = _need(reference, chosen[0], ("features",), num_features)
                k = max(pr_k, dc_k)
                if min(num_samples, len(ref.features)) <= k or min(pr_k, dc_k) < 1:
                    raise BigtrainError(
                        f"{'/'.join(chosen)}: k = {pr_k} (precision, recall) and {dc_k} (density, coverage) must be "
                        f">= 1 and below the sample counts ({num_samples} generated, {len(ref.features)} reference)"
                    )
                features = torch.as_tensor(ref.features, dtype=torch.float32)  # as Inception gives them
                self.prdc = PRDC(features, pr_k=pr_k, dc_k=dc_k).to(self.device)

    @torch.no_grad()
    def update(self, pool: Tensor, logits: Tensor) -> None:
        """Features of a batch of generated samples: pool [B, D], logits [B, K]."""
        if self.fid is not None:
            self.fid.update(pool.to(self.device), real=False)
        if self.kid is not None or self.prdc is not None:
            self._pool.append(pool.to(self.device))
        if self.inception_score is not None:
            self._logits.append(logits.to(self.device))

    @torch.no_grad()
    def compute(self) -> dict[str, float]:
        """{"fid", "is", "is_std", "kid", "kid_std", "precision", "recall", "density", "coverage"}
        (those chosen), equal on every rank."""
        out: dict[str, float] = {}
        # IS and KID draw splits/subsets from torch's global generator: seed a private copy of it
        # so results are reproducible and the caller's random stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.fid is not None:
                out["fid"] = float(self.fid.compute())
            if self.inception_score is not None:
                self.inception_score.reset()  # compute may run more than once per round
                self.inception_score.update(_cat(self._logits, self.rank))
                mean, std = self.inception_score.compute()
                out["is"], out["is_std"] = float(mean), float(std)
            if self.kid is not None:
                self.kid.reset()  # keeps the reference features
                self.kid.update(_cat(self._pool, self.rank), real=False)
                mean, std = self.kid.compute()
                out["kid"], out["kid_std"] = float(mean), float(std)
            if self.prdc is not None:
                self.prdc.reset()  # keeps the reference features (a buffer, not a state)
                self.prdc.update(_cat(self._pool, self.rank, torch.float32))  # Inception's dtype
                out.update({k: v for k, v in self.prdc.compute().items() if k in self.names})
        return out

    def settings(self) -> dict:
        """Metric parameters that belong to the protocol record."""
        out: dict = {}
        if self.inception_score is not None:
            out["is_splits"] = IS_SPLITS
        if self.kid is not None:
            out.update(kid_subsets=KID_SUBSETS, kid_subset_size=self.kid.subset_size, kid_degree=3)
        if self.prdc is not None:  # the features are the pool features FID uses (the network's record)
            out.update(prdc_features="pool", pr_k=self.prdc.pr_k, dc_k=self.prdc.dc_k)
        return out

    def reset(self) -> None:
        """Forget the generated samples (the reference stays)."""
        self._pool.clear()
        self._logits.clear()
        for metric in (self.fid, self.inception_score, self.kid, self.prdc):
            if metric is not None:
                metric.reset()


def _cat(parts: list[Tensor], rank: int, dtype: torch.dtype = torch.float64) -> Tensor:
    if not parts:
        raise BigtrainError(f"rank {rank} evaluated no samples; use at least one sample per rank")
    return torch.cat(parts).to(dtype)


def _need(reference: Optional["RefStats"], metric: str, fields: tuple[str, ...], num_features: int) -> "RefStats":
    if reference is None:
        raise BigtrainError(
            f"{metric.upper()} needs reference statistics: make them with `bigtrain ref-stats DATA OUT.npz`"
        )
    if any(getattr(reference, f) is None for f in fields):
        raise BigtrainError(
            f"{reference.path}: has no {'/'.join(fields)} for {metric.upper()}"
            + ("; rebuild it with `bigtrain ref-stats --features`" if "features" in fields else "")
        )
    if len(reference.mu) != num_features:
        raise BigtrainError(
            f"{reference.path}: holds {len(reference.mu)}-d statistics, the network gives {num_features}-d features"
        )
    if metric == "kid" and len(reference.features) < 2:
        raise BigtrainError(f"{reference.path}: KID needs at least 2 reference features")
    return reference


NOT_PROVIDED = {  # metrics people ask for that bigtrain does not compute, and why
    "ppl": "perceptual path length is not provided: it measures distances with LPIPS, whose VGG16 weights "
    "bigtrain can neither ship nor download, and an LPIPS with other weights would give numbers that "
    "compare with nothing published",
}
METRICS = {
    "fid": "Frechet Inception Distance (pool features vs reference mu/sigma)",
    "is": "Inception Score (unbiased logits, 10 splits)",
    "kid": "Kernel Inception Distance (pool features vs reference features)",
    "precision": f"improved precision, k = {PR_K} by default (pool features vs reference features)",
    "recall": f"improved recall, k = {PR_K} by default (pool features vs reference features)",
    "density": f"density, k = {DC_K} by default (pool features vs reference features)",
    "coverage": f"coverage, k = {DC_K} by default (pool features vs reference features)",
}
