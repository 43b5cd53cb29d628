"""Image transforms shared by the data sources (uint8 in, uint8 out, CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_images(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize uint8 images [N, C, H, W] to [N, C, resolution, resolution].

    Downscaling uses area averaging (a box filter, as stylegan2-ada's dataset tool recommends);
    upscaling uses bilinear interpolation. Non-square images are squashed, not cropped: crop
    before if that is wanted.
    """
    if x.shape[-2:] == (resolution, resolution):
        return x
    xf = x.float()
    if x.shape[-1] >= resolution and x.shape[-2] >= resolution:
        out = F.interpolate(xf, size=(resolution, resolution), mode="area")
    else:
        out = F.interpolate(xf, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def split_pair(x: torch.Tensor) -> torch.Tensor:
    """Side-by-side A|B images [N, C, H, 2W] -> [N, 2C, H, W], A's channels first (the
    reference Pix2Pix's aligned layout); from then on every transform moves both halves alike."""
    if x.shape[-1] % 2:
        raise ValueError(f"a side-by-side A|B image needs an even width, got {x.shape[-2]}x{x.shape[-1]} (H x W)")
    half = x.shape[-1] // 2
    return torch.cat([x[..., :half], x[..., half:]], dim=-3)


def crop_offsets(n: int, load_size: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random top-left corners [n, 2] (row, column) of `size` windows in `load_size` images."""
    return torch.randint(load_size - size + 1, (n, 2), generator=gen)


def crop(x: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, L, L] -> [N, C, size, size], sample i's window at offsets[i] (all its channels
    alike, so the halves of a pair stay aligned)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.stack([x[i, :, r : r + size, c : c + size] for i, (r, c) in enumerate(offsets.tolist())])
