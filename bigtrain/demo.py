"""`bigtrain demo`: a class-conditional DCGAN on the digits data set that ships with scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigtrain.errors import BigtrainError

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def write_digits_npz(path: Path) -> Path:
    """scikit-learn's 1,797 8x8 digits (values 0..16) as uint8 images [N, 8, 8, 1] and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise BigtrainError("the demo needs scikit-learn: pip install 'bigtrain[demo]'") from None
    digits = load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, x=x, y=digits.target.astype(np.int64))
    tmp.replace(path)
    return path


def run_demo(out_dir: str, overrides: list[str]) -> int:
    """Write the data, then train with the bundled config (upsampled to 32x32 on load), through
    the CLI's own parser: the demo is `bigtrain train demo.yaml ...`, so it cannot drift from it."""
    from bigtrain.cli import build_parser, parse_arguments

    data = Path(out_dir) / "demo-data" / "digits.npz"
    if not data.is_file():
        write_digits_npz(data)
    parser = build_parser()
    args = parse_arguments(
        parser, ["train", str(DEMO_CONFIG), f"run.out_dir={out_dir}", f"data.path={data}", *overrides]
    )
    return args.func(args)
