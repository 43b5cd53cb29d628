"""BigGAN's nets and recipe pieces (issue 13): counts, shapes, conditioning, the hierarchical
latent, orthogonal regularisation, spectral norm, fp32 numerics, batch norm, EMA."""
import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain import sampling
from bigtrain.families.biggan.nets import BigganDConfig, BigganGConfig
from bigtrain.config import EmaConfig
from bigtrain.families import load_config
from bigtrain.data import DataInfo
from bigtrain.engine.players import EMA, ema_beta
from bigtrain.errors import ConfigError
from bigtrain.families.biggan import nets as biggan
from bigtrain.families.biggan.nets import BigganDiscriminator, BigganGenerator, Statistics
from bigtrain.families import build_recipe
from bigtrain.families.biggan.recipe import ortho_gradient, ortho_penalty, regularized_weights


def count(net):
    return sum(p.numel() for p in net.parameters())


def nets(res, z_dim=64, classes=10, width=4, channels=3, g=None, d=None):
    info = DataInfo("image", (channels, res, res), classes)
    return (BigganGenerator(g or BigganGConfig(width=width, shared_dim=16), z_dim, classes, info),
            BigganDiscriminator(d or BigganDConfig(width=width), z_dim, classes, info))


@pytest.mark.parametrize("res,z_dim,classes,g_kw,want_g,want_d", [
    # BigGAN-PyTorch's 128 px nets at ch 96, z 120 in 6 chunks, shared 128 (also StudioGAN's logs)
    (128, 120, 1000, {}, 70_433_988, 87_982_370),
    # StudioGAN's CIFAR-10 BigGAN: z 80, ch 96, attention at 16x16 in G and D
    (32, 80, 10, {}, 9_416_196, 2_415_170),
])
def test_parameter_counts_match_the_references(monkeypatch, res, z_dim, classes, g_kw, want_g, want_d):
    monkeypatch.setattr(biggan, "orthogonal_init", lambda net: None)  # counts do not depend on it; QR of 158 M weights takes ~15 s
    info = DataInfo("image", (3, res, res), classes)
    assert count(BigganGenerator(BigganGConfig(**g_kw), z_dim, classes, info)) == want_g
    assert count(BigganDiscriminator(BigganDConfig(), z_dim, classes, info)) == want_d


def test_dry_run_prints_the_reference_counts(tmp_path):
    from tests.conftest import run_cli, write_images_npz
    data = write_images_npz(tmp_path / "cifar.npz", n=16, res=32, channels=3, classes=10)  # --dry-run reads the data's shape
    out = run_cli("train", "configs/biggan_cifar10.yaml", "data.source=npz", f"data.path={data}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "G 9,416,196  D 2,415,170" in out.stdout


@pytest.mark.parametrize("res", [32, 64, 128, 256, 512])
def test_shapes_at_every_resolution(res):
    blocks = len(biggan.LADDERS[res].g) - 1
    z_dim = 4 * (blocks + 1)
    G, D = nets(res, z_dim=z_dim, width=8)  # self-attention needs ch / 8 >= 1
    z, y = torch.randn(2, z_dim), torch.tensor([1, 3])
    x = G(z, y)
    assert x.shape == (2, 3, res, res) and x.abs().max() <= 1
    assert D(x, y).shape == (2,)
    # self-attention: at 64 from 128 px up (BigGAN-PyTorch's G_attn/D_attn 64), else res/2
    attends = [type(a).__name__ for a in G.attention].count("SelfAttention")
    assert attends == 1 and [type(a).__name__ for a in D.attention].count("SelfAttention") == 1


def test_class_embedding_changes_the_output_and_bypasses_spectral_norm():
    G, _ = nets(32)
    G.eval()
    z = torch.randn(4, 64)
    a, b = G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.ones(4, dtype=torch.long))
    assert (a - b).abs().mean() > 1e-3
    assert not hasattr(G.shared, "parametrizations")  # BGP: no SN on G's shared embedding
    assert hasattr(G.linear, "parametrizations")
    # a class embedding given directly is what y's embedding gives (for class interpolation)
    assert torch.equal(G(z, class_embedding=G.embed(torch.ones(4, dtype=torch.long))), b)


def test_every_z_chunk_reaches_its_block():
    G, _ = nets(32, z_dim=64)  # 3 blocks + the input layer: 4 chunks of 16
    G.eval()
    z = torch.randn(2, 64, requires_grad=True)
    G(z, torch.tensor([0, 1])).square().sum().backward()
    per_chunk = z.grad.abs().view(2, 4, 16).sum(dim=(0, 2))
    assert (per_chunk > 0).all(), per_chunk
    # each chunk k >= 1 enters only block k's conditional BNs: perturbing it leaves the
    # activations before that block alone
    seen = {}
    hooks = [block.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0].detach().clone())) for k, block in enumerate(G.blocks)]
    with torch.no_grad():
        z0 = torch.randn(2, 64)
        G(z0, torch.tensor([0, 1]))
        before = dict(seen)
        z1 = z0.clone()
        z1[:, 48:] += 1.0  # the last block's chunk
        G(z1, torch.tensor([0, 1]))
    for hook in hooks:
        hook.remove()
    assert all(torch.equal(before[k], seen[k]) for k in range(3))  # the inputs of blocks 0-2 are unchanged
    assert not torch.equal(G(z0, torch.tensor([0, 1])), G(z1, torch.tensor([0, 1])))


def test_hierarchical_latent_needs_equal_chunks():
    with pytest.raises(ConfigError, match="model.z_dim.*multiple of 4"):
        nets(32, z_dim=66)
    G, _ = nets(32, z_dim=66, g=BigganGConfig(width=4, shared_dim=16, hier=False))
    assert G(torch.randn(2, 66), torch.tensor([0, 1])).shape == (2, 3, 32, 32)


def test_attention_at_a_resolution_no_block_reaches_is_refused():
    with pytest.raises(ConfigError, match="model.g.attention"):
        nets(32, g=BigganGConfig(width=4, shared_dim=16, attention=[64]))
    with pytest.raises(ConfigError, match="model.d.attention.*at least 8 channels"):
        nets(64, z_dim=100, width=4)  # D's 32x32 block has 4 channels


def test_truncated_latents_lie_within_psi():
    for psi in (0.25, 0.5, 1.0):
        z = sampling.latents(120, range(500), seed=3, truncation=psi)
        assert z.abs().max() <= psi
        assert z.std() > psi / 3  # resampled, not clamped to a constant


def test_ortho_gradient_is_the_autograd_gradient_of_the_penalty():
    torch.manual_seed(0)
    for shape in [(8, 5), (6, 3, 3, 3), (4, 20)]:
        w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        (auto,) = torch.autograd.grad(ortho_penalty(w).double(), w)
        closed = ortho_gradient(w.detach())
        torch.testing.assert_close(closed.double(), auto, rtol=1e-5, atol=1e-5)
    # zero for orthogonal rows, whatever their norms
    q = torch.linalg.qr(torch.randn(6, 6))[0] * 3.0
    assert ortho_penalty(q).abs() < 1e-3 and ortho_gradient(q).abs().max() < 1e-3


def test_ortho_regularises_every_weight_but_the_shared_embedding():
    G, _ = nets(32)
    weights = {id(p) for p in regularized_weights(G)}
    assert id(G.shared.weight) not in weights
    assert id(G.linear.parametrizations.weight.original) in weights
    assert all(p.dim() >= 2 for p in regularized_weights(G))


def test_spectral_norm_keeps_the_top_singular_value_near_one():
    G, D = nets(32)
    conv = D.blocks[1].conv1
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(3.0)  # orthogonal init starts at sigma 1: move it away
    G.train(), D.train()
    for _ in range(30):  # power iterations, one per training forward
        D(G(torch.randn(4, 64), torch.randint(10, (4,))).detach(), torch.randint(10, (4,)))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().reshape(conv.weight.shape[0], -1), ord=2)
    raw = torch.linalg.matrix_norm(conv.parametrizations.weight.original.detach().reshape(conv.weight.shape[0], -1), ord=2)
    assert abs(sigma - 1) < 0.05 and abs(raw - 1) > 0.05, (sigma, raw)


def test_power_iteration_and_batch_norm_statistics_run_in_fp32_under_bf16():
    G, D = nets(32)
    G.eval(), D.eval()
    with torch.no_grad():
        w32 = D.head.linear.weight.clone()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            w16 = D.head.linear.weight
            h = G.blocks[0].bn1.stats(torch.randn(2, 16, 4, 4, dtype=torch.bfloat16))
    assert w16.dtype == torch.float32 and torch.equal(w16, w32)
    assert h.dtype == torch.float32


def test_statistics_without_cross_replica_equal_batch_norm():
    torch.manual_seed(0)
    ours, ref = Statistics(5, 1e-5, cross_replica=True), torch.nn.BatchNorm2d(5, affine=False)  # one process: no group
    x = torch.randn(6, 5, 4, 4) * 3 + 1
    for module in (ours, ref):
        module.train()
    for _ in range(3):
        assert torch.equal(ours(x), ref(x))
    assert torch.equal(ours.running_mean, ref.running_mean) and torch.equal(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    assert torch.equal(ours(x), ref(x))


def test_ema_fixed_decay_and_start():
    cfg = EmaConfig(decay=0.9999, start_kimg=2.0)
    assert ema_beta(cfg, 1999, 64) == 0.0  # a copy until start_kimg
    assert ema_beta(cfg, 2000, 64) == 0.9999 and ema_beta(cfg, 10**7, 2048) == 0.9999
    assert math.isclose(ema_beta(EmaConfig(), 10**7, 64), 0.5 ** (64 / 10000))  # the default is unchanged
    with pytest.raises(ConfigError, match="ema.decay"):
        EmaConfig(decay=1.0)


def test_ema_copy_never_uses_cross_replica_statistics():
    G, _ = nets(32, g=BigganGConfig(width=4, shared_dim=16, cross_replica=True))
    ema = EMA(G, EmaConfig())
    flags = [m.cross_replica for m in ema.module.modules() if isinstance(m, Statistics)]
    assert flags and not any(flags)
    assert all(m.cross_replica for m in G.modules() if isinstance(m, Statistics))  # the player keeps it


def _cfg(*overrides):
    return load_config("configs/biggan_digits.yaml", list(overrides))


def test_recipe_adds_ortho_to_the_phases_that_ask():
    info = DataInfo("image", (1, 32, 32), 10)
    recipe = build_recipe(_cfg("biggan.ortho_g=1e-4", "biggan.ortho_d=0"), info)
    G, D = (spec.build() for spec in recipe.players())

    class P:
        def __init__(self, name, net):
            self.name, self.net, self.engine = name, net, net

    recipe.bind({"G": P("G", G), "D": P("D", D)}, lambda t: t, 8)
    hooks = {phase.name: phase.before_step for phase in recipe.phases}
    assert hooks["G_main"] is not None and hooks["D_main"] is None

    class Grads:
        def get(self, p):
            return p.grad

        def set(self, p, g):
            p.grad = g

    for p in G.parameters():
        p.grad = torch.zeros_like(p)
    hooks["G_main"]("G", G, Grads())
    w = G.blocks[0].conv1.parametrizations.weight.original
    torch.testing.assert_close(w.grad, 1e-4 * ortho_gradient(w.detach()))
    assert torch.equal(G.shared.weight.grad, torch.zeros_like(G.shared.weight))


def test_recipe_refuses_ortho_at_zero3():
    from bigtrain.config import BackendConfig, OptimConfig, TrainConfig
    from bigtrain.engine.backends.deepspeed import DeepSpeedBackend

    info = DataInfo("image", (1, 32, 32), 10)
    recipe = build_recipe(_cfg("backend.kind=deepspeed", "backend.zero_stage=3"), info)
    # the engine's capabilities as DeepSpeedBackend derives them from each player's config, before any engine starts
    backend = object.__new__(DeepSpeedBackend)
    backend.backend_cfg, backend.train_cfg, backend.world_size, backend.env = BackendConfig(kind="deepspeed", zero_stage=3), TrainConfig(batch_size=16), 1, {}
    caps = {name: backend.capabilities(name, OptimConfig()) for name in ("G", "D")}
    assert not caps["G"].whole_weights and not caps["G"].second_order and caps["G"].engine == "DeepSpeed ZeRO-3"
    with pytest.raises(ConfigError, match="biggan.ortho_g.*ZeRO-3"):
        recipe.check_engine(caps)
    backend.backend_cfg = BackendConfig(kind="deepspeed", zero_stage=2)
    recipe.check_engine({name: backend.capabilities(name, OptimConfig()) for name in ("G", "D")})  # ZeRO-2 holds whole weights


def test_biggan_trains_a_few_steps_in_bf16_without_nonfinite(tmp_path):
    # point 4: "no NaN in 1,000 bf16 CPU steps of a small model" is the slow test in
    # tests/learning/test_biggan.py; here a quick check that the bf16 path runs end to end
    from bigtrain.engine.loop import Trainer
    from tests.conftest import write_images_npz
    data = write_images_npz(tmp_path / "d.npz", n=64, res=32, channels=1, classes=10)
    cfg = _cfg(f"data.path={data}", f"run.out_dir={tmp_path}", "train.total_kimg=0.32", "train.batch_size=16", "log.progress_bar=false",
               "model.g.width=4", "model.d.width=4", "model.g.shared_dim=8", "ema.start_kimg=0")  # the config's G_ema copies G until 2 kimg
    trainer = Trainer(cfg)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.players["G"].net.parameters())
    assert trainer.counters.step == 20
    assert F.mse_loss(trainer.emas["G"].module.linear.parametrizations.weight.original, trainer.players["G"].net.linear.parametrizations.weight.original) > 0


def test_accumulation_is_the_mean_of_the_micro_batches_gradients_in_fp32(tmp_path):
    """BigGAN's batch layout, global = micro x rounds x ranks: an update's gradient is the mean
    of its micro-batches' gradients, each micro-batch normalised by its own BN statistics and
    taking its own SN power iteration, as in BigGAN-PyTorch's accumulation (on several ranks DDP
    averages over them too: tests/dist/test_ddp.py). Replayed by hand on copies of the nets
    taken before the iteration, from the rounds the loop fed the phases."""
    import copy

    from bigtrain.engine.loop import Trainer
    from bigtrain.tracking import Tracker
    from tests.conftest import write_images_npz

    data = write_images_npz(tmp_path / "d.npz", n=64, res=32, channels=1, classes=10)
    cfg = _cfg(f"data.path={data}", f"run.out_dir={tmp_path}", "train.batch_size=24", "train.micro_batch=8", "train.precision=fp32",
               "biggan.ortho_g=0", "model.g.width=4", "model.d.width=8", "model.g.shared_dim=8", "log.progress_bar=false")
    trainer = Trainer(cfg)
    assert trainer.backend.rounds == 3
    before = {name: copy.deepcopy(p.net) for name, p in trainer.players.items()}
    rounds, grads = {}, {}
    for phase in trainer.recipe.phases:
        compute = phase.compute
        phase.compute = lambda b, _c=compute, _n=phase.name: (rounds.setdefault(_n, []).append(b), _c(b))[1]
        phase.before_step = lambda name, net, access, _n=phase.name: grads.__setitem__(_n, [access.get(p).clone() for p in net.parameters() if access.get(p) is not None])
    trainer.iteration(Tracker(trainer.run_dir, is_main=False, reduce_mean=lambda v: v, total_img=24))
    assert {n: len(r) for n, r in rounds.items()} == {"D_main": 3, "G_main": 3}

    class Plain:  # a player as a recipe sees it, on one process
        def __init__(self, name, net):
            self.name, self.net, self.engine = name, net, net

    replay = build_recipe(cfg, trainer.info)
    replay.bind({name: Plain(name, net) for name, net in before.items()}, lambda v: v, 8)
    for phase, (name, updated) in zip(replay.phases, [("D_main", "D"), ("G_main", "G")]):
        net = before[updated]
        frozen = [p for n, other in before.items() if n != updated for p in other.parameters()]
        for p in frozen:
            p.requires_grad_(False)
        for b in rounds[name]:
            (phase.compute(b)[0][updated] / 3).backward()
        for p in frozen:
            p.requires_grad_(True)
        got = grads[name]
        want = [p.grad for p in net.parameters() if p.grad is not None]
        assert len(got) == len(want) > 10
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
        if updated == "D":  # G's update sees the D that D_main just stepped: step the replay's D alike
            with torch.no_grad():
                for p, q in zip(before["D"].parameters(), trainer.players["D"].net.parameters()):
                    p.copy_(q)
                    p.grad = None
    trainer.backend.close()
