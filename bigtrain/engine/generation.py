"""Generation from a checkpoint, for `bigtrain sample` and `bigtrain eval`: the recipe stored
in the checkpoint's config rebuilds the players it samples from and says how they generate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from bigtrain.data import DataInfo
from bigtrain.engine import checkpoint
from bigtrain.engine.guard import first_nonfinite
from bigtrain.errors import BigtrainError, CheckpointError
from bigtrain.eval.provenance import label_sampling, training_record
from bigtrain.families.base import Recipe


@dataclass
class LoadedGeneration:
    recipe: Recipe
    nets: dict[str, nn.Module]  # the sampled players' modules, in eval mode
    num_classes: int  # classes `class_idx` may name (0: unconditional)
    info: DataInfo
    kimg: float
    path: str  # the checkpoint folder
    ema: bool  # True when every sampled player holds its EMA weights
    training: dict = field(default_factory=dict)  # provenance.training_record of the checkpoint

    def label_sampling(self, class_idx: Optional[int]) -> str:
        """How `generate` draws labels with this `class_idx` (the protocol's label_sampling)."""
        return label_sampling(self.num_classes, class_idx)

    def generate(self, indices, **options) -> tuple[Tensor, Optional[Tensor]]:
        """Samples for `indices` (see Recipe.generate for the options); CheckpointError when a
        sample is non-finite (nothing is written or scored from a diverged generator)."""
        x, y = self.recipe.generate(self.nets, indices, **options)
        return self._finite(x), y

    def _finite(self, x: Tensor) -> Tensor:
        """x itself; CheckpointError when a floating x holds a non-finite value."""
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise CheckpointError(f"{self.path}: {', '.join(self.nets)} produces non-finite output; refusing to use it")
        return x

    def standing_statistics(
        self,
        batches: int,
        batch_size: int,
        *,
        seed: int,
        truncation: Optional[float] = None,
        device: torch.device | str = "cpu",
    ) -> int:
        """Re-estimate the generator's batch-norm statistics from its own samples (the recipe's
        standing_statistics); returns the BN layers updated. BigtrainError where the family
        has no single G(z, y) or its G no batch norm."""
        try:
            return self.recipe.standing_statistics(
                self.nets, batches, batch_size, seed=seed, truncation=truncation, device=device
            )
        except ValueError as exc:
            raise BigtrainError(f"--standing-stats: {self.path}: {exc}") from None

    def interpolation(
        self,
        rows: int,
        steps: int,
        *,
        kind: str,
        seed: int,
        truncation: Optional[float] = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """An interpolation grid from the generator (the recipe's interpolation), checked finite."""
        try:
            x = self.recipe.interpolation(
                self.nets, rows, steps, kind=kind, seed=seed, truncation=truncation, device=device
            )
        except ValueError as exc:
            raise BigtrainError(f"--interp: {self.path}: {exc}") from None
        return self._finite(x)

    def style_mixing(
        self,
        rows: int,
        cols: int,
        *,
        seed: int,
        truncation: Optional[float] = None,
        device: torch.device | str = "cpu",
        **options,
    ) -> Tensor:
        """A style-mixing grid's images (the recipe's style_mixing), checked finite."""
        try:
            x = self.recipe.style_mixing(
                self.nets, rows, cols, seed=seed, truncation=truncation, device=device, **options
            )
        except ValueError as exc:
            raise BigtrainError(f"--mix: {self.path}: {exc}") from None
        return self._finite(x)

    def to(self, device: torch.device | str) -> "LoadedGeneration":
        for net in self.nets.values():
            net.to(device)
        return self


def load_generation(run_dir: Optional[str], folder: Optional[str] = None, use_ema: bool = True) -> LoadedGeneration:
    """The generating players of a checkpoint (EMA copies by default), in eval mode on CPU."""
    from bigtrain.families import build_recipe, config_from_dict

    path = checkpoint.resolve_folder(run_dir, folder)
    state = checkpoint.read_trainer_state(path)
    cfg = config_from_dict(state["config"])
    info = DataInfo.from_dict(state["data_info"])
    recipe = build_recipe(cfg, info)
    nets, from_ema = {}, []
    for spec in recipe.players():
        if spec.name not in recipe.sampled:
            continue
        net = spec.build()
        weights, ema = checkpoint.player_weights(path, state, spec.name, use_ema)
        bad = first_nonfinite(weights, f"{spec.name}{'_ema' if ema else ''}.")
        if bad is not None:
            raise CheckpointError(f"{path}: {bad} holds non-finite values; refusing to sample from it")
        try:
            net.load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: weights do not fit the stored config ({str(exc).splitlines()[0]})"
            ) from None
        nets[spec.name] = net.eval()
        from_ema.append(ema)
    num_classes = cfg.model.num_classes if recipe.conditional_sampling else 0
    training = training_record(
        state["config"],
        nimg=state["counters"]["nimg"],
        wall_clock_s=state.get("wall_clock_s"),
        processes=checkpoint.written_by(path, state),
        device=state.get("device"),
        code=state.get("code_version"),
    )
    nimg = state["counters"]["nimg"]
    return LoadedGeneration(recipe, nets, num_classes, info, nimg / 1000, str(path), all(from_ema), training)
