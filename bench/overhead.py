"""Loop overhead: bigtrain's training loop against a plain hand-written PyTorch loop.

Both train the same class-conditional DCGAN (same modules, same data in memory, same batch,
non-saturating loss, Adam, EMA of G) on one process; runs alternate so that drifts of the
machine hit both alike. bigtrain's throughput is what its own tracker reports
(`perf/img_per_s` in metrics.jsonl, first interval dropped as warm-up); the plain loop is timed
over the same number of images after the same warm-up. Prints one JSON object.

    python bench/overhead.py [--kimg 4] [--repeats 3] [--width 32] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bigtrain.data import DataInfo
from bigtrain.engine.loop import Trainer
from bigtrain.engine.players import EMA
from bigtrain.families import build_discriminator, build_generator, load_config


def make_data(path: Path, n: int = 2048, res: int = 32, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path, x=rng.integers(0, 256, size=(n, res, res, 1), dtype=np.uint8), y=(np.arange(n) % classes).astype(np.int64)
    )
    return path


def overrides(args, data: Path, out_dir: Path, name: str) -> list[str]:
    return [
        f"run.name={name}",
        f"run.out_dir={out_dir}",
        f"data.path={data}",
        "data.resolution=32",
        "model.num_classes=10",
        "model.z_dim=64",
        f"model.g.width={args.width}",
        f"model.d.width={args.width}",
        f"train.batch_size={args.batch}",
        f"train.total_kimg={args.kimg}",
        "log.progress_bar=false",
        f"log.every_kimg={args.kimg / 8}",
        f"log.samples_every_kimg={args.kimg * 10}",
        f"checkpoint.every_kimg={args.kimg * 10}",
        "ema.half_life_kimg=2",
    ]


def bigtrain_run(args, data: Path, out_dir: Path, name: str) -> float:
    cfg = load_config(None, overrides(args, data, out_dir, name))
    trainer = Trainer(cfg)
    trainer.train()
    rows = [json.loads(l) for l in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["perf/img_per_s"] for r in rows if "perf/img_per_s" in r][1:]  # drop warm-up interval
    return statistics.median(rates)


def plain_run(args, data: Path) -> float:
    cfg = load_config(None, overrides(args, data, Path("unused"), "plain"))
    arrays = np.load(data)
    x_all = torch.from_numpy(arrays["x"].transpose(0, 3, 1, 2).copy())
    y_all = torch.from_numpy(arrays["y"])
    info = DataInfo("image", (1, 32, 32), 10)
    torch.manual_seed(0)
    G, D = build_generator(cfg.model, info), build_discriminator(cfg.model, info)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ema = EMA(G, cfg.ema)
    gen = torch.Generator().manual_seed(0)
    batch, z_dim = args.batch, cfg.model.z_dim
    iters = int(args.kimg * 1000 / batch)
    warmup = iters // 8
    nimg, start = 0, None
    for it in range(iters):
        if it == warmup:
            start, nimg = time.perf_counter(), 0
        idx = torch.randint(len(x_all), (batch,), generator=gen)
        real = x_all[idx].float().div_(127.5).sub_(1.0)
        y_real = y_all[idx]
        z = torch.randn(batch, z_dim, generator=gen)
        y_fake = torch.randint(10, (batch,), generator=gen)
        # D step on cat([real, fake]), G frozen
        with torch.no_grad():
            fake = G(z, y_fake)
        logits = D(torch.cat([real, fake]), torch.cat([y_real, y_fake]))
        d_loss = F.softplus(-logits[:batch]).mean() + F.softplus(logits[batch:]).mean()
        d_loss.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        # G step with D frozen
        z = torch.randn(batch, z_dim, generator=gen)
        y_fake = torch.randint(10, (batch,), generator=gen)
        D.requires_grad_(False)
        g_loss = F.softplus(-D(G(z, y_fake), y_fake)).mean()
        g_loss.backward()
        D.requires_grad_(True)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        nimg += batch
        ema.update(G, nimg, batch)
        if it % 16 == 0:
            d_loss.item()  # a plain loop looks at its losses now and then too
    return nimg / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kimg", type=float, default=4.0, help="images per run (thousands)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop")
    parser.add_argument("--width", type=int, default=32, help="DCGAN width")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data.npz")
        ours, plain = [], []
        for r in range(args.repeats):
            ours.append(bigtrain_run(args, data, Path(tmp) / "runs", f"r{r}"))
            plain.append(plain_run(args, data))
    result = {
        "benchmark": "overhead",
        "model": f"conditional DCGAN 32x32 width {args.width}, batch {args.batch}, fp32, 1 process CPU",
        "threads": torch.get_num_threads(),
        "bigtrain_img_per_s": round(statistics.median(ours), 1),
        "plain_img_per_s": round(statistics.median(plain), 1),
        "ratio": round(statistics.median(ours) / statistics.median(plain), 3),
        "bigtrain_runs": [round(v, 1) for v in ours],
        "plain_runs": [round(v, 1) for v in plain],
        "target_ratio": 0.95,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
