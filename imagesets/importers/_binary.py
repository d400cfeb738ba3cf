"""Binary distribution files (IDX, smallNORB's matrices), plain or gzip as shipped.

A file is gzip when it starts with gzip's magic bytes, whatever its name. Its size is checked
against its header before any pixel is read: a plain file's length, a gzip file's trailer
(ISIZE, the uncompressed length mod 2³²; the official files are single-member), so a
truncated download is one line up front. Pixels are then streamed in blocks of whole rows;
the last read goes one byte past the payload, which makes gzip check its CRC and refuses
trailing data. Decompression errors are one line naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rdbench.io import InputError

GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (OSError, EOFError, zlib.error)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: Path) -> BinaryIO:
    """``path`` opened for reading its (decompressed) bytes."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # noqa: SIM115


def read_exact(f: BinaryIO, n: int, path: Path) -> bytes:
    """``n`` bytes of ``f``; one line if the file ends early or does not decompress."""
    try:
        data = f.read(n)
    except _READ_ERRORS as e:
        raise InputError(f"{path.name} is corrupt ({e})") from None
    if len(data) != n:
        raise InputError(f"{path.name} is truncated (ends {n - len(data)} bytes early)")
    return data


def read_head(path: Path, n: int) -> bytes:
    """The first ``n`` (decompressed) bytes of ``path``."""
    try:
        with open_binary(path) as f:
            return read_exact(f, n, path)
    except _READ_ERRORS as e:
        raise InputError(f"{path.name} is unreadable ({e})") from None


def check_size(path: Path, expected: int, header: str) -> None:
    """The (decompressed) size of ``path`` must be ``expected`` bytes, what its ``header``
    (described in the message) implies."""
    if is_gzip(path):
        with open(path, "rb") as f:
            f.seek(-4, 2)
            actual = int.from_bytes(f.read(4), "little")
        if actual != expected % 2**32:
            raise InputError(f"{path.name}: its gzip trailer gives {actual:,} bytes, its header "
                             f"{header} needs {expected:,}: truncated, or not the official file")
        return
    actual = path.stat().st_size
    if actual != expected:
        raise InputError(f"{path.name} holds {actual:,} bytes, its header {header} needs "
                         f"{expected:,}: truncated, or not the official file")


def stream_rows(path: Path, offset: int, row_bytes: int, n: int, chunk_rows: int
                ) -> Iterator[bytes]:
    """The ``n`` rows of ``row_bytes`` bytes that follow ``offset`` header bytes, as blocks
    of at most ``chunk_rows`` rows; then the file must end (gzip checks its CRC there)."""
    with open_binary(path) as f:
        read_exact(f, offset, path)
        for start in range(0, n, chunk_rows):
            yield read_exact(f, min(chunk_rows, n - start) * row_bytes, path)
        try:
            rest = f.read(1)
        except _READ_ERRORS as e:
            raise InputError(f"{path.name} is corrupt ({e})") from None
        if rest:
            raise InputError(f"{path.name} holds more data than its header says")
