"""Reading one shard: its tar members grouped into raw samples (webdataset's key rule), every
fault counted and named. The tar reading is our own (`tar_members`, ~40 lines) rather than
`wds.tarfile_to_samples`: skipped samples must be counted exactly (a truncated shard loses every
sample after the cut, which dataset.json's per-shard counts tell us), errors must name the
shard, and `tarfile`'s stream mode costs more per member than decoding a 32x32 PNG."""

from __future__ import annotations

import gzip
import re
import tarfile
from typing import BinaryIO, Iterator, Optional

import webdataset as wds

from bigtrain.errors import DataError

# The skipped fraction is measured over at least this many samples, so that a few bad samples at
# the very start of a stream do not stop a run that would stay far below the limit.
MIN_SAMPLES_FOR_FRACTION = 1000
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's rule


class SkipCounter:
    """Counts samples read and skipped by one stream; stops it when too many are bad."""

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction
        self.seen = 0
        self.skipped = 0
        self.unreported = 0  # skips not yet passed on with a batch

    def ok(self) -> None:
        """One sample read from a shard (it may still fail to decode: see `bad`)."""
        self.seen += 1

    def lost(self, shard: str, count: int, reason: str) -> None:
        """`count` samples that could not be read at all (a truncated shard)."""
        self.seen += count
        self._skip(shard, count, reason)

    def bad(self, shard: str, reason: str) -> None:
        """A sample that was read but cannot be used (undecodable image, bad label text)."""
        self._skip(shard, 1, reason)

    def _skip(self, shard: str, count: int, reason: str) -> None:
        self.skipped += count
        self.unreported += count
        if self.skipped > self.max_fraction * max(self.seen, MIN_SAMPLES_FOR_FRACTION):
            raise DataError(
                f"{shard}: {reason}; {self.skipped} of {self.seen} samples read by this stream were skipped, "
                f"more than data.max_skipped_fraction={self.max_fraction}"
            )

    def take_unreported(self) -> int:
        count, self.unreported = self.unreported, 0
        return count


def _split_name(name: str) -> tuple[Optional[str], str]:
    """'dir/00001234.png' -> ('dir/00001234', 'png'): the key ends at the basename's first dot."""
    match = _KEY_AND_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


class TarFormatError(ValueError):
    """A tar header that is cut off or corrupt."""


def _tar_number(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    digits = field.strip(b" \0")
    return int(digits, 8) if digits else 0


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TarFormatError(f"unexpected end of data ({len(data)} of {size} bytes)")
    return data


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files in a tar stream (ustar, GNU long names, pax paths).

    Python's `tarfile` in stream mode spends more time parsing headers than PIL spends decoding
    a small PNG; this reads only what a shard needs. Raises TarFormatError on a cut or a bad header.
    """
    long_name = None
    while True:
        header = stream.read(tarfile.BLOCKSIZE)
        if not header:
            return  # end of file without end-of-archive blocks: tolerated, as tarfile does
        if len(header) < tarfile.BLOCKSIZE:
            raise TarFormatError("unexpected end of data in a tar header")
        if header.count(0) == tarfile.BLOCKSIZE:
            return  # end-of-archive block
        if _tar_number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarFormatError("bad tar header checksum")
        size, kind = _tar_number(header[124:136]), header[156:157]
        data = _read_exactly(stream, size)
        _read_exactly(stream, -size % tarfile.BLOCKSIZE)
        if kind == b"L":  # GNU: the data is the next member's name
            long_name = data.rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax: "LEN path=NAME\n" records for the next member
            for record in data.decode("utf-8", "replace").splitlines():
                _, _, item = record.partition(" ")
                if item.startswith("path="):
                    long_name = item[5:]
        elif kind in (b"0", b"\0", b"7"):  # regular files
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = (
                header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
            )
            yield long_name or (f"{prefix}/{name}" if prefix else name), data
            long_name = None
        else:  # directories, links, global pax headers: nothing to read
            long_name = None if kind != b"g" else long_name


def read_shard(url: str, counter: SkipCounter, expected: Optional[int] = None) -> Iterator[dict]:
    """Raw samples ({"__key__", "__url__", ext: bytes, ...}) of one shard, in tar order.

    A shard that cannot be opened, or fails before its first member, is an error naming it. A
    shard that breaks off later (truncated or corrupt) loses the rest: those samples are counted
    as skipped, exactly when dataset.json gives the shard's size, else as one.
    """
    try:
        stream = wds.gopen(url, "rb")
        if re.search(r"\.(tgz|tar\.gz)\b", url):
            stream = gzip.GzipFile(fileobj=stream)
    except Exception as exc:  # gopen raises OSError, ValueError (unknown scheme), ...
        raise DataError(f"{url}: cannot open shard ({exc})") from None
    members = 0
    served = 0
    current: Optional[dict] = None
    failure: Optional[Exception] = None
    try:
        with stream:
            for name, data in tar_members(stream):
                members += 1
                key, ext = _split_name(name)
                if key is None or key.startswith("__"):
                    continue
                if current is not None and current["__key__"] != key:
                    counter.ok()
                    served += 1
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
    except (OSError, EOFError, ValueError) as exc:  # truncated or broken data, a failed pipe command
        failure = exc
    if failure is not None and members == 0:
        raise DataError(f"{url}: cannot read shard ({failure})")
    if failure is None and current is not None:
        counter.ok()
        served += 1
        yield current
    lost = (expected - served) if expected is not None else (1 if failure is not None else 0)
    if lost > 0:
        counter.lost(
            url, lost, f"shard ends early ({failure or 'fewer samples than dataset.json says'}), {lost} samples lost"
        )
