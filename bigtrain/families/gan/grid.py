"""G and D of PacGAN's 2D-grid experiment (Lin et al. 2018), as its reference code builds them.

Reference: github.com/fjxmlzn/PacGAN, `synthetic_data_experiments/2DGrid_GAN&PacGAN/`
`pacgan_task.py` (`PacGANTask.create_model_brick`) and `config.py`, written with Blocks/Theano.

Architecture
  G: z (2-d) -> 4 x [Linear 400 without bias, BatchNorm, ReLU] -> Linear 2 with bias, no output
     activation. BatchNorm learns scale (init 1) and shift (init 0), eps 1e-4; the population
     statistics move as p <- 0.95 p + 0.05 batch.
  D: x (2 * m for packing m) -> 3 x LinearMaxout(200 units, 5 pieces) -> Linear 1 -> logit.
     No batch norm and no dropout (`_create_model(with_dropout=False)`).
  Init: every Linear weight N(0, 0.02^2) (`IsotropicGaussian(0.02)`), every bias 0.

Training (config.py, pacgan/bricks.py, pacgan/streams.py, ali/algorithms.py)
  Adam lr 1e-4, beta1 0.8, beta2 0.999 and eps 1e-8 (Blocks defaults), the same rule for G and D.
  Batch 100 (packed) samples; 400 epochs over a fixed training set of 100,000 samples, i.e.
  1,000 steps per epoch and 400,000 steps. One step updates D and G together, from gradients at
  the same parameters (`ali_algorithm`), not alternately.
  Losses: D softplus(-D(x)) + softplus(D(G(z))); G softplus(-D(G(z))) (non-saturating).
  z ~ N(0, I_2). With packing m, G runs m times on m independent z batches (so batch norm sees
  batches of 100) and D gets the m outputs concatenated along features; each real slot is an
  independent with-replacement resample of the training set. Evaluation: after each epoch,
  2500 samples from one fixed z, batch norm on population statistics (see bigtrain/eval/modes.py).
  Results are over 10 runs per m.

Not reproduced here: Blocks keeps a moving average of the batch *standard deviation*
sqrt(biased var + eps), averaged over the m applications of G, and its monitoring also updates
it on 5,000 training samples per epoch; torch's BatchNorm1d averages the unbiased variance.
Blocks' Adam adds eps to sqrt(v) before the bias correction (torch adds it after). Theano's RNG
streams cannot be matched. These nets are unconditional: y must be None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.netconfig import NetConfig, _Depth, _Norm, _Pack


@dataclass
class GridGConfig(_Norm, _Depth, NetConfig):
    arch: str = "grid"  # this class's architecture


@dataclass
class GridDConfig(_Pack, _Depth, NetConfig):
    arch: str = "grid"  # this class's architecture


INIT_STD = 0.02  # weights_init_std of the reference config
BN_EPS = 1e-4  # Blocks' BatchNormalization default
BN_MOMENTUM = 0.05  # the reference's population-statistics update weight


class LinearMaxout(nn.Module):
    """Linear to out_features * pieces, then the max over each unit's `pieces` consecutive outputs.

    Grouping as Blocks' `Maxout.apply`: unit j is the max of pre-activations j*pieces .. (j+1)*pieces-1.
    """

    def __init__(self, in_features: int, out_features: int, pieces: int):
        super().__init__()
        self.out_features, self.pieces = out_features, pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.linear(x)  # [N, out * pieces]
        return pre.view(*pre.shape[:-1], self.out_features, self.pieces).amax(dim=-1)


def _init_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _unconditional(y: Optional[Tensor], name: str) -> None:
    if y is not None:
        raise ValueError(f"{name} is unconditional: y must be None")


class GridGenerator(nn.Module):
    """z [N, z_dim] -> samples [N, out_features] (linear output)."""

    def __init__(self, z_dim: int, out_features: int = 2, width: int = 400, depth: int = 4, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            # The reference drops the hidden biases because BatchNorm's shift replaces them;
            # without batch norm the layers keep theirs.
            layers.append(nn.Linear(z_dim if i == 0 else width, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width, eps=BN_EPS, momentum=BN_MOMENTUM))
            layers.append(nn.ReLU())
        layers.append(nn.Linear(width if depth else z_dim, out_features))
        self.net = nn.Sequential(*layers)
        _init_linears(self)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        _unconditional(y, "GridGenerator")
        return self.net(z)


class GridDiscriminator(nn.Module):
    """x [N, in_features] (m packed 2-d samples: in_features = 2m) -> logits [N]."""

    def __init__(self, in_features: int = 2, width: int = 200, depth: int = 3, maxout_pieces: int = 5):
        super().__init__()
        layers: list[nn.Module] = [
            LinearMaxout(in_features if i == 0 else width, width, maxout_pieces) for i in range(depth)
        ]
        layers.append(nn.Linear(width if depth else in_features, 1))
        self.net = nn.Sequential(*layers)
        _init_linears(self)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        _unconditional(y, "GridDiscriminator")
        # flatten(1) also takes packs as [N, m, 2]; the features then come out sample by sample.
        return self.net(x.flatten(1)).squeeze(-1)


def _vector_data(info: DataInfo, key: str, num_classes: int) -> None:
    if info.kind != "vector" or num_classes:
        raise ConfigError(
            key,
            "grid is PacGAN's net for unconditional vector data (e.g. `bigtrain make-toy grid25`); use mlp, dcgan, ...",
        )


def grid_generator(net: GridGConfig, z_dim: int, num_classes: int, info: DataInfo) -> nn.Module:
    """PacGAN's 2-D grid G (BN-ReLU perceptron); width and depth from model.g, BN if norm: batch."""
    _vector_data(info, "model.g.arch", num_classes)
    return GridGenerator(z_dim, info.shape[0], net.width, net.depth, batch_norm=net.norm == "batch")


def grid_discriminator(net: GridDConfig, z_dim: int, num_classes: int, info: DataInfo) -> nn.Module:
    """PacGAN's 2-D grid D (maxout perceptron); width and depth from model.d."""
    _vector_data(info, "model.d.arch", num_classes)
    return GridDiscriminator(info.shape[0], net.width, net.depth)
