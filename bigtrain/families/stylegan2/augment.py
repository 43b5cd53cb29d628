"""ADA's augmentation pipe (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data").

The 'bgc' set of stylegan2-ada-pytorch (training/augment.py) with its default strengths:
- blit: x-flip, rotations by multiples of 90 degrees, integer translation (up to `xint_max` of the side);
- geometric: isotropic scale (log2 std `scale_std`), rotation (up to `rotate_max` of a full turn, split into a
  pre- and a post-rotation around the anisotropic scale), anisotropic scale (log2 std `aniso_std`), fractional
  translation (std `xfrac_std` of the side);
- colour: brightness (std), contrast (log2 std), luma flip, hue rotation around the luma axis, saturation.

Every transform has a probability multiplier (1 in 'bgc', 0 turns it off) and is applied to a sample with
probability `multiplier * p`, `p` being the pipe's buffer that ADA's recipe adjusts. The draws are per sample,
from torch's default generator on the images' device, in the reference's order and sizes, so the pipe is a pure
function of (p, that generator's state, the images) and a resume that restores the RNG replays it.

The blit and geometric transforms compose into one inverse homogeneous matrix per sample (output pixel -> input
pixel), executed once: reflect padding, 2x upsampling with the sym6 wavelet low-pass, bilinear `grid_sample`,
2x downsampling with the same filter. The colour transforms compose into one 4x4 matrix per sample acting on
homogeneous RGB; a 1-channel image is read as R = G = B (hue and saturation, which leave grey alone, are skipped
there, draws included, as in the reference). Every step is linear in the images, and each op has a second
derivative in torch, so R1 through the pipe reaches the un-augmented reals.

As in the reference, flips and quarter turns go through that warp too, and sym6 is not symmetric: a mirrored or
turned image comes back about 0.1 pixel off its exact pixel permutation (and slightly low-passed near Nyquist);
kept samples and integer translations come back exact up to rounding.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.layers.resample import downsample2d, setup_filter, upsample2d

# Low-pass decomposition filter of Daubechies' symlet 6 (PyWavelets' Wavelet("sym6").dec_lo). It is orthogonal:
# upsampling with it and downsampling with its mirror image is the identity, so a warp by a whole-pixel
# transform (flip, 90-degree rotation, integer shift) returns the pixels themselves, up to rounding.
SYM6 = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)

# Unit vector along grey in homogeneous RGB: the axis of luma flip, hue rotation and saturation.
LUMA_AXIS = (1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3), 0.0)

Entry = Union[Tensor, float]


def _matrices(rows: Sequence[Sequence[Entry]], n: int, device: torch.device) -> Tensor:
    """[N, R, C] float32 matrices from R rows of C entries, each a number or a per-sample [N] tensor."""
    entries = [torch.as_tensor(e, dtype=torch.float32, device=device).expand(n) for row in rows for e in row]
    return torch.stack(entries, dim=-1).reshape(n, len(rows), len(rows[0]))


def _translate2d(tx: Entry, ty: Entry, n: int, device: torch.device) -> Tensor:
    return _matrices([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, device)


def _scale2d(sx: Entry, sy: Entry, n: int, device: torch.device) -> Tensor:
    return _matrices([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, device)


def _inv_scale2d(sx: Entry, sy: Entry, n: int, device: torch.device) -> Tensor:
    """The inverse of scaling by (sx, sy), the form in which the geometric transforms compose."""
    return _scale2d(1 / sx, 1 / sy, n, device)


def _rotate2d(theta: Tensor, n: int, device: torch.device) -> Tensor:
    """Counter-clockwise rotation by theta [N] (radians, x right and y down: clockwise on screen)."""
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrices([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, device)


def _gate(value: Tensor, chance: Entry, default: float) -> Tensor:
    """`value` [N, ...] where one fresh uniform draw per sample falls below `chance`, else `default`."""
    chosen = torch.rand(value.shape[0], device=value.device) < chance  # [N]
    chosen = chosen.reshape([-1] + [1] * (value.dim() - 1))
    return torch.where(chosen, value, torch.full_like(value, default))


class AugmentPipe(nn.Module):
    """ADA's differentiable augmentation of D's inputs: images [N, C, H, W] -> same shape and dtype.

    Keyword arguments are the reference's: a probability multiplier per transform (the 'bgc' set on by default;
    0 turns a transform off) and the transforms' strengths. `p` (a 0-d buffer, saved in the state dict) scales
    every multiplier; at p = 0 the pipe returns its input itself. C must be 1 or 3 while a colour transform is on.
    """

    def __init__(
        self,
        *,
        p: float = 0.0,
        xflip: float = 1.0,  # x-flip of half the chosen samples
        rotate90: float = 1.0,  # rotation by 0, 90, 180 or 270 degrees
        xint: float = 1.0,  # integer translation
        xint_max: float = 0.125,  # largest integer translation, as a fraction of the side
        scale: float = 1.0,  # isotropic scaling
        rotate: float = 1.0,  # arbitrary rotation
        aniso: float = 1.0,  # anisotropic scaling
        xfrac: float = 1.0,  # fractional translation
        scale_std: float = 0.2,  # log2 std of isotropic scaling
        rotate_max: float = 1.0,  # largest rotation, 1 = a full turn
        aniso_std: float = 0.2,  # log2 std of anisotropic scaling
        xfrac_std: float = 0.125,  # std of fractional translation, as a fraction of the side
        brightness: float = 1.0,  # additive brightness
        contrast: float = 1.0,  # multiplicative contrast
        lumaflip: float = 1.0,  # reflection of colours along the luma axis, for half the chosen samples
        hue: float = 1.0,  # rotation of colours around the luma axis
        saturation: float = 1.0,  # scaling of colours away from the luma axis
        brightness_std: float = 0.2,  # std of brightness
        contrast_std: float = 0.5,  # log2 std of contrast
        hue_max: float = 1.0,  # largest hue rotation, 1 = a full turn
        saturation_std: float = 1.0,  # log2 std of saturation
    ):
        super().__init__()
        # Every keyword but p becomes a float attribute of the same name, as the reference names them.
        options = {k: float(v) for k, v in locals().items() if k not in ("self", "__class__", "p")}
        negative = [k for k, v in options.items() if v < 0]
        if negative:
            raise ValueError(f"AugmentPipe: {negative[0]} must be >= 0, got {options[negative[0]]}")
        for name, value in options.items():
            setattr(self, name, value)
        self.register_buffer("p", torch.tensor(float(p)))
        self.p_value = float(p)  # p on the host: forward skips the pipe at 0 without reading the device
        # A constant, rebuilt with the pipe: no place in checkpoints.
        self.register_buffer("hz_geom", setup_filter(SYM6), persistent=False)

    def set_p(self, value: float) -> None:
        """Set p (the buffer the draws use, and its host copy)."""
        self.p.fill_(float(value))
        self.p_value = float(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.p_value = float(self.p)  # one read, when a checkpoint loads

    def forward(self, images: Tensor) -> Tensor:
        """Augment images [N, C, H, W] with this pipe's p, drawing from the default generator of their device."""
        if images.dim() != 4:
            raise ValueError(f"AugmentPipe needs images [N, C, H, W], got shape {tuple(images.shape)}")
        # p = 0 (ADA's start) costs nothing and changes nothing; the host copy decides, without a sync
        if not self.p_value > 0:
            return images
        g_inv = self._geometric_matrix(images)
        if g_inv is not None:
            images = self._warp(images, g_inv)
        colour = self._colour_matrix(images)
        if colour is not None:
            images = _apply_colour(images, colour)
        return images

    def _geometric_matrix(self, images: Tensor) -> Optional[Tensor]:
        """Draw the blit and geometric transforms: [N, 3, 3] matrices mapping output to input pixel coordinates
        (origin at the image centre), or None when every such transform is off."""
        n, _, h, w = images.shape
        dev = images.device
        if not any((self.xflip, self.rotate90, self.xint, self.scale, self.rotate, self.aniso, self.xfrac)):
            return None
        g_inv = torch.eye(3, device=dev)[None]  # [1, 3, 3]; each transform's inverse multiplies on the right
        if self.xflip > 0:
            flip = _gate(torch.floor(torch.rand(n, device=dev) * 2), self.xflip * self.p, 0)  # [N] in {0, 1}
            g_inv = g_inv @ _inv_scale2d(1 - 2 * flip, 1, n, dev)
        if self.rotate90 > 0:
            quarter = _gate(torch.floor(torch.rand(n, device=dev) * 4), self.rotate90 * self.p, 0)  # [N] in 0..3
            g_inv = g_inv @ _rotate2d(math.pi / 2 * quarter, n, dev)
        if self.xint > 0:
            shift = _gate((torch.rand(n, 2, device=dev) * 2 - 1) * self.xint_max, self.xint * self.p, 0)  # [N, 2]
            g_inv = g_inv @ _translate2d(-torch.round(shift[:, 0] * w), -torch.round(shift[:, 1] * h), n, dev)
        if self.scale > 0:
            s = _gate(torch.exp2(torch.randn(n, device=dev) * self.scale_std), self.scale * self.p, 1)
            g_inv = g_inv @ _inv_scale2d(s, s, n, dev)
        # Two rotations, each with this chance, rotate a sample with probability rotate * p in all.
        p_rot = 1 - torch.sqrt((1 - self.rotate * self.p).clamp(0, 1))
        if self.rotate > 0:
            theta = _gate((torch.rand(n, device=dev) * 2 - 1) * math.pi * self.rotate_max, p_rot, 0)
            g_inv = g_inv @ _rotate2d(theta, n, dev)
        if self.aniso > 0:
            s = _gate(torch.exp2(torch.randn(n, device=dev) * self.aniso_std), self.aniso * self.p, 1)
            g_inv = g_inv @ _inv_scale2d(s, 1 / s, n, dev)
        if self.rotate > 0:
            theta = _gate((torch.rand(n, device=dev) * 2 - 1) * math.pi * self.rotate_max, p_rot, 0)
            g_inv = g_inv @ _rotate2d(theta, n, dev)
        if self.xfrac > 0:
            shift = _gate(torch.randn(n, 2, device=dev) * self.xfrac_std, self.xfrac * self.p, 0)  # [N, 2]
            g_inv = g_inv @ _translate2d(-shift[:, 0] * w, -shift[:, 1] * h, n, dev)
        return g_inv.expand(n, 3, 3)

    def _warp(self, images: Tensor, g_inv: Tensor) -> Tensor:
        """Resample images [N, C, H, W] at g_inv [N, 3, 3] @ (output pixel): same shape."""
        n, c, h, w = images.shape
        dev = images.device
        cx, cy = (w - 1) / 2, (h - 1) / 2
        taps_pad = self.hz_geom.shape[0] // 4  # low-res pixels of filter support on each side

        # Reflect-pad by as much as any output corner reaches outside the image (over the batch, so the batch
        # stays one tensor), plus the filter's support; reflect padding needs less than the side itself.
        corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], device=dev)  # [3, 4]
        reach = (g_inv @ corners)[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * 4] input coordinates
        margin = torch.cat([-reach, reach]).amax(dim=1)  # [left, top, right, bottom] beyond the centre
        margin = margin + torch.tensor([2 * taps_pad - cx, 2 * taps_pad - cy] * 2, device=dev)
        margin = torch.minimum(margin.clamp(min=0), torch.tensor([w - 1, h - 1] * 2, device=dev))
        left, top, right, bottom = margin.ceil().to(torch.int64).tolist()
        images = F.pad(images, [left, right, top, bottom], mode="reflect")
        g_inv = _translate2d((left - right) / 2, (top - bottom) / 2, 1, dev) @ g_inv  # the padded image's centre

        # Warp at twice the resolution, so bilinear interpolation acts on a band-limited signal.
        images = upsample2d(images, self.hz_geom, up=2)
        g_inv = _scale2d(2, 2, 1, dev) @ g_inv @ _scale2d(0.5, 0.5, 1, dev)
        g_inv = _translate2d(-0.5, -0.5, 1, dev) @ g_inv @ _translate2d(0.5, 0.5, 1, dev)

        # affine_grid maps normalised output coordinates [-1, 1] to normalised input ones: rescale both ends.
        out_h, out_w = (h + 2 * taps_pad) * 2, (w + 2 * taps_pad) * 2
        in_h, in_w = images.shape[2:]
        g_inv = _scale2d(2 / in_w, 2 / in_h, 1, dev) @ g_inv @ _scale2d(out_w / 2, out_h / 2, 1, dev)
        grid = F.affine_grid(g_inv[:, :2, :].to(images.dtype), [n, c, out_h, out_w], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # Back to the input resolution; the negative padding crops the filter's support away again.
        return downsample2d(images, self.hz_geom, down=2, padding=-2 * taps_pad, flip_filter=True)

    def _colour_matrix(self, images: Tensor) -> Optional[Tensor]:
        """Draw the colour transforms: [N, 4, 4] matrices acting on homogeneous RGB, or None when all are off."""
        n, c = images.shape[:2]
        dev = images.device
        grey_only = c == 1  # hue and saturation leave grey unchanged: neither is drawn for it
        if not any((self.brightness, self.contrast, self.lumaflip) + ((self.hue, self.saturation) * (not grey_only))):
            return None
        if c not in (1, 3):
            raise ValueError(f"AugmentPipe's colour transforms need 1 or 3 channels, got {c}")
        v = torch.tensor(LUMA_AXIS, device=dev)  # [4]
        vvt = torch.outer(v, v)  # [4, 4] projection onto grey
        eye = torch.eye(4, device=dev)
        colour = eye[None]  # [1, 4, 4]; each transform multiplies on the left
        if self.brightness > 0:
            b = _gate(torch.randn(n, device=dev) * self.brightness_std, self.brightness * self.p, 0)
            colour = _matrices([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], n, dev) @ colour
        if self.contrast > 0:
            k = _gate(torch.exp2(torch.randn(n, device=dev) * self.contrast_std), self.contrast * self.p, 1)
            colour = _matrices([[k, 0, 0, 0], [0, k, 0, 0], [0, 0, k, 0], [0, 0, 0, 1]], n, dev) @ colour
        if self.lumaflip > 0:
            flip = _gate(torch.floor(torch.rand(n, device=dev) * 2), self.lumaflip * self.p, 0)  # [N] in {0, 1}
            colour = (eye - 2 * vvt * flip[:, None, None]) @ colour  # Householder reflection of grey
        if self.hue > 0 and not grey_only:
            theta = _gate((torch.rand(n, device=dev) * 2 - 1) * math.pi * self.hue_max, self.hue * self.p, 0)
            colour = _rotation_about(v, theta) @ colour
        if self.saturation > 0 and not grey_only:
            s = _gate(torch.exp2(torch.randn(n, device=dev) * self.saturation_std), self.saturation * self.p, 1)
            colour = (vvt + (eye - vvt) * s[:, None, None]) @ colour
        return colour.expand(n, 4, 4)


def _rotation_about(v: Tensor, theta: Tensor) -> Tensor:
    """[N, 4, 4] rotations of homogeneous RGB by theta [N] around the unit axis v [4] (v[3] = 0), by Rodrigues'
    formula: cos * I + sin * [v]x + (1 - cos) * v v^T on the colour block, the homogeneous row left alone."""
    cross = torch.zeros(4, 4, device=v.device)  # [v]x: cross @ u = v x u
    cross[0, 1], cross[0, 2], cross[1, 2] = -v[2], v[1], -v[0]
    cross = cross - cross.t()
    rgb = torch.eye(4, device=v.device)
    rgb[3, 3] = 0
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]  # [N, 1, 1]
    return cos * rgb + sin * cross + (1 - cos) * torch.outer(v, v) + (torch.eye(4, device=v.device) - rgb)


def _apply_colour(images: Tensor, colour: Tensor) -> Tensor:
    """Apply colour [N, 4, 4] to images [N, C, H, W] with C = 3, or C = 1 read as grey: same shape."""
    n, c, h, w = images.shape
    colour = colour.to(images.dtype)
    x = images.reshape(n, c, h * w)
    if c == 3:
        x = colour[:, :3, :3] @ x + colour[:, :3, 3:]
    else:
        # Grey g is RGB (g, g, g); the output's grey is the mean of the transformed R, G and B.
        row = colour[:, :3, :].mean(dim=1, keepdim=True)  # [N, 1, 4]
        x = x * row[:, :, :3].sum(dim=2, keepdim=True) + row[:, :, 3:]
    return x.reshape(n, c, h, w)
