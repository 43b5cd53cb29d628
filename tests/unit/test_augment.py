"""DiffAugment: each op's effect, differentiability, ordering of the policy and its errors."""
from __future__ import annotations

import pytest
import torch

from bigtrain.families.gan.augment import OPS, diff_augment
from bigtrain.errors import ConfigError

N, C, H, W = 16, 3, 32, 32


def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(N, C, H, W) * 2 - 1


def test_empty_policy_is_identity() -> None:
    x = images()
    assert diff_augment(x, "") is x
    assert diff_augment(x, " , ") is x


def test_unknown_op_names_the_key() -> None:
    with pytest.raises(ConfigError, match="'flip'") as err:
        diff_augment(images(), "color,flip")
    assert err.value.key == "augment.policy"


def test_needs_images() -> None:
    with pytest.raises(ConfigError) as err:
        diff_augment(torch.randn(N, 5), "color")
    assert err.value.key == "augment.policy"


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_changes_images_and_keeps_shape(op: str) -> None:
    x = images()
    out = diff_augment(x, op)
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = (out != x).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.5  # most samples (translation may draw a zero shift)


def test_gradient_flows_to_x() -> None:
    x = images().requires_grad_(True)
    diff_augment(x, "color,translation,cutout").square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # Without colour's image means, cut-out and shifted-out pixels get no gradient; the rest do.
    x.grad = None
    diff_augment(x, "translation,cutout").square().sum().backward()
    assert (x.grad == 0).any() and (x.grad != 0).float().mean() > 0.3


def test_color_is_per_sample_brightness_saturation_contrast() -> None:
    # On a constant image saturation and contrast have nothing to scale: only the brightness
    # offset U[-0.5, 0.5) remains, one value per sample.
    out = diff_augment(torch.zeros(N, C, H, W), "color")
    per_sample = out.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()
    offsets = per_sample[:, 0]
    assert offsets.min() >= -0.5 and offsets.max() < 0.5 and offsets.unique().numel() == N
    # Saturation: a gray image (equal channels) stays gray.
    gray = diff_augment(images()[:, :1].expand(-1, C, -1, -1), "color")
    torch.testing.assert_close(gray, gray[:, :1].expand_as(gray))


def test_translation_shifts_content_with_zero_fill() -> None:
    x = (torch.arange(H * W, dtype=torch.float32).view(1, 1, H, W) + 1).expand(N, C, H, W)  # distinct > 0
    torch.manual_seed(1)
    out = diff_augment(x, "translation")
    shifts = set()
    for n in range(N):
        # Find where the centre pixel went; it moves by at most H/8 = 4.
        rows, cols = torch.nonzero(out[n, 0] == x[0, 0, H // 2, W // 2], as_tuple=True)
        dy, dx = rows.item() - H // 2, cols.item() - W // 2
        assert max(abs(dy), abs(dx)) <= H // 8
        shifts.add((dy, dx))
        expected = torch.zeros(C, H, W)
        expected[:, max(dy, 0) : H + min(dy, 0), max(dx, 0) : W + min(dx, 0)] = x[
            n, :, max(-dy, 0) : H + min(-dy, 0), max(-dx, 0) : W + min(-dx, 0)
        ]
        torch.testing.assert_close(out[n], expected)
    assert len(shifts) > 1  # per sample, not one shift for the batch


def test_cutout_zeroes_one_square_per_sample() -> None:
    out = diff_augment(torch.ones(N, C, H, W), "cutout")
    assert (out[:, 0:1] == out).all()  # the same square in every channel
    zero = out[:, 0] == 0  # [N, H, W]
    full_squares = 0
    for n in range(N):
        rows, cols = zero[n].any(dim=1), zero[n].any(dim=0)
        assert (zero[n] == rows[:, None] & cols[None, :]).all()  # a rectangle: the clipped square
        assert 0 < rows.sum() <= H // 2 and 0 < cols.sum() <= W // 2
        full_squares += int(rows.sum() == H // 2 and cols.sum() == W // 2)
    assert full_squares > 0
    assert not (zero == zero[:1]).all()  # a different square for each sample


def test_randomness_comes_from_the_global_rng_and_ops_run_in_order() -> None:
    x = images()
    torch.manual_seed(3)
    a = diff_augment(x, "color,cutout")
    torch.manual_seed(3)
    b = diff_augment(x, "color,cutout")
    torch.testing.assert_close(a, b)
    # cutout last: its zeros survive; cutout first: colour shifts fill the square again.
    assert (a == 0).any()
    torch.manual_seed(3)
    assert not (diff_augment(x, "cutout,color") == 0).any()
