"""Prepare, on this machine, the wheels the GPU machine lacks, for its platform, into .whl/ (git-ignored;
the device tool carries it by name: `carry: [".whl"]`). bench/gpu/accept.py installs them there.

    python bench/gpu/prepare_wheels.py [--dest .whl] [NAME==VERSION ...]

The GPU machine (the device tool's README and KINDS.md) runs Python 3.12 on x86-64 Linux with torch 2.11
+ CUDA, accelerate, torchmetrics, tensorboard, scikit-learn and more, but not deepspeed, webdataset or
omegaconf, nor what those need beyond its own packages (CARRIED). Each is fetched at the version
installed here (the versions bigtrain's tests pass with), or as given on the command line: a binary
wheel for cp312 manylinux x86-64 if the registry has one, else built here from its source without
dependencies (it must come out pure Python: py3-none-any). Every requirement of a carried wheel, and of
bigtrain itself, must then be carried or already on that machine (ON_DEVICE), or this script exits 1
naming it. Prints one JSON object: the wheels, their sizes, the total. Old wheels in --dest are removed
first: two versions of one package would stop the whole install there.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# what the GPU machine lacks: bigtrain's own needs, then theirs that it lacks too; typing-extensions is
# there, but pydantic 2.14 asks for >= 4.16, newer than that image may hold (the requirement check
# below compares names only, not versions)
CARRIED = (
    "deepspeed", "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
    "webdataset", "braceexpand", "omegaconf",
)  # fmt: skip
# what its image holds, of what the carried wheels and bigtrain ask for (KINDS.md's package list)
ON_DEVICE = (
    "torch", "accelerate", "torchmetrics", "tensorboard", "numpy", "scipy", "pillow", "pyyaml", "tqdm",
    "scikit-learn", "einops", "msgpack", "ninja", "packaging", "psutil", "py-cpuinfo", "typing-extensions",
    "nvidia-ml-py", "setuptools", "wheel",
)  # fmt: skip
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
            "manylinux1_x86_64"):  # fmt: skip
    PLATFORM += ["--platform", tag]
MAX_CARRY_MB = 64  # the device tool's limit for the working tree and the carried folders together


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(lines: list[str]) -> set[str]:
    """The names of `Requires-Dist` / install_requires lines that hold without extras."""
    names = set()
    for line in lines:
        if "extra ==" in line or not line.strip():
            continue
        names.add(canonical(re.match(r"\s*([A-Za-z0-9_.-]+)", line).group(1)))
    return names


def wheel_requirements(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return requirements([line.split(":", 1)[1] for line in text.splitlines() if line.startswith("Requires-Dist:")])


def bigtrain_requirements() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return requirements(cfg["options"]["install_requires"].splitlines())


def unmet(wheels: list[Path]) -> dict[str, list[str]]:
    """Requirement -> who asks for it, for every requirement neither carried nor on the GPU machine."""
    have = {canonical(n) for n in CARRIED + ON_DEVICE}
    asks = {"bigtrain": bigtrain_requirements(), **{w.name: wheel_requirements(w) for w in wheels}}
    missing: dict[str, list[str]] = {}
    for who, names in asks.items():
        for name in sorted(names - have):
            missing.setdefault(name, []).append(who)
    return missing


def fetch(spec: str, dest: Path) -> Path:
    """The wheel of `spec` in `dest`: the registry's for the GPU machine's platform, else built here."""
    name = canonical(spec.split("==")[0])
    before = set(dest.glob("*.whl"))
    pip = [sys.executable, "-m", "pip"]
    got = subprocess.run([*pip, "download", "-q", "--no-deps", *PLATFORM, "-d", str(dest), spec])
    if got.returncode != 0:  # no binary wheel (deepspeed publishes its source only): a pure-Python build here
        print(f"{spec}: no wheel for cp312 manylinux x86-64 on the registry; building one from its source", flush=True)
        got = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), spec])
        if got.returncode != 0:
            raise SystemExit(f"{spec}: pip could neither download nor build a wheel (exit {got.returncode})")
    new = [w for w in set(dest.glob("*.whl")) - before if canonical(w.name.split("-")[0]) == name]
    if len(new) != 1:
        raise SystemExit(f"{spec}: expected one new wheel in {dest}, found {[w.name for w in new]}")
    tags = new[0].name[:-4].split("-")[-3:]
    if tags[2] != "any" and not any(t.startswith("manylinux") for t in tags[2].split(".")):
        raise SystemExit(f"{new[0].name}: built for this machine ({tags[2]}), not for the GPU machine")
    return new[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=str(REPO / ".whl"), help="the wheels' folder (default: .whl/, ignored)")
    parser.add_argument("specs", nargs="*", help="NAME==VERSION instead of this environment's version")
    args = parser.parse_args()
    given = {canonical(s.split("==")[0]): s for s in args.specs}
    for spec in args.specs:
        if "==" not in spec or canonical(spec.split("==")[0]) not in map(canonical, CARRIED):
            parser.error(f"{spec}: give NAME==VERSION for one of {', '.join(CARRIED)}")
    specs = []
    for name in CARRIED:
        if canonical(name) in given:
            specs.append(given[canonical(name)])
            continue
        try:
            specs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parser.error(f"{name} is not installed here: give its version (NAME==VERSION)")
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # this folder is this script's: one version of each package
        old.unlink()
    wheels = [fetch(spec, dest) for spec in specs]
    missing = unmet(wheels)
    sizes = {w.name: round(w.stat().st_size / 2**20, 2) for w in wheels}
    report = {"dest": str(dest), "wheels": sizes, "total_mb": round(sum(sizes.values()), 2),
              "carry": f'carry: ["{dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}"]',
              "unmet_requirements": missing}  # fmt: skip
    print(json.dumps(report, indent=1))
    if missing:
        raise SystemExit(f"requirements neither carried nor on the GPU machine: {missing}")
    if report["total_mb"] > MAX_CARRY_MB / 2:
        raise SystemExit(f"{report['total_mb']} MB of wheels: the device tool carries {MAX_CARRY_MB} MiB in all")


if __name__ == "__main__":
    main()
