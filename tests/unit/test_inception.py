"""The FID Inception network: TF1 resize, input conversion, parity with torch-fidelity, weights.

The parity tests import torch-fidelity's feature extractor file alone (it needs no torchvision)
when torch-fidelity is installed, e.g. `pip install --no-deps torch-fidelity`, or found in a
folder named by BIGTRAIN_TEST_REF_PATH (e.g. one filled by
`pip install --no-deps --target DIR torch-fidelity`); otherwise they are skipped.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import importlib
import importlib.util
import os
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from bigtrain.eval import weights as weights_mod
from bigtrain.eval.inception import NETWORK, RESIZE, InceptionV3, load_inception, tf1_resize_bilinear
from bigtrain.eval.weights import FILENAME, WeightsError, resolve_weights


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    """A full state dict with random convolutions and random batch-norm statistics (so that a
    network ignoring them would be caught)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = InceptionV3().state_dict()
        for key, value in state.items():
            if key.endswith(("running_mean", "bn.bias")):
                state[key] = torch.randn_like(value) * 0.1
            elif key.endswith(("running_var", "bn.weight")):
                state[key] = 1 + torch.rand_like(value) * 0.2
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(random_weights(0), path)
    return path


@pytest.fixture(scope="module")
def net(weights_file: Path) -> InceptionV3:
    return load_inception(weights_file)


@pytest.fixture
def fidelity(monkeypatch):
    """torch-fidelity's `feature_extractor_inceptionv3` module, imported without running its
    package __init__ (which needs torchvision)."""
    search = [p for p in os.environ.get("BIGTRAIN_TEST_REF_PATH", "").split(os.pathsep) if p]
    for folder in search:
        monkeypatch.syspath_prepend(folder)
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch-fidelity not installed (pip install --no-deps torch-fidelity, or BIGTRAIN_TEST_REF_PATH)")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    saved = {k: v for k, v in sys.modules.items() if k == "torch_fidelity" or k.startswith("torch_fidelity.")}
    for key in saved:
        del sys.modules[key]
    sys.modules["torch_fidelity"] = package
    try:
        yield importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    except ImportError as exc:
        pytest.skip(f"torch-fidelity's Inception module is not importable here: {exc}")
    finally:
        for key in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
            del sys.modules[key]
        sys.modules.update(saved)


# ---- resize and input conversion ----------------------------------------------------------------


def test_tf1_resize_uses_tf1_coordinates() -> None:
    x = torch.tensor([[0.0, 10.0], [20.0, 30.0]])[None, None]
    # output pixel i samples input coordinate i * 2/4: 0, 0.5, 1, 1.5 (the last clamps to the border)
    expected = torch.tensor(
        [[0, 5, 10, 10], [10, 15, 20, 20], [20, 25, 30, 30], [20, 25, 30, 30]], dtype=torch.float32
    )
    assert torch.equal(tf1_resize_bilinear(x, 4)[0, 0], expected)
    row = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert torch.equal(tf1_resize_bilinear(row, 2)[0, 0, 0], torch.tensor([0.0, 2.0]))  # no antialiasing
    same = torch.rand(1, 3, 5, 5)
    assert torch.equal(tf1_resize_bilinear(same, 5), same)


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (299, 299), (400, 512), (7, 5)])
def test_resize_equals_torch_fidelity(fidelity, size) -> None:
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    torch.testing.assert_close(tf1_resize_bilinear(x, 299), ref, rtol=0, atol=1e-4)


def test_features_equal_torch_fidelity_for_the_same_weights(fidelity, net, weights_file) -> None:
    ref = fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights_file)
    )
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pool, logits = net(images)
    ref_pool, ref_logits = ref(images)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool.abs().max() > 0.1  # features of a sensible scale, not all zero
    torch.testing.assert_close(pool, ref_pool, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-4)


def test_float_inputs_are_rounded_and_clamped_never_wrapped(net) -> None:
    x = torch.linspace(-1.6, 1.6, 3 * 8 * 8).view(1, 3, 8, 8)  # values beyond [-1, 1] on both ends
    expected = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    wrapped = ((x + 1) * 127.5).round().to(torch.int64).remainder(256).to(torch.uint8)
    assert not torch.equal(expected, wrapped)  # the test input does tell the two apart
    pool, logits = net(x)
    pool_u8, logits_u8 = net(expected)
    assert torch.equal(pool, pool_u8) and torch.equal(logits, logits_u8)


def test_grayscale_is_repeated_and_batch_norm_ignores_train_mode(net) -> None:
    gray = torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    pool_rgb, _ = net(gray.expand(-1, 3, -1, -1))
    net.train()  # e.g. an enclosing module switched to training: features must not change
    try:
        pool_gray, _ = net(gray)
    finally:
        net.eval()
    torch.testing.assert_close(pool_gray, pool_rgb, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected images"):
        net(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))


# ---- weights: loading and refusing ---------------------------------------------------------------


def test_loading_keeps_the_file_keys_and_records_the_protocol(net, weights_file) -> None:
    saved = torch.load(weights_file, weights_only=True)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    protocol = net.protocol()
    assert protocol["weights_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert protocol["network"] == NETWORK and protocol["resize"] == RESIZE
    assert protocol["standard_weights"] is False  # random weights are not the FID weights


def test_a_file_without_batch_norm_counters_loads(tmp_path) -> None:
    state = {k: v for k, v in random_weights(1).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old-export.pth")
    net = load_inception(tmp_path / "old-export.pth")
    assert torch.equal(net.fc.weight, state["fc.weight"])


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s.pop("Mixed_7c.branch_pool.conv.weight"), "missing keys .*Mixed_7c.branch_pool.conv.weight"),
        (lambda s: s.update({"AuxLogits.fc.weight": torch.zeros(1)}), "unexpected keys .*AuxLogits"),
        (lambda s: s.update({"fc.weight": torch.zeros(1000, 2048)}), r"shape mismatches .*fc.weight \[1000, 2048\]"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_a_file_for_another_network_is_refused(tmp_path, change, message) -> None:
    state = random_weights(2)
    change(state)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match=f"wrong.pth: not FID Inception-v3 weights: .*{message}"):
        load_inception(tmp_path / "wrong.pth")


class _NotATensor:
    pass


@pytest.mark.parametrize(
    "content,message",
    [
        (b"this is not a zip file", "not a readable PyTorch weights file"),
        ({"fc.weight": 3}, "not a state dict of tensors"),
        ({"fc.weight": _NotATensor()}, "not a readable PyTorch weights file"),  # weights_only refuses code
    ],
    ids=["garbage", "not-tensors", "pickled-object"],
)
def test_unreadable_files_are_refused(tmp_path, content, message) -> None:
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        load_inception(path)


# ---- weights: where they are found ------------------------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache and no environment variable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.delenv(weights_mod.ENV_VAR, raising=False)
    return tmp_path / "torch-home" / "hub" / "checkpoints" / FILENAME


def test_resolution_order_argument_environment_hub_cache(tmp_path, hub, monkeypatch) -> None:
    explicit, env = tmp_path / "explicit.pth", tmp_path / "env.pth"
    for p in (explicit, env, hub):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(p.name.encode())
    monkeypatch.setenv(weights_mod.ENV_VAR, str(env))
    assert resolve_weights(explicit).path == explicit
    assert resolve_weights(None).path == env
    monkeypatch.delenv(weights_mod.ENV_VAR)
    found = resolve_weights(None, download=False)
    assert (found.path, found.source) == (hub, "hub cache")
    assert found.sha256 == hashlib.sha256(hub.name.encode()).hexdigest()


def test_a_named_file_that_is_missing_is_an_error_not_a_fallback(tmp_path, hub, monkeypatch) -> None:
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"cached")
    with pytest.raises(WeightsError, match="not found: .*nowhere.pth"):
        resolve_weights(tmp_path / "nowhere.pth")
    monkeypatch.setenv(weights_mod.ENV_VAR, str(tmp_path / "also-nowhere.pth"))
    with pytest.raises(WeightsError, match=f"also-nowhere.pth \\(from {weights_mod.ENV_VAR}\\)"):
        resolve_weights(None)


def test_offline_and_not_found_says_where_to_put_the_file(hub, monkeypatch) -> None:
    with pytest.raises(WeightsError, match=f"downloading is off: put {FILENAME} .* at {hub}.*{weights_mod.ENV_VAR}"):
        resolve_weights(None, download=False)
    monkeypatch.setattr(weights_mod, "URL", "http://127.0.0.1:9/unreachable.pth")  # nothing listens there
    with pytest.raises(WeightsError, match=f"download failed .*: put {FILENAME}"):
        resolve_weights(None)
    assert not hub.parent.exists() or not any(hub.parent.iterdir())  # no partial file left behind


@pytest.fixture
def local_server(tmp_path):
    """A loopback HTTP server for the files in tmp_path/served; yields its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_lands_in_the_hub_cache_after_the_hash_check(hub, local_server, monkeypatch) -> None:
    folder, base = local_server
    payload = b"pretend weights"
    (folder / FILENAME).write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(weights_mod, "URL", f"{base}/{FILENAME}")
    monkeypatch.setattr(weights_mod, "HASH_PREFIX", "00000000" if sha.startswith("0" * 8) else sha[:8][::-1])
    with pytest.raises(WeightsError, match="does not start with"):
        resolve_weights(None)
    assert not any(hub.parent.iterdir())  # the refused download was removed
    monkeypatch.setattr(weights_mod, "HASH_PREFIX", sha[:8])
    found = resolve_weights(None)
    assert (found.path, found.source, found.sha256) == (hub, "download", sha)
    assert hub.read_bytes() == payload and found.is_standard
