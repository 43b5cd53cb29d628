"""StyleGAN2's ops and layers in plain PyTorch, every one second-order differentiable: bias and
activation with gain and clamp, the modulated / demodulated convolution, minibatch stddev, and the
equalised-learning-rate fully connected and conv layers (weights stored N(0, 1) / lr_mult, scaled at
runtime by lr_mult / sqrt(fan_in)), as NVlabs/stylegan2-ada-pytorch's networks.py has them (nets.py
builds the networks from them)."""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.layers.resample import conv2d_resample, setup_filter

SQRT2, SQRT_HALF = math.sqrt(2.0), math.sqrt(0.5)
HALF = (torch.float16, torch.bfloat16)


# ---- ops -------------------------------------------------------------------------------------------------
def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """x [N, F] scaled to unit mean square per row."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def bias_act(x: Tensor, b: Tensor | None, act: str = "linear", gain: float = 1.0, clamp: float | None = None) -> Tensor:
    """(x + b along dim 1) -> lrelu(0.2) or linear -> * gain -> clamped to [-clamp, clamp], in plain ops."""
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    if gain != 1:
        x = x * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    noise: Optional[Tensor] = None,
    up: int = 1,
    f: Optional[Tensor] = None,
    demodulate: bool = True,
    fused: bool = True,
) -> Tensor:
    """StyleGAN2's modulated conv, 'same' padding, upsampling by `up` with FIR filter `f`: x [N, I, H, W],
    weight [O, I, k, k], styles [N, I] (+ noise [N or 1, 1, H', W']) -> [N, O, H', W'].

    Sample n's weight is weight * styles[n] over I, demodulated to unit norm per output channel.
    `fused`: one grouped conv with the batch's per-sample weights; else the styles scale x before and
    the demodulation the output after one shared conv (cheaper to train). The same values.
    """
    n, (_, in_ch, kh, kw) = x.shape[0], weight.shape
    if x.dtype in HALF and demodulate:  # scale invariant after demodulation; keeps the products in fp16's range
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    conv = dict(f=f, up=up, padding=kw // 2, flip_weight=up == 1)  # flip_weight: the reference's (faster) choice
    w = dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    if not fused:
        x = conv2d_resample(x * styles.to(x.dtype).reshape(n, -1, 1, 1), weight.to(x.dtype), **conv)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        return x if noise is None else x + noise.to(x.dtype)
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])  # [1, N * I, H, W]: the samples as groups
    x = conv2d_resample(x, w.reshape(-1, in_ch, kh, kw).to(x.dtype), groups=n, **conv)
    x = x.reshape(n, -1, *x.shape[2:])  # [N, O, H', W']
    return x if noise is None else (x + noise).to(x.dtype)


def minibatch_stddev(x: Tensor, group_size: int, num_channels: int) -> Tensor:
    """x [N, C, H, W] -> [N, C + F, H, W]: per group of G = min(group_size, N) samples (sample i in group
    i mod N/G), the stddev of each feature, averaged over each of F channel groups and all positions.
    In x's dtype: bigtrain.layers.MinibatchStddev computes in float32, which float64 checks cannot use."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch stddev: batch {n} must be a multiple of the group size {g}")
    y = x.reshape(g, -1, num_channels, c // num_channels, h, w)  # [G, n, F, c, H, W]
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # [n, F, c, H, W]
    y = y.mean(dim=[2, 3, 4]).reshape(-1, num_channels, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)


def half_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype of the fp16 resolutions: None (full precision) off CUDA, bf16 inside a bf16 autocast."""
    if device.type != "cuda":
        return None
    bf16 = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16
    return torch.bfloat16 if bf16 else torch.float16


def one_hot(y: Optional[Tensor], num_classes: int, dtype: torch.dtype) -> Optional[Tensor]:
    """int64 labels [N] -> one-hot [N, K] for a conditional net; None for an unconditional one."""
    if num_classes == 0:
        if y is not None:
            raise ValueError("this network is unconditional: pass no labels y")
        return None
    if y is None or y.dtype != torch.int64 or y.ndim != 1:
        raise ValueError(f"this network is class-conditional ({num_classes} classes): pass labels y, int64 [N]")
    return F.one_hot(y, num_classes).to(dtype)


def fp16_resolution(resolution: int, num_fp16_res: int) -> int:
    """The lowest of the top `num_fp16_res` resolutions; never 4x4."""
    return max(2 ** (resolution.bit_length() - num_fp16_res), 8)


# ---- layers ----------------------------------------------------------------------------------------------
class FullyConnectedLayer(nn.Module):
    """x [N, in] -> [N, out]: weight N(0, 1) / lr_mult scaled by lr_mult / sqrt(in), bias by lr_mult."""

    def __init__(self, in_f: int, out_f: int, act: str = "linear", lr_mult: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.act, self.weight_gain, self.bias_gain = act, lr_mult / math.sqrt(in_f), lr_mult
        self.weight = nn.Parameter(torch.randn(out_f, in_f) / lr_mult)
        self.bias = nn.Parameter(torch.full((out_f,), float(bias_init)))

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight.to(x.dtype) * self.weight_gain, self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if self.act == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.act, gain=SQRT2)


class Conv2dLayer(nn.Module):
    """k x k 'same' conv (weight N(0, 1) scaled by 1 / sqrt(fan_in)), resampling by `up` or `down` with the
    FIR filter of `taps`, + bias, act (* sqrt(2) for lrelu), * gain, clamp (* gain)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        act: str = "linear",
        clamp: Optional[float] = None,
        bias: bool = True,
        up: int = 1,
        down: int = 1,
        taps: Optional[List[float]] = None,
    ):
        super().__init__()
        self.act, self.clamp, self.up, self.down = act, clamp, up, down
        self.register_buffer("resample_filter", setup_filter(taps), persistent=False)
        self.weight_gain, self.act_gain = 1 / math.sqrt(in_ch * kernel**2), SQRT2 if act == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        padding, f = self.weight.shape[-1] // 2, self.resample_filter
        x = conv2d_resample(x, w, f, self.up, self.down, padding, flip_weight=self.up == 1)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return bias_act(x, b, self.act, self.act_gain * gain, None if self.clamp is None else self.clamp * gain)
