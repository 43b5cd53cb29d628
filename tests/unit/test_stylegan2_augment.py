"""ADA's augmentation pipe: identity at p = 0, what each transform does alone, the probabilities, reproducibility
from the RNG state, and first and second derivatives through the pipe (R1 on the un-augmented reals)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigtrain.families.stylegan2.augment import AugmentPipe

GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
TOL = 1e-5  # a whole-pixel warp returns the pixels through the orthogonal filter pair, up to float32 rounding


def only(*names: str, p: float = 1.0) -> AugmentPipe:
    """A pipe with just the named transforms on."""
    return AugmentPipe(p=p, **{k: float(k in names) for k in GEOMETRIC + COLOUR})


def images(n: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=gen, dtype=dtype) * 2 - 1


def per_sample_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).amax(dim=1)  # [N]


@pytest.mark.parametrize("c", [1, 3])
def test_p_zero_is_the_identity_and_draws_nothing(c: int) -> None:
    x = images(c=c)
    rng = torch.get_rng_state()
    out = AugmentPipe(p=0.0)(x)
    assert out is x and torch.equal(out, images(c=c))
    assert torch.equal(torch.get_rng_state(), rng)


def test_p_is_a_scalar_buffer_in_the_state_dict() -> None:
    pipe = AugmentPipe(p=0.25)
    assert pipe.p.dim() == 0 and pipe.p.dtype == torch.float32
    assert list(pipe.state_dict()) == ["p"]  # the filter is a constant, not checkpoint state
    other = AugmentPipe()
    other.load_state_dict(pipe.state_dict())
    assert other.p.item() == 0.25


@pytest.mark.parametrize("name", GEOMETRIC + COLOUR)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_transform_alone_changes_images_and_keeps_shape_and_dtype(name: str, dtype: torch.dtype) -> None:
    x = images(dtype=dtype)
    torch.manual_seed(1)
    out = only(name)(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    # xflip and lumaflip flip half the chosen samples, rotate90 leaves a quarter as they are.
    assert (per_sample_max(out, x) > 1e-3).sum() >= 2


@pytest.mark.parametrize("name", GEOMETRIC + COLOUR)
def test_below_p_one_the_samples_left_out_stay_as_they_are(name: str) -> None:
    x = images(n=16)
    torch.manual_seed(12)
    moved = per_sample_max(only(name, p=0.5)(x), x) > TOL
    assert moved.any() and not moved.all()


def test_hue_and_saturation_skip_grey_images_draws_included() -> None:
    x = images(c=1)
    torch.manual_seed(13)
    out = only(*COLOUR)(x)
    rng = torch.get_rng_state()
    torch.manual_seed(13)
    assert torch.equal(only("brightness", "contrast", "lumaflip")(x), out)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(only("hue", "saturation")(x), x)


@pytest.mark.parametrize("c", [1, 3])
def test_lumaflip_reflects_colours_through_the_grey_plane(c: int) -> None:
    # The luma axis is (1, 1, 1) / sqrt(3), so the reflection takes x to x - 2 * (channel mean): -x for grey.
    x = images(n=16, c=c)
    torch.manual_seed(14)
    out = only("lumaflip")(x)
    kept = per_sample_max(out, x) < 1e-6
    flipped = per_sample_max(out, x - 2 * x.mean(dim=1, keepdim=True)) < 1e-5
    assert (kept ^ flipped).all() and kept.any() and flipped.any()


def smooth_images(n: int, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Images of low spatial frequencies (bicubic upsampling of random 4x4 ones), values about in [-1, 1]."""
    return F.interpolate(images(n, c, 4, 4, seed), size=size, mode="bicubic", align_corners=False)


# The reference's flips and quarter turns run through the same warp as every geometric transform, and its sym6
# filter pair is not symmetric: a mirrored image comes back about 0.1 pixel off its exact mirror image (and
# slightly low-passed near Nyquist). Smooth images keep that error well below the gap between the candidates.
BLIT_TOL = 0.1


def test_xflip_keeps_or_mirrors_each_sample_along_w() -> None:
    x = smooth_images(16)
    torch.manual_seed(2)
    out = only("xflip")(x)
    kept = per_sample_max(out, x) < TOL
    mirrored = per_sample_max(out, torch.flip(x, dims=[3])) < BLIT_TOL
    assert (kept ^ mirrored).all()  # each sample exactly one of the two
    assert kept.any() and mirrored.any()
    assert (per_sample_max(x, torch.flip(x, dims=[3])) > 3 * BLIT_TOL).all()  # the two were told apart


def test_xflip_probability_is_half_of_p() -> None:
    x = images(n=2000, c=1, h=4, w=4)
    torch.manual_seed(3)
    kept = per_sample_max(only("xflip", p=0.4)(x), x) < TOL
    assert abs(kept.float().mean().item() - 0.8) < 0.03  # chosen with 0.4, then flipped with 1/2


def test_rotate90_gives_one_of_the_four_rotations() -> None:
    x = smooth_images(16)
    torch.manual_seed(4)
    out = only("rotate90")(x)
    rotations = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    errors = torch.stack([per_sample_max(out, r) for r in rotations])  # [4, N]
    assert (errors[0] < TOL).any() and (errors.amin(dim=0) < BLIT_TOL).all()
    assert len(set(errors.argmin(dim=0).tolist())) >= 3
    gaps = torch.stack([per_sample_max(rotations[a], rotations[b]) for a in range(4) for b in range(a)])
    assert (gaps > 3 * BLIT_TOL).all()  # the four candidates were told apart


def test_integer_translation_shifts_content_with_reflected_borders() -> None:
    n, h, w = 16, 16, 24
    x = images(n=n, h=h, w=w)
    torch.manual_seed(5)
    out = only("xint")(x)
    mx, my = round(0.125 * w), round(0.125 * h)  # the largest shifts xint_max = 0.125 allows
    padded = F.pad(x, [mx, mx, my, my], mode="reflect")
    shifts = []
    for i in range(n):
        # Output pixel (y, x) reads input (y - dy, x - dx), reflected at the borders.
        found = [
            (dx, dy)
            for dy in range(-my, my + 1)
            for dx in range(-mx, mx + 1)
            if (out[i] - padded[i, :, my - dy : my - dy + h, mx - dx : mx - dx + w]).abs().max() < TOL
        ]
        assert len(found) == 1, f"sample {i}: not a reflected integer shift of its input ({found})"
        shifts.append(found[0])
    assert any(dx != 0 for dx, _ in shifts) and any(dy != 0 for _, dy in shifts)


@pytest.mark.parametrize("c", [1, 3])
def test_brightness_adds_one_constant_per_sample(c: int) -> None:
    x = images(c=c)
    torch.manual_seed(6)
    delta = only("brightness")(x) - x
    offset = delta.flatten(1).mean(dim=1)  # [N]
    assert (per_sample_max(delta, offset[:, None, None, None]) < 1e-6).all()
    assert (offset.abs() > 1e-4).all()  # p = 1: every sample chosen
    assert (offset.abs() < 5 * 0.2).all()  # brightness_std = 0.2


@pytest.mark.parametrize("c", [1, 3])
def test_every_transform_together_stays_finite(c: int) -> None:
    x = images(n=16, c=c, h=32, w=32)
    torch.manual_seed(7)
    out = AugmentPipe(p=1.0)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert (per_sample_max(out, x) > 1e-3).all()


def test_same_rng_state_same_output() -> None:
    x = images(n=4)
    pipe = AugmentPipe(p=0.7)
    torch.manual_seed(8)
    first = pipe(x)
    torch.manual_seed(8)
    again = pipe(x)
    other = pipe(x)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_colour_needs_one_or_three_channels() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        AugmentPipe(p=1.0)(images(c=2))
    assert only(*GEOMETRIC)(images(c=2)).shape == (8, 2, 16, 16)  # the geometric part takes any channels


def _seeded(pipe: AugmentPipe, seed: int):
    """pipe as a function of its images alone: the same draws at every call, the caller's RNG untouched."""

    def f(x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return pipe(x)

    return f


@pytest.mark.parametrize("c", [1, 3])
def test_first_derivative_matches_finite_differences(c: int) -> None:
    x = images(n=2, c=c, h=8, w=8, dtype=torch.float64).requires_grad_(True)
    # Fast mode: finite differences along a random direction against the backward's vector-Jacobian product.
    assert torch.autograd.gradcheck(_seeded(AugmentPipe(p=1.0), seed=9), (x,), fast_mode=True)


def test_r1_through_the_pipe_has_a_second_derivative() -> None:
    # R1 = |d D(pipe(x)) / dx|^2 with a tiny D; its gradient w.r.t. D's weights runs the pipe's double backward.
    x = images(n=2, c=3, h=8, w=8, dtype=torch.float64)
    pipe = _seeded(AugmentPipe(p=1.0), seed=10)

    def r1(weight: torch.Tensor) -> torch.Tensor:
        reals = x.detach().requires_grad_(True)
        scores = F.softplus(F.conv2d(pipe(reals), weight)).sum()
        (grad,) = torch.autograd.grad(scores, reals, create_graph=True)
        return grad.square().sum()

    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    weight.requires_grad_(True)
    r1(weight).backward()
    assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(r1, (weight,), fast_mode=True)
