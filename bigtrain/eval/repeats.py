"""`bigtrain eval --repeats K`: K evaluations with seeds seed .. seed + K - 1, as one result.

clean-fid's leaderboard reports mean +- std over 10 evaluation runs and StudioGAN re-evaluates
its best checkpoint `--num_eval` times; one evaluation's value alone hides the sampling noise.
Every metric of the result becomes the mean over the K runs, and `repeats` holds, per metric,
its mean, its standard deviation over the runs (numpy's default, ddof = 0, as StudioGAN's
np.std) and the K values in seed order. With K = 1 the result is the single evaluation's.
"""

from __future__ import annotations

import numpy as np


def _numeric(value) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize(results: list[dict], seeds: list[int]) -> dict:
    """One result from the results of `seeds` (same keys in each): metrics -> their mean,
    `repeats` -> {metric: {mean, std, values}}, the protocol of the first run with `repeats`
    and `seeds` added, the warnings of all runs."""
    first = results[0]
    protocol = {**first["protocol"], "repeats": len(results), "seeds": list(seeds)}
    if len(results) == 1:
        return {**first, "protocol": protocol}
    out: dict = {}
    spread: dict = {}
    for key, value in first.items():
        if key in ("protocol", "warnings") or not _numeric(value):
            out[key] = value
            continue
        values = [r[key] for r in results]
        mean = np.mean(np.asarray(values, dtype=np.float64), axis=0)
        std = np.std(np.asarray(values, dtype=np.float64), axis=0)
        out[key] = mean.tolist()
        spread[key] = {"mean": mean.tolist(), "std": std.tolist(), "values": values}
    out["repeats"] = spread
    out["protocol"] = protocol
    out["warnings"] = list(dict.fromkeys(w for r in results for w in r.get("warnings", [])))
    return out
