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
