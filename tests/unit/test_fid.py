"""FID / IS / KID through torchmetrics against independent float64 NumPy/SciPy computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from bigtrain.errors import BigtrainError
from bigtrain.eval.metrics import MetricSet, fid_stats, new_fid, rank_share, set_fid_stats
from bigtrain.eval.ref_stats import RefStats


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with SciPy's matrix square root (as TTUR and pytorch-fid compute it)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def gaussian_features(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features, not a diagonal covariance
    return rng.normal(size=(n, d)) @ mix * scale + shift


def reference(features: np.ndarray) -> RefStats:
    meta = {"num_images": len(features)}
    return RefStats("ref.npz", features.mean(0), np.cov(features, rowvar=False), features.astype(np.float32), meta)


def test_fid_matches_scipy_on_random_gaussian_features() -> None:
    a, b = gaussian_features(400, 48, 0), gaussian_features(300, 48, 1, scale=1.5, shift=0.3)
    fid = new_fid(48)
    for chunk in np.array_split(a, 3):  # several updates, as batches arrive
        fid.update(torch.from_numpy(chunk), real=True)
    fid.update(torch.from_numpy(b), real=False)
    value = fid.compute()
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(scipy_fid(a, b), rel=1e-6)


def test_fid_of_a_set_against_itself_is_zero() -> None:
    a = gaussian_features(200, 32, 2)
    fid = new_fid(32)
    fid.update(torch.from_numpy(a), real=True)
    fid.update(torch.from_numpy(a), real=False)
    assert abs(float(fid.compute())) < 1e-8


def exact_features(mu: np.ndarray, std: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is exactly mu and sample covariance exactly diag(std**2)."""
    rng = np.random.default_rng(seed)
    centred = rng.normal(size=(n, len(mu)))
    centred -= centred.mean(0)
    q, _ = np.linalg.qr(centred)  # orthonormal columns, each orthogonal to the ones vector
    return mu + q * np.sqrt(n - 1) * std


def test_fid_closed_form_for_diagonal_gaussians() -> None:
    # ||mu1 - mu2||^2 + sum_i (s1_i - s2_i)^2 for covariances diag(s1^2), diag(s2^2)
    rng = np.random.default_rng(3)
    d = 24
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    fid = new_fid(d)
    fid.update(torch.from_numpy(exact_features(mu1, s1, 100, 4)), real=True)
    fid.update(torch.from_numpy(exact_features(mu2, s2, 80, 5)), real=False)
    assert float(fid.compute()) == pytest.approx(expected, rel=1e-9)


def test_statistics_injected_from_a_file_give_the_same_fid() -> None:
    a, b = gaussian_features(300, 32, 6), gaussian_features(250, 32, 7, shift=0.5)
    fid = new_fid(32)
    set_fid_stats(fid, a.mean(0), np.cov(a, rowvar=False), 2, real=True)  # count unknown (other tool's file)
    fid.update(torch.from_numpy(b), real=False)
    assert float(fid.compute()) == pytest.approx(scipy_fid(a, b), rel=1e-6)
    mu, sigma, n = fid_stats(fid, real=False)
    np.testing.assert_allclose(mu, b.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(b, rowvar=False), atol=1e-12)
    assert n == 250


def test_metric_set_fid_against_reference_statistics() -> None:
    real, fake = gaussian_features(300, 32, 8), gaussian_features(200, 32, 9, scale=0.8)
    metrics = MetricSet(["fid"], reference=reference(real), num_samples=200, num_features=32)
    for chunk in np.array_split(fake, 4):
        metrics.update(torch.from_numpy(chunk), torch.zeros(len(chunk), 10))
    assert metrics.compute()["fid"] == pytest.approx(scipy_fid(real, fake), rel=1e-6)
    metrics.reset()  # a second round sees only its own samples; the reference stays
    metrics.update(torch.from_numpy(real[:200]), torch.zeros(200, 10))
    assert metrics.compute()["fid"] == pytest.approx(scipy_fid(real, real[:200]), rel=1e-6)


def numpy_inception_score(logits: np.ndarray, order: np.ndarray, splits: int) -> tuple[float, float]:
    logits = logits[order]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    size = -(-len(p) // splits)  # torch.chunk: ceil-sized chunks
    scores = []
    for lo in range(0, len(p), size):
        part = p[lo : lo + size]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores, ddof=1))


def test_inception_score_matches_numpy_with_its_seeded_splits() -> None:
    logits = np.random.default_rng(10).normal(size=(120, 20)) * 3
    metrics = MetricSet(["is"], reference=None, num_samples=120, num_features=8, seed=5)
    metrics.update(torch.zeros(120, 8), torch.from_numpy(logits))
    got = metrics.compute()
    order = torch.randperm(120, generator=torch.Generator().manual_seed(5)).numpy()
    mean, std = numpy_inception_score(logits, order, 10)
    assert got["is"] == pytest.approx(mean, rel=1e-9)
    assert got["is_std"] == pytest.approx(std, rel=1e-9)
    assert metrics.compute() == got  # reproducible: the seed, not the global generator, decides


def numpy_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018)."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_kid_matches_numpy_when_the_subset_is_the_whole_set() -> None:
    real, fake = gaussian_features(60, 16, 11), gaussian_features(60, 16, 12, shift=0.4)
    metrics = MetricSet(["kid"], reference=reference(real), num_samples=60, num_features=16)
    metrics.update(torch.from_numpy(fake), torch.zeros(60, 4))
    got = metrics.compute()
    assert metrics.settings()["kid_subset_size"] == 60  # every subset is a permutation of all
    assert got["kid"] == pytest.approx(numpy_kid(real.astype(np.float32).astype(np.float64), fake), rel=1e-9)
    assert got["kid_std"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (7, 7), (50_000, 8)])
def test_rank_shares_are_contiguous_and_cover_every_sample_once(n: int, world: int) -> None:
    shares = [rank_share(n, r, world) for r in range(world)]
    assert [i for s in shares for i in s] == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_metric_set_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(BigtrainError, match="reference statistics"):
        MetricSet(["fid"], reference=None, num_samples=10, num_features=8)
    stats_only = RefStats("other.npz", np.zeros(8), np.eye(8), None, {})
    with pytest.raises(BigtrainError, match="--features"):
        MetricSet(["kid"], reference=stats_only, num_samples=10, num_features=8)
    with pytest.raises(BigtrainError, match="8-d statistics"):
        MetricSet(["fid"], reference=stats_only, num_samples=10, num_features=16)
    with pytest.raises(BigtrainError, match="unknown metrics"):
        MetricSet(["fid", "lpips"], reference=stats_only, num_samples=10, num_features=8)
    with pytest.raises(BigtrainError, match="one per rank"):
        MetricSet(["is"], reference=None, num_samples=3, num_features=8, world_size=4)
