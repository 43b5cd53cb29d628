"""Image-to-image recipes: CycleGAN (Zhu et al. 2017, unpaired) and Pix2Pix (Isola et al. 2017,
paired), with the objectives of junyanz/pytorch-CycleGAN-and-pix2pix ("the reference"); the
nets are bigtrain/families/img2img/nets.py's (docs/design.md, "Image-to-image").

CycleGAN: G_AB maps domain A to B, G_BA back; D_A judges domain A (real A against G_BA(B)),
D_B domain B. G's loss is LSGAN's (D's patch map pushed to 1) for both directions, plus the
cycle-consistency L1 lambda_A |G_BA(G_AB(a)) - a| + lambda_B |G_AB(G_BA(b)) - b| and the
identity L1 lambda_idt (lambda_B |G_AB(b) - b| + lambda_A |G_BA(a) - a|). Each D's loss is
0.5 (MSE(D(real), 1) + MSE(D(fake), 0)), its fakes drawn through an image pool of 50 past fakes.

Pix2Pix: G maps A to B (`pix2pix.direction: BA` swaps the halves of the paired data); D sees
(input, output) joined along channels; vanilla GAN (BCE) + lambda_L1 |G(a) - b| with lambda 100.

Both generators of CycleGAN are ONE player `G` (a GeneratorPair: one engine, one optimizer, one
loss scaler): their loss is one sum that both must minimise and the reference steps them with
one Adam over both parameter lists. Two engines cannot share one backward (each DeepSpeed engine
runs its own backward over its own loss), and two fp16 scalers of one loss would disagree about
overflow. The discriminators' losses are separate, so they are two players, D_A and D_B.

Order per iteration, as the reference's CycleGAN: the G phase forwards both generators once per
accumulation round and steps G against the frozen discriminators; the D phase then scores the
same reals and the same fakes (kept from the G phase, detached), so no generator runs twice.

Pix2Pix (`pix2pix.order: d_first`, the reference's optimize_parameters): G(a) once, D steps on it,
then G steps with its adversarial loss from the updated D. A phase's gradient must come from a
forward in that phase (DDP decides at forward time whether a backward reduces), so the G phase runs
G again on the same inputs, replaying the D phase's random state (the same dropout masks); the D
phase's run, without gradient, puts the normalisation layers' running statistics back, so they
move once per iteration as the reference's. The two runs' fakes are equal bit for bit, at the cost
of one more G forward.
`g_first` is the order bigtrain had before (issue 27; G then D, one G forward): on one batch G's
adversarial loss is measured against the D of before D's step (0.864 where the reference's is 0.698).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config import Config, _check_choice, _check_positive
from bigtrain.data import DataInfo
from bigtrain.errors import ConfigError
from bigtrain.families.base import (
    Net,
    Phase,
    PlayerSpec,
    Recipe,
    ReduceMean,
    Round,
    Stats,
    has_batch_statistics,
    optim_for,
)
from bigtrain.families.img2img.replay import random_state, replayed, running_statistics_kept

GAN_MODES = ("lsgan", "vanilla")


@dataclass
class CycleganOptions:
    lambda_a: float = 10.0  # weight of the A -> B -> A cycle L1 (the reference's lambda_A)
    lambda_b: float = 10.0  # weight of the B -> A -> B cycle L1 (lambda_B)
    lambda_identity: float = 0.5  # identity L1 weight, relative to lambda_a / lambda_b; 0 = off
    pool_size: int = 50  # past fakes each D draws from, per process; 0 = no pool
    gan_mode: str = "lsgan"  # lsgan (MSE) | vanilla (BCE)
    eval_inputs: str = ""  # images (npz, folder, shards) of eval_direction's input domain, for eval and sample
    eval_direction: str = "AB"  # AB: eval and sample translate A -> B (G_AB); BA: B -> A (G_BA)

    def __post_init__(self) -> None:
        for key in ("lambda_a", "lambda_b", "lambda_identity"):
            _check_positive(f"cyclegan.{key}", getattr(self, key), allow_zero=True)
        _check_positive("cyclegan.pool_size", self.pool_size, allow_zero=True)
        _check_choice("cyclegan.gan_mode", self.gan_mode, GAN_MODES)
        _check_choice("cyclegan.eval_direction", self.eval_direction, ("AB", "BA"))


@dataclass
class Pix2pixOptions:
    lambda_l1: float = 100.0  # weight of |G(a) - b| (the reference's lambda_L1)
    direction: str = "AB"  # AB: A (left half of each pair) -> B; BA: the other way
    gan_mode: str = "vanilla"  # vanilla (BCE) | lsgan (MSE)
    pool_size: int = 0  # past fakes D draws from (the reference's pix2pix: 0)
    eval_inputs: str = ""  # paired A|B images (npz, folder or shards) whose input halves eval and sample translate
    order: str = "d_first"  # d_first: D steps, then G against the updated D (the reference's); g_first: G, then D

    def __post_init__(self) -> None:
        _check_choice("pix2pix.order", self.order, ("d_first", "g_first"))
        _check_positive("pix2pix.lambda_l1", self.lambda_l1, allow_zero=True)
        _check_choice("pix2pix.direction", self.direction, ("AB", "BA"))
        _check_choice("pix2pix.gan_mode", self.gan_mode, GAN_MODES)
        _check_positive("pix2pix.pool_size", self.pool_size, allow_zero=True)


def gan_loss(logits: Tensor, target_real: bool, mode: str) -> Tensor:
    """The reference's GANLoss: MSE to 1 / 0 (lsgan) or BCE with logits (vanilla), over every patch."""
    logits = logits.float()
    target = torch.full_like(logits, 1.0 if target_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


class ImagePool:
    """The reference's ImagePool: up to `size` past fakes. Until full, each fake is stored and
    returned; then each fake is, with probability 1/2, returned as is, else swapped for a random
    stored one (which is returned; the fake takes its place). Draws come from torch's CPU RNG of
    this process, which the checkpoint saves per rank; the stored images are the recipe's rank
    state, so a resumed run draws exactly what an uninterrupted one would."""

    def __init__(self, size: int):
        self.size = size
        self.images: list[Tensor] = []  # each [C, H, W], detached

    def query(self, fakes: Tensor) -> Tensor:
        if self.size == 0:
            return fakes
        out = []
        for image in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(()) > 0.5:  # CPU draw: no device sync
                i = int(torch.randint(self.size, ()))
                out.append(self.images[i].to(image.device, image.dtype))
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [t.cpu() for t in self.images]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("size", self.size) != self.size:
            raise ValueError(
                f"the checkpoint's image pool holds up to {state['size']} images, this config's {self.size}"
            )
        self.images = [t.clone() for t in state["images"]]


class GeneratorPair(nn.Module):
    """CycleGAN's two generators as one player. `forward(a, b)` runs every generator pass of one
    G step in one call (one DDP / DeepSpeed forward): the translations, the reconstructions and,
    with `identity`, G_AB(b) and G_BA(a)."""

    counted_parts = ("G_AB", "G_BA")  # `--dry-run` counts each generator too

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module):
        super().__init__()
        self.G_AB, self.G_BA = g_ab, g_ba

    def forward(self, a: Tensor, b: Tensor, identity: bool = True) -> dict[str, Tensor]:
        fake_b, fake_a = self.G_AB(a), self.G_BA(b)
        out = {"fake_b": fake_b, "fake_a": fake_a, "rec_a": self.G_BA(fake_b), "rec_b": self.G_AB(fake_a)}
        if identity:
            out["idt_b"], out["idt_a"] = self.G_AB(b), self.G_BA(a)
        return out


class _Img2imgRecipe(Recipe):
    """What both recipes share: image-only nets, the fakes kept from the G phase for the D
    phase, translation for grids, eval and `bigtrain translate`."""

    conditional_sampling = False
    input_stream: str = "A"  # the stream whose images eval and grids translate

    def __init__(self, cfg: Config, info: DataInfo):
        super().__init__(cfg, info)
        for side in ("g", "d"):
            arch = getattr(cfg.model, side).arch
            if arch != self.arch:
                raise ConfigError(
                    f"model.{side}.arch",
                    f"the {cfg.recipe} recipe trains the {self.arch} nets; set model.{side}.arch={self.arch} (got "
                    f"{arch})",
                )
        if cfg.model.num_classes:
            raise ConfigError(
                "model.num_classes", f"the {cfg.recipe} recipe translates images and takes no labels; set it to 0"
            )
        if cfg.train.d_steps != 1:
            raise ConfigError(
                "train.d_steps", f"the {cfg.recipe} recipe steps D once per G step on G's own fakes; set it to 1"
            )
        self.kept: deque = deque()  # per accumulation round of the G phase: what the D phase scores
        self._inputs: Optional[Tensor] = None

    def image_info(self) -> DataInfo:
        """What one domain's images look like (the nets' input and output)."""
        return self.info

    def optim_groups(self) -> tuple[str, ...]:
        return ("d",)

    def latents(self, n: int, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        return {}  # image-to-image: no z (Pix2Pix's noise is G's dropout)

    def _scores(self, D: nn.Module, parts: list[Tensor]) -> list[Tensor]:
        """D's patch maps of each part: one forward of their concatenation, or one each when D
        has batch statistics (docs/design.md, "No D statistic mixes real and fake")."""
        if self.separate:
            return [D(x) for x in parts]
        return list(D(torch.cat(parts)).split([len(x) for x in parts]))

    def _d_loss(self, D: Net, real: Tensor, fake: Tensor, mode: str) -> tuple[Tensor, Stats]:
        s_real, s_fake = self._scores(D.engine, [real, fake.to(real.dtype)])
        loss = 0.5 * (gan_loss(s_real, True, mode) + gan_loss(s_fake, False, mode))
        return loss, {
            f"loss/{D.name}": loss.detach(),
            f"{D.name}/real": s_real.detach().float().mean(),
            f"{D.name}/fake": s_fake.detach().float().mean(),
        }

    # ---- translation ---------------------------------------------------------------------
    def translate(
        self,
        nets: dict[str, nn.Module],
        x: Tensor,
        direction: str = "AB",
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
    ) -> Tensor:
        """float images [N, C, H, W] in [-1, 1] -> translated ones on CPU, G in eval mode."""
        G = self.generator(nets, direction)
        was_training = G.training
        G.eval()
        out = []
        try:
            with torch.no_grad():
                for lo in range(0, len(x), batch_size):
                    out.append(G(x[lo : lo + batch_size].to(device)).float().cpu())
        finally:
            G.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    def generator(self, nets: dict[str, nn.Module], direction: str) -> nn.Module:
        raise NotImplementedError

    def eval_inputs(self) -> Tensor:
        """The images eval and `bigtrain sample` translate: uint8 [N, C, H, W] (read once)."""
        if self._inputs is None:
            from bigtrain.data.inputs import read_images

            path = self.options.eval_inputs
            if not path:
                raise ConfigError(
                    f"{self.section}.eval_inputs",
                    "is empty: evaluation and `bigtrain sample` translate these images; point it at test images of the "
                    "input domain",
                )
            x, _ = read_images(
                path, self.info.shape[-1], channels=self.image_info().shape[0], paired=self.paired_inputs
            )
            self._inputs = self.input_half(x, self.direction) if self.paired_inputs else x
        return self._inputs

    def generation_inputs(self) -> dict:
        """The protocol's record of eval_inputs: direction, source, count and sha256 of the bytes."""
        import hashlib

        x = self.eval_inputs()
        return {
            "direction": self.direction,
            "source": self.options.eval_inputs,
            "num_images": len(x),
            "sha256": hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest(),
        }

    paired_inputs = False  # eval_inputs are side-by-side pairs, of which input_half is translated
    direction = "AB"  # what eval and `bigtrain sample` translate

    def input_half(self, x: Tensor, direction: str) -> Tensor:
        """What `direction` translates of side-by-side pairs [N, 2C, H, W]: A's half for AB, B's for BA."""
        c = x.shape[1] // 2
        return x[:, :c] if direction == "AB" else x[:, c:]

    def generate(self, nets, indices, *, seed, truncation=None, class_idx=None, device="cpu", batch_size=64):
        """Translations of eval input i mod N for each index i (seed, truncation: unused)."""
        if class_idx is not None:
            raise ConfigError("--class", f"the {self.cfg.recipe} recipe takes no classes")
        inputs = self.eval_inputs()
        idx = torch.tensor([int(i) for i in indices], dtype=torch.long) % len(inputs)
        x = inputs[idx].float().div(127.5).sub(1.0)
        return self.translate(nets, x, self.direction, device=device, batch_size=batch_size), None

    def grid_rows(self, nets: dict[str, nn.Module], inputs: dict[str, Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def grid_images(self, nets, rows, cols, *, seed, device, inputs):
        """Rows of input | output | reconstruction (CycleGAN, each direction) or input | output
        | target (Pix2Pix), on the first `cols` samples of the training streams."""
        from bigtrain import sampling

        with torch.no_grad():
            images = [
                sampling.to_uint8(r.float().cpu())
                for r in self.grid_rows(nets, {k: v[:cols] for k, v in inputs.items()})
            ]
        return torch.cat(images), len(images)

    # ---- state ---------------------------------------------------------------------------
    def rank_state_dict(self) -> dict:
        return {name: pool.state_dict() for name, pool in self.pools.items()}

    def load_rank_state_dict(self, state: dict) -> None:
        for name, pool in self.pools.items():
            if name in state:
                pool.load_state_dict(state[name])


class CycleganRecipe(_Img2imgRecipe):
    """CycleGAN: players G (G_AB and G_BA), D_A, D_B; streams A and B (unpaired)."""

    section = "cyclegan"
    Options = CycleganOptions
    arch = "cyclegan"
    streams = ("A", "B")
    grid_streams = ("A", "B")

    def __init__(self, cfg: Config, info: DataInfo):
        super().__init__(cfg, info)
        self.options: CycleganOptions = cfg.cyclegan
        self.direction = self.options.eval_direction
        self.pools = {"pool_A": ImagePool(self.options.pool_size), "pool_B": ImagePool(self.options.pool_size)}

    def check_streams(self, infos: dict[str, DataInfo]) -> None:
        a, b = infos["A"], infos["B"]
        if a.shape != b.shape:
            raise ConfigError(
                "data.streams.B",
                f"domain B's images are {tuple(b.shape)} (C, H, W) but domain A's {tuple(a.shape)}; both domains need "
                "the same channels and resolution (make-shards --channels)",
            )

    def players(self) -> list[PlayerSpec]:
        cfg = self.cfg

        def pair() -> nn.Module:
            return GeneratorPair(self.build_generator(self.info), self.build_generator(self.info))

        return [
            PlayerSpec("G", pair, optim_for(cfg, "G"), ema=cfg.ema.enabled),
            *(
                PlayerSpec(
                    name,
                    lambda name=name: self.build_discriminator(self.info, self.net_for(name, "d")),
                    optim_for(cfg, name, "d"),
                )
                for name in ("D_A", "D_B")
            ),
        ]

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        self.G, self.D_A, self.D_B = players["G"], players["D_A"], players["D_B"]
        self.separate = has_batch_statistics(self.D_A.net) or has_batch_statistics(self.D_B.net)
        self.phases = [
            Phase("G_main", ("G",), ("D_A", "D_B"), self.g_main, streams=("A", "B")),
            Phase("D_main", ("D_A", "D_B"), ("G",), self.d_main),
        ]

    def g_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        o = self.options
        real_a, real_b = b.data["A"]["x"], b.data["B"]["x"]
        out = self.G.engine(real_a, real_b, identity=o.lambda_identity > 0)
        mode = o.gan_mode
        (s_b,), (s_a,) = self._scores(self.D_B.net, [out["fake_b"]]), self._scores(self.D_A.net, [out["fake_a"]])
        terms = {
            "G_AB": gan_loss(s_b, True, mode),
            "G_BA": gan_loss(s_a, True, mode),
            "cycle_A": o.lambda_a * F.l1_loss(out["rec_a"].float(), real_a.float()),
            "cycle_B": o.lambda_b * F.l1_loss(out["rec_b"].float(), real_b.float()),
        }
        if o.lambda_identity > 0:
            terms["idt_A"] = o.lambda_a * o.lambda_identity * F.l1_loss(out["idt_a"].float(), real_a.float())
            terms["idt_B"] = o.lambda_b * o.lambda_identity * F.l1_loss(out["idt_b"].float(), real_b.float())
        loss = sum(terms.values())
        self.kept.append((real_a, real_b, out["fake_a"].detach(), out["fake_b"].detach()))
        return {"G": loss}, {
            "loss/G": loss.detach(),
            **{f"loss/G_{k}" if k.startswith(("cycle", "idt")) else f"loss/{k}": v.detach() for k, v in terms.items()},
        }

    def d_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        real_a, real_b, fake_a, fake_b = self.kept.popleft()
        mode = self.options.gan_mode
        loss_a, stats_a = self._d_loss(self.D_A, real_a, self.pools["pool_A"].query(fake_a), mode)
        loss_b, stats_b = self._d_loss(self.D_B, real_b, self.pools["pool_B"].query(fake_b), mode)
        return {"D_A": loss_a, "D_B": loss_b}, {**stats_a, **stats_b}

    def generator(self, nets: dict[str, nn.Module], direction: str) -> nn.Module:
        pair = nets["G"]
        return pair.G_AB if direction == "AB" else pair.G_BA

    def grid_rows(self, nets, inputs):
        pair = nets["G"]
        was_training = pair.training
        pair.eval()
        try:
            a, b = inputs["A"], inputs["B"]
            fake_b, fake_a = pair.G_AB(a), pair.G_BA(b)
            return [a, fake_b, pair.G_BA(fake_b), b, fake_a, pair.G_AB(fake_a)]
        finally:
            pair.train(was_training)


class Pix2pixRecipe(_Img2imgRecipe):
    """Pix2Pix: players G (the U-Net) and D (on input | output); one stream of paired images."""

    section = "pix2pix"
    Options = Pix2pixOptions
    arch = "pix2pix"
    streams = ("real",)
    grid_streams = ("real",)
    paired_inputs = True

    def __init__(self, cfg: Config, info: DataInfo):
        super().__init__(cfg, info)
        self.options: Pix2pixOptions = cfg.pix2pix
        self.direction = self.options.direction
        if not cfg.data.paired:
            raise ConfigError(
                "data.paired",
                "the pix2pix recipe trains on aligned pairs: set data.paired=true (side-by-side A|B images, "
                "make-shards --layout pix2pix)",
            )
        if info.shape[0] % 2:
            raise ConfigError(
                "data.paired", f"paired samples hold two images along channels, got {info.shape[0]} channels"
            )
        self.pools = {"pool": ImagePool(self.options.pool_size)}

    def image_info(self) -> DataInfo:
        c, h, w = self.info.shape
        return DataInfo(self.info.kind, (c // 2, h, w), 0)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Paired samples [N, 2C, H, W] -> (input, target) by pix2pix.direction."""
        c = x.shape[1] // 2
        a, b = x[:, :c], x[:, c:]
        return (a, b) if self.options.direction == "AB" else (b, a)

    def input_half(self, x: Tensor, direction: str) -> Tensor:
        self.generator({}, direction)  # ConfigError for a direction this G was not trained in
        return self.split(x)[0]

    def players(self) -> list[PlayerSpec]:
        cfg, info = self.cfg, self.image_info()
        return [
            PlayerSpec("G", lambda: self.build_generator(info), optim_for(cfg, "G"), ema=cfg.ema.enabled),
            PlayerSpec("D", lambda: self.build_discriminator(info), optim_for(cfg, "D")),
        ]

    def bind(self, players: dict[str, Net], reduce_mean: ReduceMean, micro_batch: int) -> None:
        self.G, self.D = players["G"], players["D"]
        self.separate = has_batch_statistics(self.D.net)
        if self.options.order == "g_first":
            self.phases = [
                Phase("G_main", ("G",), ("D",), self.g_main, streams=("real",)),
                Phase("D_main", ("D",), ("G",), self.d_main),
            ]
        else:
            self.phases = [
                Phase("D_main", ("D",), ("G",), self.d_first, streams=("real",)),
                Phase("G_main", ("G",), ("D",), self.g_main),
            ]

    def d_first(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        """D's step on G(a) before G's (order d_first): G's random state is kept for the G phase."""
        real_a, real_b = self.split(b.data["real"]["x"])
        state = random_state(real_a.device)
        with torch.no_grad(), running_statistics_kept(self.G.net):  # they move in the G phase's run
            fake_b = self.G.net(real_a)
        self.kept.append((real_a, real_b, state))
        return self.d_main(b, (real_a, real_b, fake_b))

    def g_main(self, b: Round) -> tuple[dict[str, Tensor], Stats]:
        o = self.options
        if o.order == "g_first":
            real_a, real_b = self.split(b.data["real"]["x"])
            fake_b = self.G.engine(real_a)
        else:
            real_a, real_b, state = self.kept.popleft()
            with replayed(state, real_a.device):
                fake_b = self.G.engine(real_a)  # [N, C, H, W], equal to the D phase's
        (scores,) = self._scores(self.D.net, [torch.cat([real_a, fake_b.to(real_a.dtype)], 1)])
        adv = gan_loss(scores, True, o.gan_mode)
        l1 = F.l1_loss(fake_b.float(), real_b.float())
        loss = adv + o.lambda_l1 * l1
        if o.order == "g_first":
            self.kept.append((real_a, real_b, fake_b.detach()))
        return {"G": loss}, {"loss/G": loss.detach(), "loss/G_gan": adv.detach(), "loss/G_L1": l1.detach()}

    def d_main(self, b: Round, made: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> tuple[dict[str, Tensor], Stats]:
        real_a, real_b, fake_b = made if made is not None else self.kept.popleft()
        fake_ab = self.pools["pool"].query(torch.cat([real_a, fake_b.to(real_a.dtype)], 1))
        loss, stats = self._d_loss(self.D, torch.cat([real_a, real_b], 1), fake_ab, self.options.gan_mode)
        return {"D": loss}, stats

    def generator(self, nets: dict[str, nn.Module], direction: str) -> nn.Module:
        if direction != self.options.direction:
            raise ConfigError(
                "--direction",
                f"this pix2pix G was trained {self.options.direction[0]} -> {self.options.direction[1]} "
                f"(pix2pix.direction); it has no {direction[0]} -> {direction[1]} generator",
            )
        return nets.get("G")

    def grid_rows(self, nets, inputs):
        G = nets["G"]
        was_training = G.training
        G.eval()
        try:
            a, b = self.split(inputs["real"])
            return [a, G(a), b]
        finally:
            G.train(was_training)
