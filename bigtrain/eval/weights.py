"""Finding, downloading and reading the FID Inception weights file.

The standard file is torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (the TF graph's
weights as a PyTorch state dict); torchmetrics downloads the same file into the torch hub cache.
Where it is looked for, in order:
1. an explicit path (config `eval.inception_weights` or the `--weights` option);
2. the environment variable BIGTRAIN_INCEPTION_WEIGHTS;
3. the torch hub cache: `$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`
   (torch.hub.get_dir() decides the folder), where torchmetrics and torch-fidelity keep it;
4. a download from torch-fidelity's release into that cache, when the machine is online.
A path given explicitly (1 or 2) must exist: it is never silently replaced by another file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from bigtrain.errors import BigtrainError

FILENAME = "weights-inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FILENAME}"
HASH_PREFIX = "6726825d"  # torch.hub convention: the file name carries its sha256's first 8 hex digits
ENV_VAR = "BIGTRAIN_INCEPTION_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 30.0


class WeightsError(BigtrainError):
    """The Inception weights file is missing, unreadable or not the expected network's."""


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    sha256: str
    source: str  # argument | environment | hub cache | download

    @property
    def is_standard(self) -> bool:
        """True for the standard FID weights, the only ones whose numbers match published FIDs."""
        return self.sha256.startswith(HASH_PREFIX)


def hub_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / FILENAME


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _where_to_put_it() -> str:
    return (
        f"put {FILENAME} (from {URL}) at {hub_cache_path()}, or point {ENV_VAR} or "
        f"eval.inception_weights / --weights at it; the README explains offline clusters"
    )


def resolve_weights(path: str | Path | None = None, *, download: bool = True) -> WeightsFile:
    """The weights file to use, by the order in the module docstring; raises WeightsError."""
    for given, source in ((path, "argument"), (os.environ.get(ENV_VAR) or None, "environment")):
        if given:
            given = Path(given).expanduser()
            if not given.is_file():
                where = "" if source == "argument" else f" (from {ENV_VAR})"
                raise WeightsError(f"Inception weights file not found: {given}{where}")
            return WeightsFile(given, file_sha256(given), source)
    cached = hub_cache_path()
    if cached.is_file():
        return WeightsFile(cached, file_sha256(cached), "hub cache")
    if not download:
        raise WeightsError(f"Inception weights not found and downloading is off: {_where_to_put_it()}")
    return WeightsFile(cached, _download(URL, cached), "download")


def _download(url: str, dest: Path) -> str:
    """Fetch `url` into `dest` atomically and return its sha256; checks the name's hash prefix."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        sha = file_sha256(tmp)
        if not sha.startswith(HASH_PREFIX):
            raise WeightsError(f"downloaded {url} but its sha256 {sha[:16]}... does not start with {HASH_PREFIX}")
        os.replace(tmp, dest)  # concurrent downloads (several ranks) each replace it whole
        return sha
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        raise WeightsError(
            f"Inception weights not found and the download failed ({exc}): {_where_to_put_it()}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, loaded without running code; raises WeightsError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors, or objects that weights_only refuses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state
