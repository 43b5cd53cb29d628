"""The FID Inception-v3 network, in plain torch (no torchvision).

This is the TensorFlow graph "inception-2015-12-05" that the original FID code (TTUR) and the
Inception Score code froze, as pytorch-fid, torch-fidelity and torchmetrics reproduce it. It
differs from torchvision's Inception-v3 in four places, all to match TensorFlow:
- the average pools inside Mixed_5*, Mixed_6b..e and Mixed_7b ignore zero padding;
- Mixed_7c pools its pool branch with a max pool (a quirk of the TF graph);
- the input is resized to 299x299 with TF1's bilinear resize (no half-pixel centres, no
  antialiasing), not PyTorch's (or, with `resize="clean"`, as clean-fid's clean mode does:
  bigtrain.eval.resize);
- pixels are normalised as (x - 128) / 128, as the graph's Sub/Mul ops do.
The classifier has 1008 outputs. Its logits are taken without the bias, as the original IS
code does (`pool3 @ W`), which is torch-fidelity's and torchmetrics' "logits_unbiased".

Module and parameter names follow torch-fidelity's state dict, so the standard weights file
loads with its keys as they are (see `bigtrain.eval.weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.eval.resize import RESIZE_MODES, clean_resize
from bigtrain.eval.weights import WeightsError, WeightsFile, read_state_dict, resolve_weights
from bigtrain.sampling import to_uint8

INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_LOGITS = 1008
NETWORK = "tf-inception-v3-2015-12-05"
RESIZE = RESIZE_MODES["legacy"]  # the resize every protocol record names, unless made with resize="clean"


def tf1_resize_bilinear(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of float images [N, C, H, W] to [N, C, size, size] exactly as TF1's
    `tf.image.resize_bilinear(align_corners=False)` computes it.

    TF1 maps output pixel i to input coordinate i * (in / out) (no half-pixel offset), takes the
    two neighbouring input pixels (the upper one clamped to the border) and interpolates first
    along the width, then along the height. The scale and coordinates are float32, as in TF.
    Both passes are separable, so the width pass runs once per input row.
    """

    def taps(in_size: int) -> tuple[Tensor, Tensor, Tensor]:
        scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(size, dtype=torch.float32)
        pos = torch.arange(size, dtype=torch.float32) * scale
        lo = pos.floor()
        hi = (lo + 1).clamp_(max=in_size - 1)
        return lo.long().to(x.device), hi.long().to(x.device), (pos - lo).to(device=x.device, dtype=x.dtype)

    x_lo, x_hi, dx = taps(x.shape[3])
    y_lo, y_hi, dy = taps(x.shape[2])
    left, right = x[..., x_lo], x[..., x_hi]  # [N, C, H, size]
    rows = left + (right - left) * dx
    top, bottom = rows[:, :, y_lo], rows[:, :, y_hi]  # [N, C, size, size]
    return top + (bottom - top) * dy[:, None]


class BasicConv2d(nn.Module):
    """Conv (no bias) -> batch norm with the stored statistics -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        # He initialisation keeps activations in range through ~100 layers, so an untrained
        # network (tests, benchmarks) gives features of a sensible scale. Loaded weights replace it.
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        # Always the stored statistics: the network is a fixed feature extractor, so a
        # `.train()` from an enclosing module must not switch it to batch statistics.
        bn = self.bn
        x = F.batch_norm(self.conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return F.relu(x)


def _avg_pool_3x3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)  # TF ignores padding


class InceptionA(nn.Module):
    """Mixed_5b/c/d: 35x35 grid; 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35x35 -> 17x17."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b/c/d/e: 17x17 grid with factorised 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17x17 -> 8x8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b/c: 8x8 grid with expanded 3x3 branches. `max_pool`: Mixed_7c's TF quirk."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), b3, b3d, self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """images -> (pool features [N, 2048], unbiased logits [N, 1008]), both float32.

    Images are uint8 [N, C, H, W] (C = 1 or 3, any size) or floats in [-1, 1], which are first
    mapped to uint8 with rounding and clamping, as if saved to PNG. The network always runs with
    its stored batch-norm statistics and without gradients. `resize` is "legacy" (TF1 bilinear) or
    "clean" (bigtrain.eval.resize).
    """

    num_features = POOL_FEATURES  # torchmetrics reads this name

    def __init__(self, resize: str = "legacy"):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.resize = resize
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(POOL_FEATURES, NUM_LOGITS)
        self.weights: Optional[WeightsFile] = None  # set by `load_weights`; None = untrained
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            images = to_uint8(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grayscale: the same plane in R, G and B
        if self.resize == "clean":
            x = clean_resize(images, INPUT_SIZE).to(self.fc.weight.device)  # [N, 3, 299, 299]
        else:
            x = tf1_resize_bilinear(images.to(self.fc.weight.device, torch.float32), INPUT_SIZE)
        return self.features_299(x)

    @torch.no_grad()
    def features_299(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pool, logits) of float pixels [N, 3, 299, 299] in [0, 255], already resized."""
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [N, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [N, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [N, 288, 35, 35]
        x = self.Mixed_6a(x)  # [N, 768, 17, 17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [N, 768, 17, 17]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [N, 2048, 8, 8]
        pool = x.mean(dim=(2, 3))  # [N, 2048]
        logits = pool @ self.fc.weight.T  # [N, 1008], no bias: the IS convention
        return pool, logits

    def load_weights(self, weights: WeightsFile) -> "InceptionV3":
        """Load a weights file whose keys and shapes match this network exactly; refuse others.

        BatchNorm's `num_batches_tracked` counters may be present or not (older exports lack
        them); they play no part in evaluation.
        """
        state = read_state_dict(weights.path)
        expected = {k: v.shape for k, v in self.state_dict().items() if not k.endswith("num_batches_tracked")}
        given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        problems = []
        missing = sorted(expected.keys() - given.keys())
        unexpected = sorted(given.keys() - expected.keys())
        if missing:
            problems.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        wrong = [
            f"{k} {list(given[k].shape)} != {list(shape)}"
            for k, shape in expected.items()
            if k in given and tuple(given[k].shape) != tuple(shape)
        ]
        if wrong:
            problems.append(f"{len(wrong)} shape mismatches ({_first(wrong)})")
        if problems:
            raise WeightsError(f"{weights.path}: not FID Inception-v3 weights: {'; '.join(problems)}")
        self.load_state_dict({k: v.float() for k, v in given.items()}, strict=False)
        self.weights = weights
        return self

    def protocol(self) -> dict:
        """What a result computed with this network must record to be comparable."""
        w = self.weights
        return {
            "network": NETWORK,
            "resize": RESIZE_MODES[self.resize],
            "weights_file": str(w.path) if w else None,
            "weights_sha256": w.sha256 if w else None,
            "standard_weights": bool(w and w.is_standard),
        }


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def load_inception(
    path: str | Path | None = None, *, device: torch.device | str = "cpu", download: bool = True,
    resize: str = "legacy",
) -> InceptionV3:
    """The FID network with its weights, found as `bigtrain.eval.weights.resolve_weights` says;
    `resize`: "legacy" or "clean" (bigtrain.eval.resize)."""
    return InceptionV3(resize).load_weights(resolve_weights(path, download=download)).to(device)
