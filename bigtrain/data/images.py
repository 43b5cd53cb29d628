"""Images in and out: the sources make-shards reads (image folders, npz files, CIFAR batches),
and encoding/decoding between image bytes and uint8 arrays (shared with the shard reader)."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from bigtrain.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")

RESIZE_FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def channels_of(image: Image.Image) -> int:
    """1 for grey-level modes, 3 for everything else (RGB, RGBA, palette, CMYK, ...)."""
    return 1 if image.mode in GRAY_MODES else 3


def with_channels(image: Image.Image, channels: int) -> Image.Image:
    """`image` as 8-bit grey ("L") or RGB; alpha is dropped, as stylegan2-ada's dataset tool does."""
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def to_hwc(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, C] pixels of an "L" or "RGB" image (a writable copy, so torch can share it)."""
    array = np.array(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def from_hwc(array: np.ndarray) -> Image.Image:
    """An "L" or "RGB" image from uint8 [H, W, 1 | 3] pixels."""
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def decode_image(data: bytes, channels: int, formats: Optional[tuple[str, ...]] = None) -> np.ndarray:
    """Encoded image bytes -> read-only uint8 [H, W, channels]. Raises on undecodable data.

    `formats` (PIL names, e.g. ("PNG",)) spares PIL probing every format when the type is known.
    """
    with Image.open(io.BytesIO(data), formats=formats) as image:
        image = with_channels(image, channels)
        image.load()  # decode now: a truncated file fails here, not later in a worker's batch
        # frombuffer(tobytes()) copies once; np.array(image) would copy twice, slower for small images.
        return np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width, channels)


def encode_image(array: np.ndarray, image_format: str, quality: int) -> bytes:
    """uint8 [H, W, C] -> PNG (lossless, fixed compression level), JPEG or raw (`.npy`) bytes.

    The same pixels always give the same bytes, which keeps make-shards deterministic. JPEGs keep
    colour at full resolution (4:4:4): chroma subsampling blurs exactly the detail D learns from.
    """
    out = io.BytesIO()
    if image_format == "raw":
        # Format version pinned: numpy would otherwise pick it, and the bytes must not change.
        np.lib.format.write_array(out, np.ascontiguousarray(array, dtype=np.uint8), version=(1, 0), allow_pickle=False)
        return out.getvalue()
    image = from_hwc(array)
    if image_format == "png":
        image.save(out, format="PNG", compress_level=6)
    else:
        image.save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


# The header encode_image("raw") writes: magic, version 1.0, header length, then this dict padded
# with spaces. Matching it directly costs ~2 us; numpy's header parser (ast) costs ~50 us, about
# what decoding a 32x32 PNG costs.
_RAW_HEADER = re.compile(
    rb"\x93NUMPY\x01\x00(..)\{'descr': '\|u1', 'fortran_order': False, 'shape': \((\d+), (\d+), (\d+)\), \} *\n",
    re.DOTALL,
)


def decode_raw(data: bytes, channels: Optional[int] = None) -> np.ndarray:
    """`.npy` bytes of uint8 [H, W, C] pixels -> read-only uint8 [H, W, C], with no image codec.

    `channels` None accepts 1 or 3. Raises ValueError on anything else: a bad header, another
    dtype or shape, too few or too many pixel bytes. Never unpickles: an object array (a pickle
    inside a `.npy`) is refused by its dtype before any of its data is looked at.
    """
    match = _RAW_HEADER.match(data)
    if match is not None and int.from_bytes(match[1], "little") == match.end() - 10:
        shape, offset, order = tuple(int(v) for v in match.group(2, 3, 4)), match.end(), "C"
    else:  # any other valid .npy (format 2.0, Fortran order, other spacing): numpy's header parser
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
        if dtype != np.uint8:
            raise ValueError(f".npy holds {dtype} values, not uint8 pixels")
        offset, order = stream.tell(), "F" if fortran_order else "C"
    if len(shape) != 3 or 0 in shape or shape[2] not in ((channels,) if channels else (1, 3)):
        raise ValueError(f".npy has shape {shape}, not [H, W, {channels or '1 | 3'}]")
    expected = shape[0] * shape[1] * shape[2]
    if len(data) - offset != expected:
        raise ValueError(f".npy holds {len(data) - offset} pixel bytes, shape {shape} needs {expected}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape, order=order)


def images_nhwc(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 images N,H,W,C or N,C,H,W (1 or 3 channels) as N,H,W,C; ValueError otherwise."""
    if x.ndim == 4 and x.dtype == np.uint8:
        if x.shape[-1] in (1, 3):
            return x
        if x.shape[1] in (1, 3):
            return x.transpose(0, 2, 3, 1)
    raise ValueError(f"{name} must be uint8 images N,H,W,C or N,C,H,W with 1 or 3 channels, got {x.dtype} {x.shape}")


# ---------------------------------------------------------------------------------------------
# Sources: a sorted listing of samples, each loaded as (PIL image, label or None)
# ---------------------------------------------------------------------------------------------


class FolderReader:
    """An image folder: flat (unlabelled) or one sub-folder per class (labels = sorted names)."""

    def __init__(self, root: Path):
        self.path = root
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        top_files = _image_files(root, recursive=False)
        if class_dirs:
            if top_files:
                raise DataError(
                    f"{root}: holds both images ({top_files[0].name}, ...) and class folders; use one layout"
                )
            self.kind = "class_folder"
            self.class_names = [d.name for d in class_dirs]
            self.files, self.labels = [], []
            for label, folder in enumerate(class_dirs):
                files = _image_files(folder, recursive=True)
                if not files:
                    raise DataError(f"{folder}: class folder holds no images")
                self.files += files
                self.labels += [label] * len(files)
        else:
            self.kind = "folder"
            self.class_names = []
            self.files = top_files
            self.labels = None
        if not self.files:
            raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[Image.Image, Optional[int]]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image.load()
                return image.copy(), (self.labels[index] if self.labels is not None else None)
        except Exception as exc:  # PIL raises many types for bad files; all mean "cannot read"
            raise DataError(f"{path}: cannot read image ({exc})") from None

    def first_channels(self) -> int:
        return channels_of(self.load(0)[0])


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


class ArrayReader:
    """Images held in memory as uint8 [N, H, W, C] with optional int labels (npz, CIFAR)."""

    def __init__(self, path: Path, kind: str, x: np.ndarray, y: Optional[np.ndarray], class_names: list[str]):
        self.path, self.kind, self.x, self.y, self.class_names = path, kind, x, y, class_names

    def __len__(self) -> int:
        return len(self.x)

    def load(self, index: int) -> tuple[Image.Image, Optional[int]]:
        return from_hwc(self.x[index]), (int(self.y[index]) if self.y is not None else None)

    def first_channels(self) -> int:
        return int(self.x.shape[-1])


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise DataError(f"{name}: labels must be {n} non-negative integers, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def read_npz(path: Path) -> ArrayReader:
    """An `.npz` with `x` (uint8 N,H,W,C or N,C,H,W, 1 or 3 channels) and optional int `y`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive:
                raise DataError(f"{path}: no array named 'x' (found: {', '.join(archive.files) or 'none'})")
            x, y = archive["x"], (archive["y"] if "y" in archive else None)
    except DataError:
        raise
    except Exception as exc:  # zip, header and dtype errors all mean an unreadable file
        raise DataError(f"{path}: cannot read npz file ({exc})") from None
    try:
        x = images_nhwc(x, f"{path}: 'x'")
    except ValueError as exc:
        raise DataError(str(exc)) from None
    names: list[str] = []
    if y is not None:
        y = _labels(y, len(x), f"{path}: 'y'")
        names = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    return ArrayReader(path, "npz", x, y, names)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only, so a data file can never run code."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *((m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")),
        *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


CIFAR_SPLITS = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"},
}
_CIFAR_LABELS = {"cifar10": ("labels", "label_names"), "cifar100": ("fine_labels", "fine_label_names")}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR batch file ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a CIFAR batch file (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def cifar_kind(folder: Path) -> Optional[str]:
    """ "cifar10" / "cifar100" when `folder` holds the CIFAR "python version" batch files."""
    for kind, files in CIFAR_SPLITS.items():
        if any((folder / name).is_file() for name in files["train"] + files["test"]) and (
            kind == "cifar10" or (folder / files["meta"]).is_file()
        ):
            return kind
    return None


def read_cifar(folder: Path, kind: str, split: str) -> ArrayReader:
    """The `split` batches of a CIFAR-10/100 "python version" folder, in file order."""
    label_key, names_key = _CIFAR_LABELS[kind]
    xs, ys = [], []
    for name in CIFAR_SPLITS[kind][split]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: CIFAR batch file missing for split {split!r}")
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path}: CIFAR batch file lacks 'data' or '{label_key}'")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes
        ys.append(_labels(batch[label_key], len(data), f"{path}: '{label_key}'"))
    x, y = np.concatenate(xs), np.concatenate(ys)
    meta_path = folder / CIFAR_SPLITS[kind]["meta"]
    names = [str(i) for i in range(int(y.max()) + 1)]
    if meta_path.is_file():
        meta = _unpickle(meta_path).get(names_key)
        if meta is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta]
    return ArrayReader(folder, kind, x, y, names)


def open_source(src: str | Path, split: str = "train") -> FolderReader | ArrayReader:
    """The reader for SRC: an image folder, a CIFAR batch folder or an `.npz` file."""
    src = Path(src)
    if src.is_file() and src.suffix == ".npz":
        return read_npz(src)
    if src.is_dir():
        kind = cifar_kind(src)
        return read_cifar(src, kind, split) if kind else FolderReader(src)
    if src.exists():
        raise DataError(f"{src}: not an image folder, a CIFAR batch folder or an .npz file")
    raise DataError(f"{src}: no such file or folder")
