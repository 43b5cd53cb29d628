"""BEGAN (Berthelot et al. 2017): D is an autoencoder scoring samples by reconstruction error.

L_D = L(x) - k_t L(G(z_D)), L_G = L(G(z_G)), and after each iteration
k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1). The errors are averaged over
ranks before the update, so k_t (the recipe's global state) stays identical everywhere.
Chosen by `recipe: began`, or by `loss.type: began` under the default recipe. Its options are
the `began` section (gamma, lambda_k, k0); the old `loss.began_*` spellings are read for one
more release (`renamed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bigtrain.config import Config
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import Round, Stats
from bigtrain.families.gan.recipe import GRADIENT_PENALTIES, GanRecipe
from bigtrain.losses import gan


@dataclass
class BeganOptions:
    gamma: float = 0.5  # diversity ratio gamma = E[L(G(z))] / E[L(x)]
    lambda_k: float = 0.001  # proportional gain of k_t
    k0: float = 0.0  # initial k_t

    def __post_init__(self) -> None:
        if self.lambda_k < 0:
            raise ConfigError("began.lambda_k", f"must be >= 0, got {self.lambda_k!r}")
        if not 0.0 <= self.k0 <= 1.0:
            raise ConfigError("began.k0", f"must be in [0, 1], got {self.k0}")


class BeganRecipe(GanRecipe):
    """The two-player recipe with BEGAN's D loss, G loss and k_t control."""

    section = "began"
    Options = BeganOptions
    renamed = {f"loss.began_{key}": (f"began.{key}", getattr(BeganOptions, key)) for key in ("gamma", "lambda_k", "k0")}

    def _check(self, cfg: Config, info: DataInfo, policy: str) -> None:
        if cfg.model.d.arch != "began":
            raise ConfigError("model.d.arch", "BEGAN needs the autoencoder discriminator: set model.d.arch=began")
        for key in (*GRADIENT_PENALTIES, "clip_d_weights"):
            if getattr(cfg.loss, key) > 0:
                # BEGAN's D outputs reconstruction errors, not logits: these regularizers are
                # defined on a critic's scores, and the paper uses none of them
                raise ConfigError(
                    f"loss.{key}", "is not supported by BEGAN (its D scores reconstruction errors); set it to 0"
                )
        self.opts: BeganOptions = cfg.began
        self.k = self.opts.k0
        self._real_err: list[Tensor] = []
        self._fake_err: list[Tensor] = []

    def d_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (1) update D: reconstruct real data well and G(z) badly, in the proportion k_t
        real = b.data["real"]["x"]
        with torch.no_grad():
            fake = self.G.net(b.latents["z"], None).to(real.dtype)
        real_err, fake_err = (
            e.float() for e in self._score(self.D.engine, [self.augment(real), self.augment(fake)], [None, None])
        )
        loss = gan.began_d_loss(real_err, fake_err, self.k)
        self._real_err.append(real_err.detach().mean())
        return {"D": loss}, {
            "loss/D": loss.detach(),
            "D/real": real_err.detach().mean(),
            "D/fake": fake_err.detach().mean(),
        }

    def g_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        # (2) update G: make the frozen D reconstruct G(z) well
        (fake_err,) = self._score(self.D.net, [self.augment(self.G.engine(b.latents["z"], None))], [None])
        loss = fake_err.float().mean()
        self._fake_err.append(loss.detach())
        return {"G": loss}, {"loss/G": loss.detach()}

    def end_iteration(self) -> Stats:
        means = self.reduce_mean(torch.stack([torch.stack(self._real_err).mean(), torch.stack(self._fake_err).mean()]))
        real_err, fake_err = means.tolist()  # host sync: BEGAN's control needs the values on the host
        self._real_err.clear()
        self._fake_err.clear()
        gamma = self.opts.gamma
        self.k = gan.began_k_update(self.k, real_err, fake_err, gamma, self.opts.lambda_k)
        return {
            "began/k": torch.tensor(self.k),
            "began/M_global": torch.tensor(gan.began_convergence(real_err, fake_err, gamma)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = float(state["k"])
