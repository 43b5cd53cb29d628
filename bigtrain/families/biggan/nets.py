"""BigGAN's ResNets (Brock et al. 2019), laid out as BigGAN-PyTorch's `BigGAN.py` (BGP) and, at
32 px, PyTorch-StudioGAN's `big_resnet.py` (docs/design.md, "BigGAN").

G: z -> (hierarchical latent: z split into one chunk for the input layer and one per block) an
SN-linear map to a 4x4 map -> residual up-blocks (CBN, ReLU, 2x nearest upsample, conv3x3, CBN,
ReLU, conv3x3; shortcut upsample + conv1x1), self-attention after the blocks at the resolutions
in `attention` -> BN, ReLU, conv3x3 to C, tanh. Each conditional BN's gain (1 + .) and bias are
SN-linear maps (no bias) of [shared class embedding, the block's z chunk]; the shared embedding
(`shared_dim`, 128) has no spectral norm (BGP: it "seems to randomly cripple G").
D: residual down-blocks, wide (the first conv already has the block's output channels), the
first one without pre-activation, self-attention after the first block reaching a resolution in
`attention` -> ReLU, global sum pooling, a linear logit + the projection <embed(y), h>.
Every conv, linear and embedding starts orthogonal (BGP `--G_init ortho --D_init ortho`), biases
at torch's defaults, then spectral norm (one power iteration, `sn_eps`) wraps every weight but
G's shared embedding.

Numerics: the power iteration and batch-norm statistics run in fp32 inside bf16/fp16 autocast.
With `cross_replica`, G's training-mode statistics are summed over all processes (a
differentiable all-reduce the engine attaches); G_ema's copy never does this
(bigtrain.engine.players.EMA turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from bigtrain.config import _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.layers import DiscriminatorHead, check_labels, image_resolution, resolve_cond
from bigtrain.netconfig import NetConfig


@dataclass
class _BigganNet(NetConfig):
    """The keys both biggan nets read (Brock et al. 2019; BigGAN-PyTorch's defaults for ImageNet)."""

    arch: str = "biggan"  # this class's architecture
    width: int = 96  # channel multiple `ch` (BigGAN-PyTorch's G_ch / D_ch): see LADDERS below
    cond: str = "auto"  # G: cbn only (auto); D: projection (auto) | acgan
    attention: Optional[List[int]] = None  # resolutions followed by self-attention; null = 64 from 128 px, else res/2
    spectral_norm: bool = True  # spectral norm on every conv and linear (D's embedding too; never G's shared one)
    sn_eps: float = 1e-6  # spectral norm epsilon (BigGAN-PyTorch launch scripts: --SN_eps 1e-6)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _check_positive(f"{prefix}.sn_eps", self.sn_eps)
        for r in self.attention or ():
            if r < 4 or r & (r - 1):
                raise ConfigError(
                    f"{prefix}.attention", f"resolutions must be powers of two >= 4, got {list(self.attention)}"
                )


@dataclass
class BigganGConfig(_BigganNet):
    hier: bool = True  # hierarchical latent: z split into one chunk per block plus one for the input layer
    shared_dim: int = 128  # size of the shared class embedding (no spectral norm) that feeds every conditional BN
    bn_eps: float = 1e-5  # batch norm epsilon (BigGAN-PyTorch --BN_eps 1e-5; StudioGAN 1e-4)
    cross_replica: bool = False  # G's batch-norm statistics over every process (SyncBN); G_ema uses its own

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _check_positive(f"{prefix}.shared_dim", self.shared_dim)
        _check_positive(f"{prefix}.bn_eps", self.bn_eps)


@dataclass
class BigganDConfig(_BigganNet):
    pass


class Ladder(NamedTuple):
    g: tuple[int, ...]  # G's channels / width: the 4x4 map, then the output of each up-block
    d: tuple[int, ...]  # D's channels / width: the output of each down-block
    d_down: tuple[bool, ...]  # which D blocks halve the resolution


T, F_ = True, False
LADDERS = {
    # StudioGAN's CIFAR ladder (BGP's 32 px D is twice as wide: ch x 4)
    32: Ladder(g=(4, 4, 4, 4), d=(2, 2, 2, 2), d_down=(T, T, F_, F_)),
    64: Ladder(g=(16, 16, 8, 4, 2), d=(1, 2, 4, 8, 16), d_down=(T, T, T, T, F_)),
    128: Ladder(g=(16, 16, 8, 4, 2, 1), d=(1, 2, 4, 8, 16, 16), d_down=(T,) * 5 + (F_,)),
    256: Ladder(g=(16, 16, 8, 8, 4, 2, 1), d=(1, 2, 4, 8, 8, 16, 16), d_down=(T,) * 6 + (F_,)),
    512: Ladder(g=(16, 16, 8, 8, 4, 2, 1, 1), d=(1, 1, 2, 4, 8, 8, 16, 16), d_down=(T,) * 7 + (F_,)),
}


def default_attention(res: int) -> list[int]:
    """BGP's `--G_attn 64 --D_attn 64` from 128 px up; StudioGAN's CIFAR nets attend at 16x16."""
    return [64] if res >= 128 else [res // 2]


# ---- spectral norm and batch norm, in fp32 ----------------------------------------------------
class SpectralNormFP32(_SpectralNorm):
    """torch's spectral-norm parametrization with its power iteration and sigma outside autocast,
    so a bf16/fp16 forward normalises by the fp32 singular value (the weights are fp32 there)."""

    def forward(self, weight: Tensor) -> Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight)


def spectral_norm_fp32(net: nn.Module, eps: float, skip: Sequence[nn.Module] = ()) -> nn.Module:
    """One-iteration spectral norm on every conv, linear and embedding weight of `net` but `skip`."""
    skipped = {id(m) for m in skip}
    for module in list(net.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)) and id(module) not in skipped:
            parametrize.register_parametrization(module, "weight", SpectralNormFP32(module.weight, 1, 0, eps))
    return net


class Statistics(nn.BatchNorm2d):
    """Batch normalisation without affine parameters, in fp32: x [N, C, H, W] -> fp32 [N, C, H, W].

    With `cross_replica`, training-mode statistics are those of all processes' micro-batches
    together (BGP's cross-replica BN): the per-channel sums go through `all_reduce`, a
    differentiable sum over processes that the engine attaches to a trained player on more than
    one process (bigtrain.engine.backends.base.Backend.attach_cross_replica; models import no distributed
    code); running statistics are updated as nn.BatchNorm2d does (unbiased variance, `momentum`,
    or the cumulative mean when it is None). Without a reducer it is plain BN.
    """

    keeps_fp32_buffers = True  # its running statistics stay fp32 when an engine casts the net to bf16/fp16

    def __init__(self, channels: int, eps: float, cross_replica: bool = False):
        super().__init__(channels, eps=eps, affine=False)
        self.cross_replica = cross_replica
        self.all_reduce: Optional[Callable[[Tensor], Tensor]] = None

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.training and self.cross_replica and self.all_reduce is not None:
                return self._cross_replica(x)
            return super().forward(x)

    def _cross_replica(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        sums = self.all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3)), count]))  # [2C + 1]
        n = sums[-1]
        mean = sums[:c] / n
        var = (sums[c : 2 * c] / n - mean.square()).clamp_min(0.0)  # biased, as BN normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), factor)
            self.running_var.lerp_(var.detach() * n / (n - 1), factor)
        return (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]


class BigganBatchNorm(nn.Module):
    """BN whose gain and bias are maps of a condition c [N, cond_dim] (BGP's `ccbn`: gain = 1 +
    W_g c, bias = W_b c, both bias-free linear layers), or plain learned per-channel ones when
    cond_dim is 0 (G's last BN). x [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, channels: int, cond_dim: int, eps: float, cross_replica: bool):
        super().__init__()
        self.stats = Statistics(channels, eps, cross_replica)
        self.cond_dim = cond_dim
        if cond_dim:
            self.gain = nn.Linear(cond_dim, channels, bias=False)
            self.bias = nn.Linear(cond_dim, channels, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        h = self.stats(x)
        if not self.cond_dim:
            return h * self.weight[None, :, None, None] + self.shift[None, :, None, None]
        gain, bias = 1.0 + self.gain(c), self.bias(c)  # [N, C]
        return h * gain[:, :, None, None] + bias[:, :, None, None]


def conv(c_in: int, c_out: int, k: int = 3, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=bias)


class SelfAttention(nn.Module):
    """SAGAN's non-local block (Zhang et al. 2019) as BGP builds it: theta, phi (C/8 channels),
    g (C/2), output conv (C), phi and g max-pooled 2x, gain gamma starting at 0.
    x [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, ch: int):
        super().__init__()
        self.ch = ch
        self.theta = conv(ch, ch // 8, 1, bias=False)
        self.phi = conv(ch, ch // 8, 1, bias=False)
        self.g = conv(ch, ch // 2, 1, bias=False)
        self.o = conv(ch // 2, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))  # [1], not 0-d: DeepSpeed cannot broadcast a 0-d bf16 parameter

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        theta = self.theta(x).view(n, c // 8, h * w)  # [N, C/8, HW]
        phi = F.max_pool2d(self.phi(x), 2).view(n, c // 8, h * w // 4)  # [N, C/8, HW/4]
        g = F.max_pool2d(self.g(x), 2).view(n, c // 2, h * w // 4)  # [N, C/2, HW/4]
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # [N, HW, HW/4]
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(n, c // 2, h, w))  # [N, C, H, W]
        return x + self.gamma * o


class GBlock(nn.Module):
    """x [N, c_in, H, W], c [N, cond_dim] -> [N, c_out, 2H, 2W]."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, eps: float, cross_replica: bool):
        super().__init__()
        self.bn1 = BigganBatchNorm(c_in, cond_dim, eps, cross_replica)
        self.conv1 = conv(c_in, c_out)
        self.bn2 = BigganBatchNorm(c_out, cond_dim, eps, cross_replica)
        self.conv2 = conv(c_out, c_out)
        self.shortcut = conv(c_in, c_out, 1)

    def forward(self, x: Tensor, c: Optional[Tensor]) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """x [N, c_in, H, W] -> [N, c_out, H/2, W/2] (H, W when not `down`). The first block has no
    pre-activation (on images a ReLU would only clip) and pools before its shortcut conv."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = conv(c_in, c_out)  # wide: the hidden channels are the output's
        self.conv2 = conv(c_out, c_out)
        self.shortcut = conv(c_in, c_out, 1) if (c_in != c_out or down) else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: Tensor) -> Tensor:
        h = self._pool(self.conv2(F.relu(self.conv1(x if self.first else F.relu(x)))))
        if self.shortcut is None:
            return h + x
        skip = self.shortcut(self._pool(x)) if self.first else self._pool(self.shortcut(x))
        return h + skip


def _attention_after(
    resolutions: Sequence[int], channels: Sequence[int], wanted: Sequence[int], key: str
) -> list[bool]:
    """For each block (by its output resolution and channels), whether self-attention follows it:
    the first block reaching each wanted resolution; ConfigError naming `key` for one no block
    reaches, or where there are fewer than 8 channels (theta and phi have channels / 8)."""
    missing = sorted(set(wanted) - set(resolutions))
    if missing:
        raise ConfigError(key, f"no block outputs {missing} here (blocks output {sorted(set(resolutions))})")
    attend = [r in wanted and r not in resolutions[:i] for i, r in enumerate(resolutions)]
    for a, r, c in zip(attend, resolutions, channels):
        if a and c < 8:
            raise ConfigError(
                key,
                f"self-attention at {r}x{r} needs at least 8 channels there, the net has {c}: raise the width or drop "
                f"{r}",
            )
    return attend


def orthogonal_init(net: nn.Module) -> None:
    """BGP's `init_weights` with init 'ortho': every conv, linear and embedding weight."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
            nn.init.orthogonal_(module.weight)


class BigganGenerator(nn.Module):
    """z [N, z_dim] (+ y int64 [N], or a class embedding [N, shared_dim]) -> images in [-1, 1]."""

    def __init__(self, net: BigganGConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.g.arch", "biggan", tuple(LADDERS))
        if net.cond not in ("auto", "cbn"):
            raise ConfigError("model.g.cond", f"biggan G conditions its batch norms (cbn, = auto); got {net.cond!r}")
        channels = [net.width * k for k in LADDERS[res].g]
        blocks = len(channels) - 1
        self.num_classes, self.hier = num_classes, net.hier
        slots = blocks + 1 if net.hier else 1
        if z_dim % slots:
            raise ConfigError(
                "model.z_dim",
                f"biggan's hierarchical latent splits z into {slots} equal chunks at {res} px (one per block + the "
                f"input layer): use a multiple of {slots} (e.g. {20 * slots}), or model.g.hier=false",
            )
        self.chunk = z_dim // slots  # the input layer's share of z (and each block's, when hier)
        self.shared = nn.Embedding(num_classes, net.shared_dim) if num_classes else None
        cond_dim = (net.shared_dim if num_classes else 0) + (self.chunk if net.hier else 0)
        self.ch0 = channels[0]
        self.linear = nn.Linear(self.chunk, 4 * 4 * self.ch0)
        self.blocks = nn.ModuleList(
            GBlock(a, b, cond_dim, net.bn_eps, net.cross_replica) for a, b in zip(channels, channels[1:])
        )
        outputs = [8 * 2**i for i in range(blocks)]
        attend = _attention_after(
            outputs,
            channels[1:],
            net.attention if net.attention is not None else default_attention(res),
            "model.g.attention",
        )
        self.attention = nn.ModuleList(SelfAttention(c) if a else nn.Identity() for c, a in zip(channels[1:], attend))
        self.out_bn = BigganBatchNorm(channels[-1], 0, net.bn_eps, net.cross_replica)
        self.out_conv = conv(channels[-1], info.shape[0])
        orthogonal_init(self)
        if net.spectral_norm:
            spectral_norm_fp32(self, net.sn_eps, skip=[self.shared] if self.shared is not None else [])

    def embed(self, y: Tensor) -> Tensor:
        """The shared class embedding [N, shared_dim] of labels y (for class interpolation)."""
        return self.shared(y)

    def forward(self, z: Tensor, y: Optional[Tensor] = None, class_embedding: Optional[Tensor] = None) -> Tensor:
        if class_embedding is None and self.shared is not None:
            class_embedding = self.shared(check_labels(y, self.num_classes))  # [N, shared_dim]
        zs = z.split(self.chunk, dim=1) if self.hier else (z,)
        if self.hier:
            conds = [
                zi if class_embedding is None else torch.cat([class_embedding, zi.to(class_embedding.dtype)], 1)
                for zi in zs[1:]
            ]
        else:
            conds = [class_embedding] * len(self.blocks)
        h = self.linear(zs[0]).view(z.shape[0], self.ch0, 4, 4)
        for block, attention, c in zip(self.blocks, self.attention, conds):
            h = attention(block(h, c))
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))  # [N, C, res, res]


class BigganDiscriminator(nn.Module):
    """x [N, C, res, res] (+ y) -> logits [N] (or [N, 1 + K] with cond acgan)."""

    def __init__(self, net: BigganDConfig, z_dim: int, num_classes: int, info: DataInfo):
        super().__init__()
        res = image_resolution(info, "model.d.arch", "biggan", tuple(LADDERS))
        self.cond = resolve_cond(
            net, num_classes, "model.d.cond", "biggan", ("projection", "acgan"), default="projection"
        )
        self.num_classes = num_classes
        ladder = LADDERS[res]
        channels = [net.width * k for k in ladder.d]
        ins = [info.shape[0], *channels[:-1]]
        self.blocks = nn.ModuleList(
            DBlock(a, b, down, i == 0) for i, (a, b, down) in enumerate(zip(ins, channels, ladder.d_down))
        )
        outputs, r = [], res
        for down in ladder.d_down:
            r //= 2 if down else 1
            outputs.append(r)
        attend = _attention_after(
            outputs,
            channels,
            net.attention if net.attention is not None else default_attention(res),
            "model.d.attention",
        )
        self.attention = nn.ModuleList(SelfAttention(c) if a else nn.Identity() for c, a in zip(channels, attend))
        self.head = DiscriminatorHead(channels[-1], num_classes, self.cond)
        orthogonal_init(self)
        if net.spectral_norm:
            spectral_norm_fp32(self, net.sn_eps)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        y = check_labels(y, self.num_classes)
        h = x
        for block, attention in zip(self.blocks, self.attention):
            h = attention(block(h))
        return self.head(F.relu(h).sum(dim=(2, 3)), y)  # sum pooling, as BGP and SNGAN
