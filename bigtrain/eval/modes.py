"""Mode coverage of 2-D Gaussian-mixture samples (the 2D-grid / 2D-ring metrics of VEEGAN and PacGAN).

The rule is that of PacGAN's reference code, `synthetic_data_experiments/PacGAN/pacgan/extensions.py`,
`MetricLogger.do` (github.com/fjxmlzn/PacGAN), which grades the 2500 samples that
`GraphLogger.do` draws after each epoch (`num_log_figure_sample: 2500` in
`2DGrid_GAN&PacGAN/config.py`):

* each sample goes to the mode nearest in std-scaled distance, sqrt(sum((x - mu)^2 / var));
* it is high quality when that distance is < 3 (`dis_thre=3`, strict), i.e. within 3 std;
* "mode coverage" is the number of modes holding at least one high-quality sample
  (`len(numpy.nonzero(detail_of_coverage)[0])`): one sample is enough;
* "good points percentage" is high-quality samples / all samples.

The reference repository has no KL function: MetricLogger logs `entropy of coverage`,
`scipy.stats.entropy(p)` (natural log) of p = high-quality counts / their sum, and the reverse KL
of PacGAN's Table 1 is, against a uniform target over K modes, KL(p || uniform) = log K - H(p).
That is what `kl` is: sum over modes with p > 0 of p log(p K), in nats. Empty modes add 0
(0 log 0 = 0, scipy's convention), so the value is finite and reaches log K for total collapse;
with no high-quality sample p is undefined and `kl` is NaN (as the reference's 0/0 gives).

Pure numpy: it takes numpy arrays or torch tensors and imports nothing from bigtrain.
"""

from __future__ import annotations

import math

import numpy as np

PACGAN_NUM_SAMPLES = 2500  # samples graded per evaluation in PacGAN / VEEGAN
PACGAN_THRESHOLD = 3.0  # high quality: within this many std of the nearest mode
_CHUNK = 65536  # rows per distance block, so N x K distances never all sit in memory


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, possibly on a GPU
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def mode_coverage(samples, modes, std: float, threshold: float = PACGAN_THRESHOLD) -> dict:
    """Grade samples [N, D] against mixture modes [K, D] of isotropic std `std`.

    Returns {"modes": captured modes, "high_quality": fraction of high-quality samples,
    "kl": KL(high-quality mode histogram || uniform) in nats, "num_samples": N,
    "counts": high-quality samples per mode, K ints in the order of `modes`}.
    Non-finite samples are never high quality.
    """
    x, mu = _as_numpy(samples), _as_numpy(modes)
    if x.ndim != 2 or mu.ndim != 2 or x.shape[1] != mu.shape[1]:
        raise ValueError(f"samples must be [N, D] and modes [K, D], got {x.shape} and {mu.shape}")
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    counts = np.zeros(len(mu), dtype=np.int64)
    for start in range(0, len(x), _CHUNK):
        block = x[start : start + _CHUNK]
        dist2 = ((block[:, None, :] - mu[None, :, :]) ** 2).sum(-1) / std**2  # [B, K], in std^2
        finite = np.isfinite(block).all(axis=1)
        nearest = np.argmin(np.where(finite[:, None], dist2, np.inf), axis=1)
        good = finite & (dist2[np.arange(len(block)), nearest] < threshold**2)
        counts += np.bincount(nearest[good], minlength=len(mu))
    total = int(counts.sum())
    if total:
        p = counts[counts > 0] / total
        kl = float(np.sum(p * np.log(p * len(mu))))
    else:
        kl = math.nan
    return {
        "modes": int(np.count_nonzero(counts)),
        "high_quality": total / len(x) if len(x) else math.nan,
        "kl": kl,
        "num_samples": int(len(x)),
        "counts": [int(c) for c in counts],
    }
