"""DeepSpeed backend on two CPU processes (gloo): every ZeRO stage against Accelerate DDP,
bf16, D untouched by G's update, exact resume under ZeRO-2, export -> sample without DeepSpeed.

One torchrun launch trains all the runs (tests/dist/ds_worker.py); the tests below read its
results (no C++ op is compiled on CPU: see docs/deepspeed.md).
fp16 is not tested here: DeepSpeed refuses fp16 on CPUs without AVX512-FP16/AMX (see
tests/unit/test_deepspeed_config.py for the fp16 config and the clear error).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_config, write_config, write_images_npz
from tests.dist.test_ddp import _free_port, torchrun

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[deepspeed])")
# the first test also waits for the shared launch, which on a fresh machine compiles DeepSpeed's op
# slow as a whole (about 2.5 minutes; the default run's 15-minute budget): the default run keeps
# DeepSpeed in the golden cases gan_mlp-ds2 and dcgan_digits-ds1, tests/unit/test_resume_plan.py (ZeRO-2),
# tests/dist/test_recipes_dist.py (GMAN under ZeRO-2), tests/faults/test_nonfinite.py and
# tests/unit/test_deepspeed_config.py
pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.timeout(1200)]

WORKER = Path(__file__).with_name("ds_worker.py")
DS_ENV = {"ACCELERATE_USE_CPU": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
STAGES = (0, 1, 2, 3)
HALF_KIMG = 0.032  # 2 of the 4 iterations: where the resumed run starts
CLIP = 0.01  # WGAN's weight clipping bound (below DCGAN's initial weights' N(0, 0.02) spread)
PENALTY_STAGES = (0, 1, 2)  # ZeRO-3 refuses gradient penalties (see the last tests)
# the other classic families through DeepSpeed engines (the learning tests run them under DDP)
FAMILY_RUNS = {
    ("began", 3): ["loss.type=began", "model.g.arch=began", "model.d.arch=began", "model.g.h_dim=8", "model.d.h_dim=8", "model.num_classes=0", "optim.d.type=adam"],
    ("acgan", 2): ["model.d.cond=acgan"],
    ("cgan_concat", 3): ["model.g.cond=concat", "model.d.cond=concat"],
    ("lsgan_diffaugment", 2): ["loss.type=lsgan", "augment.policy=color,translation,cutout"],
    ("hinge_sn", 3): ["loss.type=hinge", "model.d.spectral_norm=true", "train.precision=bf16"],
}
# "3p": ZeRO-3 with DeepSpeed's default persistence threshold, which keeps small parameters whole
CLIP_RUNS = (("0", "fp32"), ("1", "fp32"), ("2", "fp32"), ("3", "fp32"), ("3p", "fp32"), ("0", "bf16"), ("1", "bf16"), ("3", "bf16"))


def _losses(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/D"], r["loss/G"]) for r in rows if "loss/D" in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, weights):
    """Train every run in one launch; returns (folder, config path, {name: result})."""
    tmp = tmp_path_factory.mktemp("ds")
    data = write_images_npz(tmp / "d.npz", n=64, res=16, classes=4)
    # DCGAN with BatchNorm in G; batch 16 = micro 4 x 2 rounds x 2 ranks; D uses RMSprop (a
    # client optimizer ZeRO does not know) and G clips its gradient norm
    cfg = tiny_config(
        tmp, data, data={"resolution": 16}, train={"total_kimg": 0.064, "batch_size": 16, "micro_batch": 4},
        model={"num_classes": 4, "g": {"arch": "dcgan", "width": 8}, "d": {"arch": "dcgan", "width": 8}},
        optim={"g": {"grad_clip": 0.01}, "d": {"type": "rmsprop"}}, checkpoint={"every_kimg": HALF_KIMG},
        augment={"policy": "translation,cutout"},  # draws from the torch RNG, which a resume must restore
    )
    config = write_config(tmp / "c.yaml", cfg)
    # ZeRO-3 keeps parameters under 1e5 elements whole by default (all of this small model's):
    # a player JSON that partitions every parameter makes the ZeRO-3 runs mean something
    zero3 = tmp / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    specs = [{"name": "ddp_fp32", "config": str(config), "overrides": ["run.name=ddp_fp32"]}]
    for precision in ("fp32", "bf16"):
        for stage in STAGES:
            name = f"zero{stage}_{precision}"
            engine = [f"backend.g_config={zero3}", f"backend.d_config={zero3}"] if stage == 3 else [f"backend.zero_stage={stage}"]
            specs.append({"name": name, "config": str(config), "overrides": [f"run.name={name}", "backend.kind=deepspeed", *engine, f"train.precision={precision}"]})
    # WGAN weight clipping: the clamp must reach the optimizer's master copy at every stage
    clip = ["loss.type=wgan", f"loss.clip_d_weights={CLIP}", "train.d_steps=2"]
    specs.append({"name": "clip_ddp", "config": str(config), "overrides": ["run.name=clip_ddp", *clip]})
    for stage, precision in CLIP_RUNS:
        name = f"clip_zero{stage}_{precision}"
        engine = [f"backend.g_config={zero3}", f"backend.d_config={zero3}"] if stage == "3" else [f"backend.zero_stage={stage[0]}"]
        specs.append({"name": name, "config": str(config), "overrides": [f"run.name={name}", "backend.kind=deepspeed", *engine, f"train.precision={precision}", *clip]})
    # gradient penalties (a second-order backward) with 2 accumulation rounds: WGAN-GP in D's
    # main phase and lazy R1 in its own phase
    pen = ["loss.type=wgan", "loss.gp_weight=10", "loss.r1_gamma=1", "loss.r1_interval=2"]
    specs.append({"name": "pen_ddp", "config": str(config), "overrides": ["run.name=pen_ddp", *pen]})
    for stage in PENALTY_STAGES:
        specs.append({"name": f"pen_zero{stage}", "config": str(config), "overrides": [f"run.name=pen_zero{stage}", "backend.kind=deepspeed", f"backend.zero_stage={stage}", *pen]})
    for (family, stage), extra in FAMILY_RUNS.items():
        specs.append({"name": f"{family}_zero{stage}", "config": str(config), "overrides": [f"run.name={family}_zero{stage}", "backend.kind=deepspeed", f"backend.zero_stage={stage}", *extra]})
    # G itself evaluated at ZeRO-3 (no EMA): 5 samples in batches of 2 are 2 batches on one
    # rank and 1 on the other, yet every forward of a partitioned G is a collective
    evaluate = ["ema.enabled=false", f"eval.every_kimg={HALF_KIMG}", "eval.num_samples=5", "eval.batch_size=2", "eval.metrics=[is]", f"eval.inception_weights={weights}"]
    specs.append({"name": "eval_zero3", "config": str(config), "overrides": ["run.name=eval_zero3", "backend.kind=deepspeed", f"backend.g_config={zero3}", f"backend.d_config={zero3}", *evaluate]})
    specs.append({"name": "parts", "config": str(config), "overrides": ["run.name=parts", "backend.kind=deepspeed", "backend.zero_stage=2", f"train.total_kimg={HALF_KIMG}"]})
    (tmp / "runs.json").write_text(json.dumps(specs))
    proc = subprocess.run([*torchrun(), str(WORKER), str(tmp / "runs.json"), str(tmp)], capture_output=True, text=True, env={**os.environ, **DS_ENV}, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {s["name"]: torch.load(tmp / f"{s['name']}.pt", weights_only=True) for s in specs}
    return tmp, config, results


@pytest.mark.parametrize("stage", STAGES)
def test_zero_stage_matches_ddp_in_fp32(trained, stage):
    _, _, results = trained
    ddp, ds = results["ddp_fp32"], results[f"zero{stage}_fp32"]
    assert ds["backend"] == "DeepSpeedBackend" and ddp["backend"] == "AccelerateBackend"
    assert ds["step"] == ddp["step"] == 4 and ds["rounds"] == 2
    assert ds["max_rank_diff"] == 0.0 and ds["dtype"] == "torch.float32"
    assert ds["partitioned"] == (stage == 3) and not ddp["partitioned"]
    assert torch.equal(ds["initial"], ddp["initial"])
    for name in ("G", "D"):
        torch.testing.assert_close(ds["params"][name], ddp["params"][name], rtol=1e-5, atol=1e-6, msg=f"{name} at ZeRO-{stage}")
    # 4 Adam/RMSprop steps moved the weights well beyond the tolerance, so the match means something
    assert (ddp["params"]["D"] - ddp["initial"][-len(ddp["params"]["D"]):]).abs().max() > 1e-3
    assert (ddp["params"]["G"] - ddp["initial"][: len(ddp["params"]["G"])]).abs().max() > 1e-4


@pytest.mark.parametrize("stage", STAGES)
def test_bf16_trains_with_bf16_weights(trained, stage):
    tmp, _, results = trained
    r, fp32 = results[f"zero{stage}_bf16"], results[f"zero{stage}_fp32"]
    assert r["dtype"] == "torch.bfloat16" and r["max_rank_diff"] == 0.0
    flat = torch.cat(list(r["params"].values()))
    assert torch.isfinite(flat).all() and not torch.equal(flat, r["initial"])
    # the same training as in fp32 up to bf16 rounding: 4 steps moved the fp32 weights by d,
    # bf16 lands within a fraction of d of them (no update at all would be 100 % of d)
    flat32 = torch.cat(list(fp32["params"].values()))
    assert (flat - flat32).norm() < 0.3 * (flat32 - fp32["initial"]).norm()
    losses = _losses(tmp / "runs" / f"zero{stage}_bf16")
    assert [s for s, _, _ in losses] == [1, 2, 3, 4] and all(abs(d) < 10 and abs(g) < 10 for _, d, g in losses)


@pytest.mark.parametrize("name", ["ddp_fp32", *(f"zero{s}_{p}" for p in ("fp32", "bf16") for s in STAGES)])
def test_g_step_leaves_d_untouched(trained, name):
    r = trained[2][name]
    assert r["d_unchanged"] and r["d_grads_none"]
    assert r["g_moved"] > 0  # the G step itself did update G


@pytest.mark.parametrize("stage,precision", CLIP_RUNS)
def test_wgan_weight_clipping_reaches_the_master_weights(trained, stage, precision):
    _, _, results = trained
    ddp, ds = results["clip_ddp"], results[f"clip_zero{stage}_{precision}"]
    d_initial = ddp["initial"][-len(ddp["params"]["D"]):]
    assert d_initial.abs().max() > 2 * CLIP  # the clamp had work to do
    # the weights the forwards use and the copy the optimizer updates both stay inside the bound
    # (bf16 weights sit at the bound rounded to bf16; the fp32 master copy at the bound itself)
    bound = CLIP if precision == "fp32" else float(torch.tensor(CLIP, dtype=torch.bfloat16))
    assert ds["params"]["D"].abs().max() <= bound and ds["d_master_abs_max"] <= CLIP
    # and right after a D step, before any checkpoint gathers the weights again (fully
    # partitioned ZeRO-3 keeps nothing in the module between gathers)
    assert ds["d_module_abs_max_after_step"] <= bound
    assert (ds["d_module_abs_max_after_step"] > 0) == (stage != "3")
    assert ds["max_rank_diff"] == 0.0
    if precision == "fp32":  # the same clipped training as under DDP
        torch.testing.assert_close(ds["params"]["D"], ddp["params"]["D"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ds["params"]["G"], ddp["params"]["G"], rtol=1e-5, atol=1e-6)
    # weights pinned at the bound: clipping acted on the trained values, not only at the start
    assert (ds["params"]["D"].abs() == bound).float().mean() > 0.05


@pytest.mark.parametrize("stage", PENALTY_STAGES)
def test_gradient_penalties_match_ddp(trained, stage):
    tmp, _, results = trained
    ddp, ds = results["pen_ddp"], results[f"pen_zero{stage}"]
    assert ds["rounds"] == 2 and ds["max_rank_diff"] == 0.0
    for name in ("G", "D"):
        torch.testing.assert_close(ds["params"][name], ddp["params"][name], rtol=1e-5, atol=1e-6, msg=f"{name} at ZeRO-{stage}")
    # the penalties were in the loss, and as large under DeepSpeed as under DDP
    rows = {run: [json.loads(l) for l in (tmp / "runs" / run / "metrics.jsonl").read_text().splitlines()] for run in ("pen_ddp", f"pen_zero{stage}")}
    for key in ("loss/D_gp", "loss/D_r1"):
        got, want = ([r[key] for r in rows[run] if key in r] for run in (f"pen_zero{stage}", "pen_ddp"))
        assert want and all(v > 0 for v in want)
        assert got == pytest.approx(want, rel=1e-4), key


@pytest.mark.parametrize("family,stage", list(FAMILY_RUNS))
def test_family_trains_under_deepspeed(trained, family, stage):
    r = trained[2][f"{family}_zero{stage}"]
    flat = torch.cat(list(r["params"].values()))
    assert r["backend"] == "DeepSpeedBackend" and r["step"] == 4 and r["max_rank_diff"] == 0.0
    assert torch.isfinite(flat).all() and (flat.float() - r["initial"].float()).abs().max() > 1e-4
    assert r["d_unchanged"] and r["d_grads_none"]


def test_uneven_eval_shares_of_a_partitioned_g_do_not_hang(trained):
    tmp, _, results = trained
    assert results["eval_zero3"]["partitioned"]
    rows = [json.loads(l) for l in (tmp / "runs" / "eval_zero3" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/is" in r]
    assert [r["kimg"] for r in evals] == [HALF_KIMG, 2 * HALF_KIMG]
    assert all(r["eval/is"] > 0.99 and r["eval/protocol"]["generated"]["num_images"] == 5 for r in evals)


def test_resume_under_zero2_continues_exactly(trained):
    tmp, config, _ = trained
    ckpt = tmp / "runs" / "parts" / "checkpoints"
    assert [p.name for p in ckpt.glob("step-*")] == ["step-00000002"]
    assert {p.name for p in (ckpt / "step-00000002").iterdir()} == {"trainer.pt", "rank0.pt", "rank1.pt", "G", "D"}
    out = run_cli("train", str(config), "run.name=parts", "backend.kind=deepspeed", "backend.zero_stage=2", env=DS_ENV, launcher=torchrun(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    expected, got = _losses(tmp / "runs" / "zero2_fp32"), _losses(tmp / "runs" / "parts")
    assert [s for s, _, _ in got] == [1, 2, 3, 4]
    assert got == expected  # bit-identical losses after the resume at step 2
    whole = torch.load(tmp / "runs" / "zero2_fp32" / "checkpoints" / "step-00000004" / "trainer.pt", weights_only=True)
    parts = torch.load(ckpt / "step-00000004" / "trainer.pt", weights_only=True)
    for k, v in whole["G_ema"].items():
        assert torch.equal(v, parts["G_ema"][k]), k


NO_DEEPSPEED = "import sys; sys.modules['deepspeed'] = None; from bigtrain.cli import main; sys.exit(main(sys.argv[1:]))"


def _sample_without_deepspeed(*args: str) -> None:
    """`bigtrain sample ...` in a process where `import deepspeed` fails."""
    out = subprocess.run([sys.executable, "-c", NO_DEEPSPEED, "sample", *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("stage", [0, 3])
def test_export_then_sample_without_deepspeed(trained, stage):
    tmp, _, results = trained
    r = results[f"zero{stage}_fp32"]
    run = tmp / "runs" / f"zero{stage}_fp32"
    step = run / "checkpoints" / "step-00000004"
    # raw G weights live in DeepSpeed's files: without an export, --no-ema says what to do
    refused = subprocess.run([sys.executable, "-c", NO_DEEPSPEED, "sample", "--run", str(run), "--no-ema", "--num", "8", "--out", str(tmp / f"no{stage}.npz")], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "bigtrain export" in refused.stderr

    exported = run_cli("export", "--run", str(run), env=DS_ENV)
    assert exported.returncode == 0, exported.stderr[-3000:]
    plain = run / "export" / step.name
    state = torch.load(plain / "trainer.pt", weights_only=True)
    assert set(state["players"]) == {"G", "D"} and all(set(p) == {"net"} for p in state["players"].values())

    for args, key in ((["--checkpoint", str(plain), "--no-ema"], "samples_G"), (["--run", str(run), "--no-ema"], "samples_G"), (["--run", str(run)], "samples_G_ema")):
        out_file = tmp / f"s{stage}-{len(list(tmp.glob('s*.npz')))}.npz"
        _sample_without_deepspeed(*args, "--num", "8", "--seed", "3", "--out", str(out_file))
        x = torch.from_numpy(np.load(out_file)["x"]).permute(0, 3, 1, 2)  # [N, C, H, W] uint8
        assert torch.equal(x, r[key]), (args, key)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_documented_launchers_start_two_deepspeed_ranks(tmp_path, launcher):
    """The commands of docs/deepspeed.md, with 2 CPU processes instead of 8 GPUs."""
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8, classes=4)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, train={"total_kimg": 0.032, "batch_size": 16}))
    port = str(_free_port())
    if launcher == "accelerate":  # the ZeRO-3 JSON comes from the accelerate config
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/deepspeed_zero3.yaml", "--num_processes", "2", "--main_process_port", port]
        args, stage = ["backend.kind=deepspeed"], 3
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", port, "--no_local_rank", "--module"]
        args, stage = ["backend.kind=deepspeed", "backend.zero_stage=2"], 2
    out = subprocess.run([*cmd, "bigtrain", "train", str(config), *args], capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000002"
    assert {"rank0.pt", "rank1.pt", "G", "D"} <= {p.name for p in ckpt.iterdir()}
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    assert state["players"]["G"]["zero_stage"] == state["players"]["D"]["zero_stage"] == stage


def test_periodic_eval_and_grids_of_a_bf16_engine_without_ema(tmp_path, weights):
    """No EMA: eval and the sample grid run G itself, whose DeepSpeed engine holds bf16 weights
    (one process, no launcher)."""
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    cfg = tiny_config(tmp_path, data, train={"total_kimg": 0.032, "precision": "bf16"}, ema={"enabled": False},
                      eval={"every_kimg": 0.032, "num_samples": 6, "metrics": ["is"], "inception_weights": str(weights), "batch_size": 6})
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)), "backend.kind=deepspeed", "backend.zero_stage=2", env=DS_ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/is" in r]
    assert len(evals) == 1 and evals[0]["eval/is"] > 0.99 and evals[0]["eval/protocol"]["generated"]["ema"] is False
    assert list((run / "samples").glob("*.png"))


def test_gradient_penalties_are_refused_at_zero3(tmp_path):
    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, train={"total_kimg": 0.032}))
    out = run_cli("train", str(cfg), "backend.kind=deepspeed", "backend.zero_stage=3", "loss.r1_gamma=1", env=DS_ENV)
    assert out.returncode == 2
    assert "config error: loss: gradient penalties" in out.stderr and "ZeRO-3" in out.stderr
