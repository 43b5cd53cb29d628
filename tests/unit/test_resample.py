"""FIR resampling (bigtrain/layers/resample.py) against its definition: zero insertion, padding,
a true convolution with the filter, decimation, computed here tap by tap with no conv2d; the
reference's shortcuts of conv2d_resample against the plain composition; second-order gradients.
(The values equal NVlabs' 'ref' ops; the comparison harness lives outside the repository.)"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from bigtrain.layers.resample import (
    conv2d_resample,
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

SYM6 = [0.015, -0.035, -0.05, 0.3, 0.6, 0.3, -0.05, -0.035, 0.015, 0.01, 0.002, -0.001]  # 12 taps: separable


def by_definition(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """upfirdn2d from its definition, one filter tap at a time. up/down as (x, y), pad (x0, x1, y0, y1)."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    u = x.new_zeros(n, c, h * upy, w * upx)
    u[:, :, ::upy, ::upx] = x  # each pixel followed by up - 1 zeros
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    p = x.new_zeros(n, c, hp, wp)
    for i, j in itertools.product(range(hp), range(wp)):
        if 0 <= i - py0 < h * upy and 0 <= j - px0 < w * upx:
            p[:, :, i, j] = u[:, :, i - py0, j - px0]
    f = f.to(x.dtype)
    k = (torch.outer(f, f) if f.ndim == 1 else f) * gain
    if not flip_filter:
        k = k.flip([0, 1])  # a true convolution
    fh, fw = k.shape
    out = sum(p[:, :, a : a + hp - fh + 1, b : b + wp - fw + 1] * k[a, b] for a in range(fh) for b in range(fw))
    return out[:, :, ::downy, ::downx]


def test_setup_filter_normalises_and_picks_separable():
    f = setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    torch.testing.assert_close(f, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    assert setup_filter(SYM6).shape == (12,)  # >= 8 taps: separable by default
    assert setup_filter([1, 3, 3, 1], separable=True).shape == (4,)
    assert setup_filter(SYM6, separable=False).shape == (12, 12)
    assert setup_filter(None).shape == (1, 1) and setup_filter(None).item() == 1.0
    torch.testing.assert_close(setup_filter([1, 2], normalize=False), torch.tensor([[1.0, 2], [2, 4]]))
    torch.testing.assert_close(setup_filter([1, 2, 4], flip_filter=True), setup_filter([4, 2, 1]))
    # the gain is the whole 2-D filtering's: sqrt(gain) per pass of a separable filter
    assert setup_filter([1, 3, 3, 1], gain=4).sum().item() == pytest.approx(4)
    assert setup_filter(SYM6, gain=4).sum().item() == pytest.approx(2)
    with pytest.raises(ValueError):
        setup_filter(torch.ones(2, 2), separable=True)


@pytest.mark.parametrize(
    "taps, up, down, pad, flip_filter, gain",
    [
        ([1, 3, 3, 1], (1, 1), (1, 1), (1, 2, 2, 1), False, 1.0),
        ([1, 3, 3, 1], (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
        ([1, 3, 3, 1], (1, 1), (2, 2), (1, 1, 1, 1), True, 1.0),
        ([1, 3, 3, 1], (2, 1), (1, 2), (-1, 2, 0, 3), False, 0.5),  # negative padding crops
        (SYM6, (2, 2), (1, 1), (6, 5, 6, 5), False, 4.0),  # separable
        (SYM6, (1, 1), (2, 2), (5, 5, 5, 5), True, 1.0),
        ([[1, 2, 0], [0, 1, 3]], (3, 2), (2, 1), (1, 0, 0, 1), False, 1.0),  # asymmetric 2-D filter
    ],
)
def test_upfirdn2d_is_its_definition(taps, up, down, pad, flip_filter, gain):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    f = setup_filter(taps)
    expected = by_definition(x, f, up, down, pad, flip_filter, gain)
    got = upfirdn2d(x, f, up=list(up), down=list(down), padding=list(pad), flip_filter=flip_filter, gain=gain)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # a filter of another dtype is cast to x's
    got = upfirdn2d(x.float(), f.double(), up=list(up), down=list(down), padding=list(pad), flip_filter=flip_filter,
                    gain=gain)  # fmt: skip
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float())


def test_padding_forms():
    x, f = torch.randn(1, 2, 5, 5), setup_filter([1, 3, 3, 1])
    torch.testing.assert_close(upfirdn2d(x, f, padding=2), upfirdn2d(x, f, padding=[2, 2, 2, 2]))
    torch.testing.assert_close(upfirdn2d(x, f, padding=[1, 2]), upfirdn2d(x, f, padding=[1, 1, 2, 2]))
    with pytest.raises(ValueError):
        upfirdn2d(x, f, padding=[1, 2, 3])
    with pytest.raises(ValueError):
        upfirdn2d(x, f, up=0)


def test_resampling_shapes_and_a_constant_image():
    f = setup_filter([1, 3, 3, 1])
    x = torch.full((2, 3, 8, 8), 0.7)
    up, down, same = upsample2d(x, f), downsample2d(x, f), filter2d(x, f)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4) and same.shape == (2, 3, 8, 8)
    # a normalised filter keeps a constant level away from the zero-padded border
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 0.7))
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 0.7))
    torch.testing.assert_close(same[:, :, 2:-2, 2:-2], torch.full_like(same[:, :, 2:-2, 2:-2], 0.7))
    assert upsample2d(x, setup_filter(SYM6), up=[2, 1]).shape == (2, 3, 8, 16)
    assert downsample2d(x, f, padding=-1).shape == (2, 3, 3, 3)


def test_box_filters_are_nearest_upsampling_and_average_pooling():
    x, box = torch.randn(2, 3, 6, 6), setup_filter([1, 1])
    torch.testing.assert_close(upsample2d(x, box), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(downsample2d(x, box), F.avg_pool2d(x, 2))


def composed(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """conv2d_resample as the plain composition: upsample (zero insertion + f), pad, conv, filter + decimate."""
    fw, fh = f.shape[-1], f.shape[0]
    px0 = px1 = py0 = py1 = padding
    if up > 1:  # centre the filter on the zero-inserted image
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:  # and before decimation
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up**2, flip_filter=flip_filter)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    return upfirdn2d(x, f, down=down, flip_filter=flip_filter) if down > 1 else x


@pytest.mark.parametrize("kernel, up, down, groups", list(itertools.product((1, 3), (1, 2), (1, 2), (1, 2))))
def test_conv2d_resample_shortcuts_equal_the_composition(kernel, up, down, groups):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, kernel, kernel, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1])
    for flip_weight, flip_filter, padding in itertools.product((True, False), (False, True), (0, kernel // 2)):
        args = (f, up, down, padding, groups, flip_weight, flip_filter)
        got = conv2d_resample(x, w, *args)
        torch.testing.assert_close(got, composed(x, w, *args), rtol=1e-12, atol=1e-12)
    if kernel == 3 and padding == 1:
        assert got.shape == (3, 6, 8 * up // down, 8 * up // down)  # 'same' padding keeps the grid aligned


def test_conv2d_resample_flip_weight_false_is_a_true_convolution():
    x, w, f = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), setup_filter([1, 3, 3, 1])
    for up, down in ((1, 1), (2, 1), (1, 2)):
        torch.testing.assert_close(conv2d_resample(x, w, f, up, down, 1, flip_weight=False),
                                   conv2d_resample(x, w.flip([2, 3]), f, up, down, 1, flip_weight=True))  # fmt: skip
    # no resampling and symmetric padding is conv2d itself
    torch.testing.assert_close(conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1))


def test_every_op_has_second_order_gradients():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    f, sep = setup_filter([1, 3, 3, 1]).double(), setup_filter(SYM6[:8]).double()
    ops = [
        lambda x: upfirdn2d(x, f, up=2, down=2, padding=[1, 2, 0, 3]),
        lambda x: upsample2d(x, sep),
        lambda x: downsample2d(x, f, padding=-1),
        lambda x: filter2d(x, sep),
    ]
    for op in ops:
        assert torch.autograd.gradcheck(op, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(op, (x,), fast_mode=True)
    for up, down in ((2, 1), (1, 2), (1, 1)):

        def conv(x, w, up=up, down=down):
            return conv2d_resample(x, w, f, up=up, down=down, padding=1, groups=2)

        assert torch.autograd.gradcheck(conv, (x, w), fast_mode=True)
        assert torch.autograd.gradgradcheck(conv, (x, w), fast_mode=True)
