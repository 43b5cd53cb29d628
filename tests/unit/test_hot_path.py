"""The GPU hot path's options, checked on the CPU (issue 13, point 5): latents drawn by a
generator on the backend's device, real batches prefetched one ahead (`data.prefetch`),
channels-last nets and batches (`train.channels_last`), torch.compile per player
(`train.compile`), and an iteration of BigGAN with fused Adam reading nothing back to the host."""
import pytest
import torch

from bigtrain.families import load_config
from bigtrain.engine.build import Prefetcher
from bigtrain.engine.loop import Trainer
from bigtrain.errors import ConfigError
from tests.conftest import write_images_npz
from tests.faults import harness


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images_npz(tmp_path_factory.mktemp("hp") / "d.npz", n=64, res=32, channels=1, classes=10)


def trainer(tmp_path, data, name, *overrides, kimg=0.096) -> Trainer:
    cfg = load_config("configs/biggan_digits.yaml", [f"data.path={data}", f"run.out_dir={tmp_path}", f"run.name={name}", f"train.total_kimg={kimg}",
                                                     "train.batch_size=16", "log.progress_bar=false", "log.every_kimg=0.016", "checkpoint.every_kimg=0.048",
                                                     "model.g.width=4", "model.d.width=8", "model.g.shared_dim=8", "train.precision=fp32", *overrides])
    return Trainer(cfg)


def weights(t: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for player in t.players.values() for p in player.net.parameters()])


def test_prefetcher_is_map_one_batch_ahead():
    taken = []

    def source():
        for i in range(5):
            taken.append(i)
            yield i

    it = Prefetcher(lambda v: v * 10, source())
    assert next(it) == 0 and taken == [0, 1]  # batch 1 is already on its way
    assert list(it) == [10, 20, 30]  # then as map; the last one was only prefetched


def test_prefetching_trains_bit_for_bit_alike_and_resumes_exactly(tmp_path, data):
    plain = trainer(tmp_path, data, "plain")
    plain.train()
    ahead = trainer(tmp_path, data, "ahead", "data.prefetch=true")
    ahead.train()
    assert torch.equal(weights(plain), weights(ahead))
    assert plain.counters.data_pos == ahead.counters.data_pos == {"real": 96}  # taken, not prefetched
    assert harness.losses(tmp_path / "plain") == harness.losses(tmp_path / "ahead")
    ckpt = tmp_path / "ahead" / "checkpoints" / "step-00000003"
    resumed = trainer(tmp_path, data, "resumed", "data.prefetch=true", f"train.resume={ckpt}")
    resumed.train()
    assert torch.equal(weights(resumed), weights(ahead))


def test_latents_come_from_a_generator_on_the_device(tmp_path, data):
    t = trainer(tmp_path, data, "lat")
    assert t.latent_gen.device == t.backend.device
    drawn = t.recipe.latents(4, t.latent_gen, t.backend.device)
    assert drawn["z"].device == t.backend.device and drawn["y"].device == t.backend.device


def test_channels_last_nets_and_batches(tmp_path):
    data = write_images_npz(tmp_path / "rgb.npz", n=64, res=32, channels=3, classes=10)  # one channel is both layouts at once
    plain = trainer(tmp_path, data, "plain", "data.channels=3")  # the config is for grey digits
    plain.train()
    cl = trainer(tmp_path, data, "cl", "data.channels=3", "train.channels_last=true")
    conv = cl.players["D"].net.blocks[1].conv1.parametrizations.weight.original
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    batch = cl.to_device(next(cl.source.batches(0)))["x"]  # what a stream yields (the streams stay untouched)
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    cl.train()
    assert (weights(plain) - weights(trainer(tmp_path, data, "init", "data.channels=3"))).abs().max() > 1e-3  # it trained
    # the same maths in another memory layout: float rounding only (Adam's steps are ~lr = 2e-4 each)
    torch.testing.assert_close(weights(cl), weights(plain), rtol=0, atol=5e-3)


# slow (the default run's 15-minute budget; torch.compile is for GPU runs)
@pytest.mark.slow
def test_compiled_players_train_as_the_eager_ones(tmp_path, data):
    eager = trainer(tmp_path, data, "eager", kimg=0.048)
    eager.train()
    comp = trainer(tmp_path, data, "comp", "train.compile=[g,d]", "train.compile_backend=eager", kimg=0.048)  # eager: dynamo traces, no codegen
    assert comp.players["G"].net._compiled_call_impl is not None and getattr(comp.emas["G"].module, "_compiled_call_impl", None) is None
    comp.train()
    torch.testing.assert_close(weights(comp), weights(eager), rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides, key", [(["train.compile=[h]"], "train.compile"), (["train.compile=[g]", "train.compile_backend=nope"], "train.compile_backend"),
                                            (["train.channels_last=true", "backend.kind=deepspeed"], "train.channels_last: is for the accelerate backend")])
def test_compile_settings_are_checked(tmp_path, data, overrides, key):
    with pytest.raises(ConfigError, match=key):
        trainer(tmp_path, data, "bad", *overrides)


HOST_READS = (*harness.HOST_READS, "cpu")


def test_a_biggan_iteration_with_fused_adam_reads_nothing_back_to_the_host(tmp_path, data, monkeypatch):
    """Fused Adam (the CUDA default) skips non-finite steps on the device; with ortho reg, EMA,
    prefetching and channels-last on, three iterations make no host read, no `.cpu()` and no
    tensor from host values (on a GPU each of these waits for the device)."""
    from bigtrain.tracking import Tracker

    t = trainer(tmp_path, data, "reads", "optim.g.fused=true", "optim.d.fused=true", "data.prefetch=true", "train.channels_last=true", "biggan.ortho_g=1e-4")
    tracker = Tracker(t.run_dir, is_main=False, reduce_mean=lambda v: v, total_img=640)
    t.iteration(tracker)
    reads = harness.count_host_reads(monkeypatch, lambda: [t.iteration(tracker) for _ in range(3)], names=HOST_READS)
    assert reads == [], reads
    t.backend.close()
