"""DeepSpeed configs per player (generated or from JSON), their checks, and the file checks
that stand in for weights_only loading. Config generation needs no deepspeed installed."""
import json
from pathlib import Path

import pytest
import torch

from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
from bigtrain.engine import checkpoint
from bigtrain.engine.backends import build_backend
from bigtrain.engine.backends.deepspeed_config import ACCELERATE_DS_CONFIG_FILE, ACCELERATE_DS_ZERO_STAGE, FP16_LOSS_SCALING, deepspeed_config
from bigtrain.errors import CheckpointError, ConfigError

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def _config(name="G", opt=None, backend=None, train=None, world=2, env=None):
    return deepspeed_config(name, opt or OptimConfig(), backend or BackendConfig(kind="deepspeed"), train or TrainConfig(batch_size=32, micro_batch=4), world, env or {})


def _json(tmp_path, data, name="ds.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_generated_config_follows_the_yaml():
    cfg, source = _config("D", opt=OptimConfig(grad_clip=0.5), backend=BackendConfig(kind="deepspeed", zero_stage=3), train=TrainConfig(batch_size=32, micro_batch=4, precision="bf16"))
    assert source == "backend.zero_stage"
    # 32 = micro 4 x 4 rounds x 2 ranks: DeepSpeed's accumulation is the loop's rounds
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (32, 4, 4)
    assert cfg["zero_optimization"] == {"stage": 3}
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["gradient_clipping"] == 0.5
    assert "optimizer" not in cfg and cfg["zero_allow_untested_optimizer"]  # client optimizer from optim.d


def test_fp16_gives_every_engine_its_own_dynamic_loss_scale():
    train = TrainConfig(batch_size=16, precision="fp16")
    g, _ = _config("G", train=train)
    d, _ = _config("D", train=train)
    assert g["fp16"] == d["fp16"] == {"enabled": True, **FP16_LOSS_SCALING}
    assert g["fp16"]["loss_scale"] == 0  # 0 = dynamic, as torch's GradScaler
    assert g["fp16"] is not d["fp16"] and g is not d


def test_player_json_fills_auto_keys_and_keeps_its_own_settings(tmp_path):
    path = _json(tmp_path, {"train_batch_size": "auto", "zero_optimization": {"stage": 2, "overlap_comm": True}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "gradient_clipping": 1.0})
    cfg, source = _config("G", backend=BackendConfig(kind="deepspeed", zero_stage=1, g_config=path))
    assert source == "backend.g_config"
    assert cfg["train_batch_size"] == 32 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": True}  # the JSON wins over backend.zero_stage
    assert cfg["optimizer"]["type"] == "AdamW" and "zero_allow_untested_optimizer" not in cfg
    assert cfg["gradient_clipping"] == 1.0
    d_cfg, d_source = _config("D", backend=BackendConfig(kind="deepspeed", zero_stage=1, g_config=path))
    assert d_source == "backend.zero_stage" and d_cfg["zero_optimization"] == {"stage": 1}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train_batch_size": 64}, "backend.g_config: train_batch_size 64 != train.batch_size 32"),
        ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu 8 != train.micro_batch 4"),
        ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps 1 != accumulation rounds"),
        ({"bf16": {"enabled": True}}, "bf16.enabled is true but train.precision is fp32"),
        ({"gradient_clipping": 2.0}, "gradient_clipping 2.0 != optim.g.grad_clip 1.0"),
        ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage 4 is not one of 0, 1, 2, 3"),
    ],
)
def test_player_json_that_disagrees_with_the_yaml_is_refused(tmp_path, data, message):
    backend = BackendConfig(kind="deepspeed", g_config=_json(tmp_path, data))
    with pytest.raises(ConfigError) as err:
        _config("G", opt=OptimConfig(grad_clip=1.0), backend=backend)
    assert message in str(err.value)


def test_unreadable_json_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="backend.d_config: .*not found"):
        _config("D", backend=BackendConfig(kind="deepspeed", d_config=str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{stage: 2")
    with pytest.raises(ConfigError, match="backend.d_config: .*not a readable JSON"):
        _config("D", backend=BackendConfig(kind="deepspeed", d_config=str(bad)))


def test_accelerate_launch_config_file_applies_to_players_without_their_own(tmp_path):
    env = {ACCELERATE_DS_CONFIG_FILE: _json(tmp_path, {"zero_optimization": {"stage": 3}}, "launch.json")}
    cfg, source = _config("D", env=env)
    assert source == ACCELERATE_DS_CONFIG_FILE and cfg["zero_optimization"]["stage"] == 3
    own = _json(tmp_path, {"zero_optimization": {"stage": 1}})
    cfg, source = _config("G", backend=BackendConfig(kind="deepspeed", g_config=own), env=env)
    assert source == "backend.g_config" and cfg["zero_optimization"]["stage"] == 1


def test_accelerate_launch_zero_stage_must_agree():
    assert _config(env={ACCELERATE_DS_ZERO_STAGE: "2"}, backend=BackendConfig(kind="deepspeed", zero_stage=2))[0]["zero_optimization"] == {"stage": 2}
    with pytest.raises(ConfigError, match="backend.zero_stage: is 1 but accelerate launch asks for ZeRO-3"):
        _config(env={ACCELERATE_DS_ZERO_STAGE: "3"}, backend=BackendConfig(kind="deepspeed", zero_stage=1))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_launch_examples_are_valid_for_any_batch_and_precision(stage):
    path = LAUNCH / "deepspeed" / f"zero{stage}.json"
    for precision in ("fp32", "bf16", "fp16"):
        cfg, _ = _config(backend=BackendConfig(kind="deepspeed", g_config=str(path)), train=TrainConfig(batch_size=64, micro_batch=8, precision=precision))
        assert cfg["zero_optimization"]["stage"] == stage and cfg["gradient_accumulation_steps"] == 4
        assert cfg[precision]["enabled"] if precision != "fp32" else not (cfg["bf16"]["enabled"] or cfg["fp16"]["enabled"])
    accelerate_cfg = (LAUNCH / f"deepspeed_zero{stage}.yaml").read_text()
    assert "distributed_type: DEEPSPEED" in accelerate_cfg and f"launch/deepspeed/zero{stage}.json" in accelerate_cfg


def test_accelerate_backend_refuses_a_deepspeed_launch(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="backend.kind"):
        build_backend(BackendConfig(kind="accelerate"), TrainConfig(batch_size=4))


def test_export_and_raw_g_fallback_for_engine_checkpoints(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    G = torch.nn.Linear(2, 2)
    ds_state = {"engine": "deepspeed", "zero_stage": 2, "precision": "fp32", "tag": "engine"}
    trainer = {"players": {"G": ds_state, "D": {"net": {"w": torch.ones(1)}}}, "G_ema": None, "counters": {"step": 1, "nimg": 8}, "config": {}, "data_info": {}}
    folder = checkpoint.save(root, "step-00000001", trainer_state=trainer, rank_state={"data_pos": 1}, rank=0, keep_last=2)
    with pytest.raises(CheckpointError, match="run `bigtrain export --checkpoint"):
        checkpoint.player_weights(folder, trainer, "G", use_ema=True)

    seen = []
    out = checkpoint.export(folder, checkpoint.export_folder(folder), lambda d, s: seen.append((d, s)) or G.state_dict())
    assert out == tmp_path / "run" / "export" / "step-00000001" / "trainer.pt"
    assert seen == [(folder / "G", ds_state)]
    plain = torch.load(out, weights_only=True)
    assert torch.equal(plain["players"]["G"]["net"]["weight"], G.weight) and plain["players"]["D"]["net"]["w"].item() == 1.0
    assert plain["counters"] == trainer["counters"]
    weights, from_ema = checkpoint.player_weights(folder, trainer, "G", use_ema=True)
    assert torch.equal(weights["weight"], G.weight) and not from_ema
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        checkpoint.export(folder, checkpoint.export_folder(folder), lambda d, s: G.state_dict())
    assert checkpoint.list_checkpoints(root) == [folder]  # the export is no checkpoint to resume or prune


# ---- with deepspeed installed -----------------------------------------------------------------


class NotAllowed:
    """Stands for any class a malicious pickle could name."""


def test_deepspeed_files_are_checked_before_deepspeed_loads_them(tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from bigtrain.engine.backends.deepspeed_files import verify_deepspeed_files

    with pytest.raises(CheckpointError, match="no DeepSpeed checkpoint files"):
        verify_deepspeed_files(tmp_path)
    torch.save({"loss_scaler": LossScaler(1.0), "state": {"exp_avg": torch.zeros(3)}}, tmp_path / "zero_pp_rank_0_optim_states.pt")
    verify_deepspeed_files(tmp_path)  # DeepSpeed's own classes are allowed
    bad = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "extra": NotAllowed()}, bad)
    with pytest.raises(CheckpointError) as err:
        verify_deepspeed_files(tmp_path)
    assert str(bad) in str(err.value) and "NotAllowed" in str(err.value)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: .*corrupt or truncated"):
        verify_deepspeed_files(tmp_path)


@pytest.mark.parametrize("stage, files, missing", [
    (0, [], "mp_rank_00_model_states.pt"),
    (2, ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"], "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
    (3, ["zero_pp_rank_0_mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"], "zero_pp_rank_1_mp_rank_00_model_states.pt"),
])
def test_a_deepspeed_folder_missing_a_rank_file_is_refused_on_every_rank(tmp_path, stage, files, missing):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from bigtrain.engine.backends.deepspeed_files import verify_deepspeed_files

    torch.save({"x": torch.zeros(1)}, tmp_path / "zero_to_fp32_placeholder.pt")
    for name in files:
        torch.save({"x": torch.zeros(1)}, tmp_path / name)
    with pytest.raises(CheckpointError, match=f"{missing}: file missing"):
        verify_deepspeed_files(tmp_path, stage, world_size=2)
    torch.save({"x": torch.zeros(1)}, tmp_path / missing)
    verify_deepspeed_files(tmp_path, stage, world_size=2)  # complete now
    verify_deepspeed_files(tmp_path, stage, world_size=1)


def test_fp16_on_a_cpu_without_fp16_support_is_a_config_error():
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from deepspeed.accelerator import get_accelerator

    from bigtrain.engine.backends.deepspeed import DeepSpeedBackend

    accel = get_accelerator()
    if accel.device_name() != "cpu" or accel.is_fp16_supported():
        pytest.skip("this device supports fp16 under DeepSpeed")
    with pytest.raises(ConfigError, match="train.precision: DeepSpeed does not support fp16 on this device"):
        DeepSpeedBackend(BackendConfig(kind="deepspeed"), TrainConfig(batch_size=4, precision="fp16"))


def test_a_first_deepspeed_start_on_cpu_builds_no_cpp_op(tmp_path):
    """DeepSpeed's CPU backend compiles its shared-memory all-reduce (inference only) when the
    process group starts: 2 minutes on a fresh machine, and a wait without end on the lock file a
    killed build leaves. bigtrain skips it: a fresh extensions folder stays empty."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from tests.conftest import run_cli, tiny_config, write_config, write_images_npz

    data = write_images_npz(tmp_path / "d.npz", n=32, res=8)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, data, train={"total_kimg": 0.032}))
    extensions = tmp_path / "torch_extensions"
    env = {"TORCH_EXTENSIONS_DIR": str(extensions), "DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": "1"}
    out = run_cli("train", str(config), "backend.kind=deepspeed", env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000002").is_dir()
    built = sorted(p.name for p in extensions.rglob("*") if p.is_file()) if extensions.exists() else []
    assert built == [], built
    assert "shm_comm" not in out.stdout + out.stderr
