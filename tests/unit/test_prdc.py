"""Precision, recall, density and coverage (bigtrain.eval.prdc): parity with the `prdc` package
(Naeem et al.'s own code, `pip install prdc`; the tests that need it are skipped without it), the
blocked k-NN radii, and what the metrics say about a collapsed generator through the Evaluator.

"Real" features here are scikit-learn's handwritten digits as 64-d pixel vectors: real data, with
many exactly equal distances (integer pixels), where a tie broken differently would show.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bigtrain.errors import BigtrainError
from bigtrain.eval.evaluate import Evaluator
from bigtrain.eval.metrics import MetricSet
from bigtrain.eval.prdc import MAX_BLOCK_BYTES, block_rows, compute_prdc, knn_radii
from bigtrain.eval.ref_stats import RefStats
from bigtrain.sampling import to_uint8


def reference_prdc():
    prdc = pytest.importorskip("prdc", reason="the prdc package is not installed (pip install prdc; in the test extra)")
    return prdc.compute_prdc


def ours(real: np.ndarray, fake: np.ndarray, k: int, **kwargs) -> dict:
    return compute_prdc(torch.from_numpy(real), torch.from_numpy(fake), pr_k=k, dc_k=k, **kwargs)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [3, 5])
def test_equals_the_prdc_package_on_random_features(dtype, k) -> None:
    reference = reference_prdc()
    rng = np.random.default_rng(k)
    real = rng.normal(size=(400, 32)).astype(dtype)
    fake = (rng.normal(size=(300, 32)) * 1.1 + 0.15).astype(dtype)  # overlapping, not equal: no value is 0 or 1
    # blocks of 7 rows: every statistic crosses block boundaries many times
    got = ours(real, fake, k, max_block_bytes=8 * 400 * 7)
    expected = reference(real, fake, k)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), abs=1e-6), name
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1


def test_float32_near_ties_compare_as_in_the_prdc_package() -> None:
    """Features far from the origin: float32 rounding of the squared distances (scikit-learn
    computes them in float64 and returns float32 for float32 input) makes a fake's distance equal
    its real neighbour's radius in float32, though not in float64. This seed has such a tie (found
    by search; float64 distances give density 0.90111 instead of prdc's 0.9)."""
    reference = reference_prdc()
    rng = np.random.default_rng(5)
    real = (rng.normal(size=(300, 4)) + 100).astype(np.float32)
    fake = (rng.normal(size=(300, 4)) * 1.1 + 100).astype(np.float32)
    got, expected = ours(real, fake, 3), reference(real, fake, 3)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), abs=1e-9), name


def test_equals_the_prdc_package_on_digits_with_both_ks() -> None:
    reference = reference_prdc()
    x, y = digits()
    real, fake = x[:900], x[900:1500]
    fake = np.concatenate([fake[y[900:1500] < 7], fake[y[900:1500] < 3]])  # a skewed generator
    got = compute_prdc(torch.from_numpy(real), torch.from_numpy(fake), pr_k=3, dc_k=5, max_block_bytes=8 * 900 * 64)
    pr, dc = reference(real, fake, 3), reference(real, fake, 5)
    for name in ("precision", "recall"):
        assert got[name] == pytest.approx(float(pr[name]), abs=1e-6), name
    for name in ("density", "coverage"):
        assert got[name] == pytest.approx(float(dc[name]), abs=1e-6), name
    assert got["coverage"] < 0.95 and got["recall"] < 1  # the skew shows


def test_radii_are_exact_and_blocks_change_nothing() -> None:
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(50, 5)))
    full = torch.cdist(x, x).sort(dim=1).values  # [50, 50]; column 0 is the point itself
    for block in (8 * 50 * 1, 8 * 50 * 7, MAX_BLOCK_BYTES):
        radii = knn_radii(x, (1, 3, 5), max_block_bytes=block)
        for k in (1, 3, 5):
            torch.testing.assert_close(radii[k], full[:, k], rtol=0, atol=1e-12)


def test_blocks_keep_memory_linear_in_n() -> None:
    rows = block_rows(50_000)
    assert rows * 50_000 * 8 <= MAX_BLOCK_BYTES and rows >= 100  # 50k x 50k: 0.13 GB blocks, not a 20 GB matrix
    assert block_rows(10**9) == 1


def test_too_few_samples_for_k() -> None:
    with pytest.raises(ValueError, match="k = 5 need more than 5 samples"):
        compute_prdc(torch.zeros(5, 2), torch.zeros(10, 2))


# ---- through the Evaluator -----------------------------------------------------------------------


class PixelFeatures(nn.Module):
    """Stands in for Inception: the 64 uint8 pixels of a 1x8x8 image as its features (logits unused)."""

    num_features = 64

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_uint8(images).float().flatten(1)  # as Inception, floats in [-1, 1] become uint8 first
        return x, x[:, :10]

    def protocol(self) -> dict:
        return {"network": "pixels", "resize": "none", "weights_sha256": None, "standard_weights": False}


def evaluate(generate, reference: RefStats, num: int = 600) -> dict:
    metrics = ["precision", "recall", "density", "coverage"]
    return Evaluator(metrics, num_samples=num, reference=reference, inception=PixelFeatures(), batch_size=64)(generate)


def test_a_collapsed_generator_has_recall_and_coverage_near_zero_and_precision_high() -> None:
    x, _ = digits()
    images = torch.from_numpy(x).view(-1, 1, 8, 8) / 8 - 1  # digits' pixels 0..16 -> [-1, 1]
    real = ((images[:900] + 1) * 127.5).round().flatten(1).numpy()  # the features of the uint8 images
    reference = RefStats("digits", real.mean(0), np.cov(real, rowvar=False), real, {"num_images": 900})

    def healthy(indices):  # other digits of every class
        return images[[900 + i for i in indices]]

    def collapsed(indices):  # one digit, with a little pixel noise
        noise = torch.randn(len(indices), 1, 8, 8, generator=torch.Generator().manual_seed(indices[0])) * 0.01
        return (images[3].expand(len(indices), 1, 8, 8) + noise).clamp(-1, 1)

    good, bad = evaluate(healthy, reference), evaluate(collapsed, reference)
    assert good["recall"] > 0.5 and good["coverage"] > 0.5 and good["precision"] > 0.5
    assert bad["recall"] < 0.05 and bad["coverage"] < 0.05  # the collapse shows ...
    assert bad["precision"] > 0.9  # ... although every sample looks real
    assert bad["protocol"]["pr_k"] == 3 and bad["protocol"]["dc_k"] == 5 and bad["protocol"]["prdc_features"] == "pool"


def test_prdc_needs_reference_features_and_enough_samples() -> None:
    stats = RefStats("ref.npz", np.zeros(64), np.eye(64), None, {})
    with pytest.raises(BigtrainError, match="ref.npz: has no features for RECALL.*--features"):
        MetricSet(["recall"], reference=stats, num_samples=10, num_features=64)
    stats.features = np.zeros((20, 64), np.float32)
    with pytest.raises(BigtrainError, match="k = 3 .* and 5 .* below the sample counts \\(4 generated"):
        MetricSet(["density"], reference=stats, num_samples=4, num_features=64)
