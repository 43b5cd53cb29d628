"""How images are brought to Inception's 299 x 299 input: the two modes of `--resize`.

- `legacy` (the default): TF1's bilinear resize of the uint8 pixels inside the network
  (`inception.tf1_resize_bilinear`), which is what the original FID code and published FIDs use.
- `clean`: clean-fid's "clean" mode (Parmar et al. 2022): each channel of the uint8 image is
  converted to float32 and resized with PIL's bicubic filter (antialiased when shrinking), the
  result clipped to [0, 255] and NOT re-quantised to uint8. clean-fid's leaderboard uses it for
  its newer entries. PIL does the resize, so the values are PIL's own, bit for bit.
FID numbers of one mode are not comparable with the other's: the mode is part of the protocol
record (its `resize` field), and reference statistics must be made with the same mode.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

RESIZE_MODES = {"legacy": "tf1-bilinear-299", "clean": "pil-bicubic-float-299"}  # mode -> protocol name


def clean_resize(images: Tensor, size: int) -> Tensor:
    """uint8 images [N, C, H, W] -> float32 [N, C, size, size] in [0, 255], clean-fid's clean mode."""
    if images.dtype != torch.uint8:
        raise ValueError(f"clean resize takes uint8 images, got {images.dtype}")
    planes = images.cpu().numpy().astype(np.float32).reshape(-1, *images.shape[-2:])  # [N * C, H, W]
    out = np.empty((len(planes), size, size), np.float32)
    for i, plane in enumerate(planes):
        out[i] = np.asarray(Image.fromarray(plane, mode="F").resize((size, size), resample=Image.BICUBIC))
    return torch.from_numpy(out.clip(0, 255)).view(*images.shape[:2], size, size).to(images.device)
