"""Periodic evaluation inside `bigtrain train`: metrics.jsonl and TensorBoard get eval/*, with
the protocol; a better FID keeps its checkpoint as best/."""
import json

import pytest

from tests.conftest import run_cli, tiny_config, write_config, write_images_npz


def _eval_rows(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


# slow (the default run's 15-minute budget; periodic FID and the best checkpoint are in the default run)
@pytest.mark.slow
def test_periodic_inception_score_with_protocol(tmp_path, sharp_weights):
    weights = sharp_weights
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    cfg = tiny_config(tmp_path, data, train={"total_kimg": 0.064}, eval={"every_kimg": 0.032, "num_samples": 20, "metrics": ["is"], "inception_weights": str(weights), "batch_size": 10},
                      checkpoint={"every_kimg": 0.064})
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _eval_rows(tmp_path / "runs" / "tiny")
    assert [r["kimg"] for r in rows] == [0.032, 0.064]
    for r in rows:
        assert "eval/fid" not in r
        generated = r["eval/protocol"]["generated"]
        assert generated["num_images"] == 20 and generated["ema"] is True
    # the number logged in training is the one `bigtrain eval` computes from that checkpoint
    # (same latents, same Inception net); G_ema moved between the two evaluations
    again = run_cli("eval", "--checkpoint", str(tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000004"), "--metrics", "is", "--num", "20", "--batch-size", "10", "--weights", str(weights), "--device", "cpu")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["is"] == pytest.approx(rows[1]["eval/is"], rel=1e-5)
    assert all(r["eval/is"] > 1.001 for r in rows) and rows[0]["eval/is"] != rows[1]["eval/is"]
    assert not (tmp_path / "runs" / "tiny" / "checkpoints" / "best").exists()  # no FID, no best


def test_bad_eval_config_is_refused(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data))
    out = run_cli("train", str(cfg), "eval.every_kimg=1", "eval.metrics=[fid]")
    assert out.returncode == 2 and "eval.ref_stats" in out.stderr
    out = run_cli("train", str(cfg), "eval.metrics=[fid,lpips]")
    assert out.returncode == 2 and "eval.metrics" in out.stderr
    out = run_cli("train", str(cfg), "eval.every_kimg=1", "eval.metrics=[is,precision,coverage]")
    assert out.returncode == 2 and "precision, coverage need reference statistics" in out.stderr


@pytest.mark.slow  # 2048-d Inception features of the reference and of each evaluation: ~1 min on 2 cores
def test_periodic_precision_recall_density_coverage(tmp_path, weights):
    """Issue 26: the PRDC metrics in eval.metrics, logged at each periodic evaluation, equal to what
    `bigtrain eval` computes from the same checkpoint."""
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    stats = tmp_path / "stats.npz"
    made = run_cli("ref-stats", str(data), str(stats), "--weights", str(weights), "--no-download", "--features")
    assert made.returncode == 0, made.stderr[-2000:]
    prdc = ["precision", "recall", "density", "coverage"]
    cfg = tiny_config(tmp_path, data, train={"total_kimg": 0.064}, eval={"every_kimg": 0.032, "num_samples": 16, "metrics": prdc, "ref_stats": str(stats), "inception_weights": str(weights)},
                      checkpoint={"every_kimg": 0.064})
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _eval_rows(tmp_path / "runs" / "tiny")
    assert [r["kimg"] for r in rows] == [0.032, 0.064]
    assert all(0 <= r[f"eval/{m}"] for r in rows for m in prdc)
    again = run_cli("eval", "--checkpoint", str(tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000004"), "--metrics", ",".join(prdc), "--num", "16",
                    "--ref-stats", str(stats), "--weights", str(weights), "--device", "cpu")
    assert again.returncode == 0, again.stderr[-2000:]
    for m in prdc:
        assert json.loads(again.stdout)[m] == pytest.approx(rows[1][f"eval/{m}"], rel=1e-6), m


@pytest.mark.slow  # a 2048-d FID takes 30-60 s on a 2-core CPU
def test_best_fid_checkpoint_is_kept(tmp_path, weights):
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    stats = tmp_path / "stats.npz"
    made = run_cli("ref-stats", str(data), str(stats), "--weights", str(weights), "--no-download")
    assert made.returncode == 0, made.stderr[-2000:]
    cfg = tiny_config(tmp_path, data, train={"total_kimg": 0.064}, eval={"every_kimg": 0.032, "num_samples": 8, "metrics": ["fid"], "ref_stats": str(stats), "inception_weights": str(weights)})
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "tiny"
    rows = _eval_rows(run)
    assert len(rows) == 2 and all(r["eval/fid"] > 0 for r in rows)
    best = json.loads((run / "checkpoints" / "best" / "eval.json").read_text())
    assert best["eval/fid"] == min(r["eval/fid"] for r in rows)
    assert (run / "checkpoints" / "best" / "trainer.pt").is_file()
