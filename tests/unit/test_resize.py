"""`--resize clean`: clean-fid's clean mode (PIL bicubic on float32 planes, clipped, not
re-quantised) in front of the same Inception network.

Parity is tested on the resize step against clean-fid's own resize function
(`cleanfid.resize.build_resizer("clean")`), and on the network's input: our clean forward equals
the network run on clean-fid's resized array. clean-fid's end-to-end FID cannot run here: its
feature network is a TorchScript file it downloads (no network here), and its feature pipeline
imports torchvision (cleanfid.utils, cleanfid.inception_pytorch), which does not run on this
CPU-only machine. clean-fid is found when installed (`pip install --no-deps clean-fid`) or in a
folder named by BIGTRAIN_TEST_REF_PATH (`pip install --no-deps --target DIR clean-fid`, as
.ci/run does); without it those tests are skipped.
"""
from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch

from bigtrain.eval.inception import InceptionV3, tf1_resize_bilinear
from bigtrain.eval.resize import RESIZE_MODES, clean_resize


@pytest.fixture
def cleanfid_resize(monkeypatch):
    for folder in [p for p in os.environ.get("BIGTRAIN_TEST_REF_PATH", "").split(os.pathsep) if p]:
        monkeypatch.syspath_prepend(folder)
    try:
        module = importlib.import_module("cleanfid.resize")  # numpy, torch and PIL only
    except ImportError:
        pytest.skip("clean-fid not installed (pip install --no-deps clean-fid, or BIGTRAIN_TEST_REF_PATH)")
    return module.build_resizer("clean")


def images(n: int, h: int, w: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, channels, h, w), dtype=np.uint8))


@pytest.mark.parametrize("size", [(32, 32), (8, 8), (48, 64), (400, 320)])  # up, far up, not square, down
def test_clean_resize_equals_clean_fid(cleanfid_resize, size) -> None:
    x = images(2, *size)
    ours = clean_resize(x, 299)  # [2, 3, 299, 299] float32
    for i in range(2):
        theirs = cleanfid_resize(x[i].permute(1, 2, 0).numpy())  # HWC uint8 -> HWC float32 [0, 255]
        assert theirs.dtype == np.float32
        np.testing.assert_array_equal(ours[i].permute(1, 2, 0).numpy(), theirs)
    assert not torch.equal(ours.round(), ours)  # floats, not re-quantised to integers


def test_clean_forward_is_the_network_on_clean_fids_input(cleanfid_resize) -> None:
    torch.manual_seed(0)
    net = InceptionV3(resize="clean")
    x = images(2, 16, 16)
    theirs = torch.stack([torch.from_numpy(cleanfid_resize(i.permute(1, 2, 0).numpy())).permute(2, 0, 1) for i in x])
    pool, logits = net(x)
    ref_pool, ref_logits = net.features_299(theirs)
    torch.testing.assert_close(pool, ref_pool, rtol=0, atol=0)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)


def test_modes_differ_and_are_recorded() -> None:
    torch.manual_seed(0)
    net = InceptionV3()
    x = images(2, 12, 12, channels=1)  # grey: one plane for R, G and B
    pool_legacy, _ = net(x)
    legacy_input = tf1_resize_bilinear(x.expand(-1, 3, -1, -1).float(), 299)
    torch.testing.assert_close(pool_legacy, net.features_299(legacy_input)[0], rtol=0, atol=0)
    assert net.protocol()["resize"] == RESIZE_MODES["legacy"] == "tf1-bilinear-299"
    net.resize = "clean"  # the same weights, the other input
    pool_clean, _ = net(x)
    assert (pool_legacy - pool_clean).abs().max() > 1e-3  # the input differs, so do the features
    assert net.protocol()["resize"] == RESIZE_MODES["clean"] == "pil-bicubic-float-299"
    with pytest.raises(ValueError, match="resize must be one of legacy, clean"):
        InceptionV3(resize="bicubic")
