"""FIR resampling of images in plain PyTorch ops (StyleGAN2-ADA's upfirdn2d and conv2d_resample).

The semantics are those of NVlabs/stylegan2-ada-pytorch's torch_utils/ops (its slow 'ref' paths):
same arguments, shapes and values, with no custom CUDA kernel. Every op here is a pad, reshape,
slice or (transposed) convolution, so gradients of any order flow through them (R1 and the path
length regulariser differentiate twice through G's and D's resampling, and through ADA's).

Filters are set up once with `setup_filter` (normalised to unit DC gain, e.g. [1, 3, 3, 1] ->
its outer product / 64) and handed to the functions as tensors; a 1-D filter is separable (applied
along W, then H), a 2-D one is applied whole.

Padding is a single int, [x, y] or [x_before, x_after, y_before, y_after]; a negative value crops.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Scaling = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]
FilterLike = Union[None, float, Sequence, Tensor]


def _scaling(scaling: Scaling) -> tuple[int, int]:
    """An up/down factor as (x, y)."""
    sx, sy = (scaling, scaling) if isinstance(scaling, int) else tuple(scaling)
    if not (isinstance(sx, int) and isinstance(sy, int) and sx >= 1 and sy >= 1):
        raise ValueError(f"resampling factors must be integers >= 1, got {scaling!r}")
    return sx, sy


def _padding(padding: Padding) -> tuple[int, int, int, int]:
    """Padding as (x_before, x_after, y_before, y_after)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding!r}")
    return padding  # type: ignore[return-value]


def _filter_size(f: Optional[Tensor]) -> tuple[int, int]:
    """(width, height) of a filter; a separable 1-D filter has the same taps along both axes."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"a filter is [taps] (separable) or [height, width], got shape {tuple(f.shape)}")
    return int(f.shape[-1]), int(f.shape[0])


def _plus(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int]:
    return tuple(i + j for i, j in zip(a, b))  # type: ignore[return-value]


def _up_padding(f: Optional[Tensor], upx: int, upy: int) -> tuple[int, int, int, int]:
    """The padding that centres `f` on the zero-inserted image, so the output is exactly up x the input."""
    fw, fh = _filter_size(f)
    return (fw + upx - 1) // 2, (fw - upx) // 2, (fh + upy - 1) // 2, (fh - upy) // 2


def _down_padding(f: Optional[Tensor], downx: int, downy: int) -> tuple[int, int, int, int]:
    """The padding that centres `f` before decimation, so the output is exactly 1 / down of the input."""
    fw, fh = _filter_size(f)
    return (fw - downx + 1) // 2, (fw - downx) // 2, (fh - downy + 1) // 2, (fh - downy) // 2


def setup_filter(
    f: FilterLike,
    device: Union[str, torch.device] = "cpu",
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: Optional[bool] = None,
) -> Tensor:
    """A float32 FIR filter for `upfirdn2d` from taps (list, array or tensor; None = identity).

    1-D taps become separable [taps] (applied along W, then H) when `separable` (default: when
    there are at least 8 taps, as the reference picks), else their outer product [taps, taps];
    2-D taps stay 2-D. Normalised
    to sum 1 (unit gain on a constant signal), flipped when asked, then scaled so that the whole
    2-D filtering has `gain`.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"filter taps must be a non-empty 1-D or 2-D array, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError("a 2-D filter cannot be made separable")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    # a separable filter is applied twice: each pass takes the square root of the gain
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(
    x: Tensor,
    f: Optional[Tensor],
    up: Scaling = 1,
    down: Scaling = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> Tensor:
    """Upsample (insert up - 1 zeros after each pixel), pad, filter with `f`, downsample (keep every
    down-th pixel), per channel: x [N, C, H, W] -> [N, C, H', W'] with
    H' = (H * up_y + pad_y0 + pad_y1 - f_h) // down_y + 1 (likewise W').

    Padding is relative to the upsampled image and negative values crop. `flip_filter` False is a
    true convolution (the filter flipped), True a correlation. `gain` scales the result. The
    filter may be of any float dtype (cast to x's) and takes no gradient.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d takes [N, C, H, W], got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    _filter_size(f)
    n, c, h, w = x.shape
    upx, upy = _scaling(up)
    downx, downy = _scaling(down)
    px0, px1, py0, py1 = _padding(padding)

    # (1) upsample by zero insertion: [N, C, H, 1, W, 1] padded after each pixel
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)
    # (2) pad with zeros, or crop where the padding is negative
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    # (3) filter each channel (a depthwise conv); conv2d correlates, so flip for a convolution
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[None, None].expand(c, 1, *f.shape)  # [C, 1, fh, fw] or [C, 1, taps]
    # (4) downsample: the conv's stride keeps every down-th output, as slicing [::down] after it would
    if f.ndim == 4:
        return F.conv2d(x, f, stride=(downy, downx), groups=c)
    x = F.conv2d(x, f.unsqueeze(2), stride=(1, downx), groups=c)  # along W: [C, 1, 1, taps]
    return F.conv2d(x, f.unsqueeze(3), stride=(downy, 1), groups=c)  # then along H: [C, 1, taps, 1]


def filter2d(
    x: Tensor, f: Optional[Tensor], padding: Padding = 0, flip_filter: bool = False, gain: float = 1.0
) -> Tensor:
    """Filter x [N, C, H, W] with `f`, padded so that the output keeps H x W; `padding` adds to
    that (negative crops)."""
    fw, fh = _filter_size(f)
    p = _plus(_padding(padding), (fw // 2, (fw - 1) // 2, fh // 2, (fh - 1) // 2))
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain)


def upsample2d(
    x: Tensor, f: Optional[Tensor], up: Scaling = 2, padding: Padding = 0, flip_filter: bool = False, gain: float = 1.0
) -> Tensor:
    """x [N, C, H, W] -> [N, C, H * up, W * up]: zero insertion, then `f` with gain up_x * up_y (so a
    normalised filter keeps a constant signal's level); `padding` adds to the default."""
    upx, upy = _scaling(up)
    p = _plus(_padding(padding), _up_padding(f, upx, upy))
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(
    x: Tensor,
    f: Optional[Tensor],
    down: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> Tensor:
    """x [N, C, H, W] -> [N, C, H / down, W / down]: `f`, then every down-th pixel; `padding`
    (relative to the input) adds to the default."""
    downx, downy = _scaling(down)
    p = _plus(_padding(padding), _down_padding(f, downx, downy))
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


def _conv(
    x: Tensor,
    w: Tensor,
    stride: int = 1,
    padding: Sequence[int] = (0, 0),
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> Tensor:
    """conv2d (a correlation, flip_weight True) or a true convolution (False); transposed if asked."""
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=list(padding), groups=groups)
    return F.conv2d(x, w, stride=stride, padding=list(padding), groups=groups)


def conv2d_resample(
    x: Tensor,
    w: Tensor,
    f: Optional[Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> Tensor:
    """2-D convolution of x [N, C_in, H, W] with w [C_out, C_in / groups, kh, kw], upsampled by `up`
    (zero insertion + `f`, before the conv) and/or downsampled by `down` (`f` + decimation, after it).

    Padding is applied once, relative to the upsampled image. `flip_weight` True is conv2d's
    correlation, False a true convolution. Each case takes the reference's cheaper equivalent
    order (1x1 kernels resample on the side with fewer channels, upsampling is a strided
    transposed conv, downsampling a strided conv), so values equal the reference's.
    """
    if x.ndim != 4 or w.ndim != 4:
        shapes = f"{tuple(x.shape)} and {tuple(w.shape)}"
        raise ValueError(f"conv2d_resample takes x [N, C, H, W] and w [O, I, kh, kw], got {shapes}")
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError(f"up and down must be integers >= 1, got {up!r}, {down!r}")
    out_channels, in_per_group, kh, kw = w.shape
    pad = _padding(padding)
    # the padding the filter needs for the resampling to keep the image aligned
    if up > 1:
        pad = _plus(pad, _up_padding(f, up, up))
    if down > 1:
        pad = _plus(pad, _down_padding(f, down, down))
    px0, px1, py0, py1 = pad

    if kw == 1 and kh == 1 and down > 1 and up == 1:  # 1x1 down: downsample first (fewer pixels to convolve)
        x = upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:  # 1x1 up: convolve first, then upsample
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad, gain=up**2, flip_filter=flip_filter)
    if down > 1 and up == 1:  # down: filter, then a strided conv
        x = upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        # up: a strided transposed conv does the zero insertion and the conv at once, then the filter.
        # conv_transpose2d's weight is [C_in, C_out / groups, kh, kw]: swap in/out within each group
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)  # the crop conv_transpose2d can do itself
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:  # plain conv with symmetric padding
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    # anything else (asymmetric or negative padding): pad explicitly, then convolve
    x = upfirdn2d(x, None, padding=pad)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
