"""``smallnorb``: the six binary-matrix files of NYU's small NORB, as shipped.

``--from DIR`` holds ``smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat`` and
``smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat``, each plain or ``.gz``.
Binary matrix format: int32 little-endian magic (0x1E3D4C55 unsigned bytes, 0x1E3D4C54
int32), int32 number of dimensions, max(3, ndim) int32 sizes (the unused ones are 1), then
the values. ``dat`` is (24300, 2, 96, 96) uint8: a stereo pair per row, of which the first
camera is kept (48,600 images in all); ``cat`` (24300,) the category; ``info`` (24300, 4)
instance, elevation, azimuth, lighting. Headers, sizes and counts are checked up front.

Images are resized from 96×96 to S×S (``--size``, default 64) with Pillow's Lanczos filter.
Factors: ``category`` and ``instance`` and ``lighting`` (categorical), ``elevation`` (0..8:
30° + 5° × value) and ``azimuth`` (0, 2, …, 34: 10° × value), the publisher's values. The
``standard`` split is the publisher's: the training file's 24,300 rows / the testing file's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagesets.format import FactorSpec
from imagesets.importers import Importer, ImportOptions, RemoteFile, Source, find_file
from imagesets.importers._binary import check_size, read_head, stream_rows
from imagesets.importers._common import check_options, source_dir
from imagesets.importers._pictures import resize
from rdbench.io import InputError, sha256_file

PREFIXES = ("smallnorb-5x46789x9x18x6x2x96x96-training",
            "smallnorb-5x01235x9x18x6x2x96x96-testing")
UBYTE, INT32 = 0x1E3D4C55, 0x1E3D4C54  # magic numbers of the two matrix types used
CHUNK_ROWS = 1024  # stereo pairs per block read (96×96: 18 MB)
DEFAULT_SIZE = 64
INFO_COLUMNS = ("instance", "elevation", "azimuth", "lighting")
CATEGORIES = ("four-legged animal", "human figure", "airplane", "truck", "car")
EXPECTS = ("the six files smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat and "
           "smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat (each plain or .gz)")


@dataclass(frozen=True)
class Part:
    """The training or the testing files: the images file and its rows' factors."""

    dat: Path
    shape: tuple[int, int, int, int]  # (n, cameras, H, W)
    factors: pd.DataFrame  # category, instance, elevation, azimuth, lighting
    files: tuple[Path, ...]


def matrix_dims(path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    """The sizes in the header of a binary matrix of type ``magic`` and ``ndim``
    dimensions, checked against the file's size; one line for anything else."""
    found, dims = struct.unpack("<ii", read_head(path, 8))
    if found != magic:
        kind = "unsigned-byte" if magic == UBYTE else "int32"
        raise InputError(f"{path.name} is not a smallNORB {kind} matrix (magic number "
                         f"0x{found & 0xFFFFFFFF:08X}, expected 0x{magic:08X})")
    if dims != ndim:
        raise InputError(f"{path.name} has {dims} dimensions, expected {ndim}")
    stored = max(3, ndim)
    sizes = struct.unpack(f"<{stored}i", read_head(path, 8 + 4 * stored)[8:])[:ndim]
    if min(sizes) < 1:
        raise InputError(f"{path.name} has sizes {sizes}, expected positive sizes")
    itemsize = 1 if magic == UBYTE else 4
    check_size(path, 8 + 4 * stored + itemsize * int(np.prod(sizes)),
               " × ".join(map(str, sizes)))
    return sizes


def read_int32(path: Path, sizes: tuple[int, ...]) -> np.ndarray:
    """A (small) int32 matrix read whole, after its header."""
    offset = 8 + 4 * max(3, len(sizes))
    row = 4 * int(np.prod(sizes[1:]))
    data = b"".join(stream_rows(path, offset, row, sizes[0], sizes[0]))
    return np.frombuffer(data, dtype="<i4").reshape(sizes).astype(np.int64)


def read_part(directory: Path, prefix: str) -> Part:
    """The three files of the training or the testing set, checked to agree."""
    dat, cat, info = (find_file(directory, (f"{prefix}-{x}.mat", f"{prefix}-{x}.mat.gz"),
                                f"{prefix}-{x}.mat") for x in ("dat", "cat", "info"))
    shape = matrix_dims(dat, UBYTE, 4)
    (n_cat,) = matrix_dims(cat, INT32, 1)
    n_info, columns = matrix_dims(info, INT32, 2)
    if shape[1] != 2 or shape[2] != shape[3] or columns != len(INFO_COLUMNS):
        raise InputError(f"{dat.name} is {shape} and {info.name} has {columns} columns, "
                         f"expected (n, 2, S, S) stereo pairs and {len(INFO_COLUMNS)} columns")
    if not shape[0] == n_cat == n_info:
        raise InputError(f"{dat.name} holds {shape[0]:,} rows, {cat.name} {n_cat:,} and "
                         f"{info.name} {n_info:,}: they must agree")
    factors = pd.DataFrame(read_int32(info, (n_info, columns)), columns=list(INFO_COLUMNS))
    factors.insert(0, "category", read_int32(cat, (n_cat,)))
    return Part(dat, shape, factors, (dat, cat, info))


def part_chunks(part: Part, size: int) -> Iterator[np.ndarray]:
    """uint8 (k, size, size, 1) chunks of the first camera's images, resized."""
    n, cameras, h, w = part.shape
    for block in stream_rows(part.dat, 8 + 4 * 4, cameras * h * w, n, CHUNK_ROWS):
        first = np.frombuffer(block, dtype=np.uint8).reshape(-1, cameras, h, w)[:, 0]
        yield np.stack([resize(image, size) for image in first])[..., None]


def read(path: Path, options: ImportOptions) -> Source:
    check_options("smallnorb", options, size=True)
    directory = source_dir(path, "smallnorb", EXPECTS)
    train, test = (read_part(directory, prefix) for prefix in PREFIXES)
    if train.shape[1:] != test.shape[1:]:
        raise InputError(f"training images are {train.shape[1:]}, test images {test.shape[1:]}")
    size = options.size or DEFAULT_SIZE
    n_train, n = len(train.factors), len(train.factors) + len(test.factors)
    factors = pd.concat([train.factors, test.factors], ignore_index=True)
    specs = [FactorSpec("category", categorical=True), FactorSpec("instance", categorical=True),
             FactorSpec("elevation", label="elevation (30° + 5° × value)"),
             FactorSpec("azimuth", label="azimuth (10° × value)"),
             FactorSpec("lighting", categorical=True)]
    sources = {p.name: sha256_file(p) for part in (train, test) for p in part.files}
    return Source(n=n, shape=(size, size, 1),
                  chunks=(c for part in (train, test) for c in part_chunks(part, size)),
                  sources=sources, factors=factors, specs=specs,
                  standard=(np.arange(n_train), np.arange(n_train, n)),
                  extra={"camera": 0, "category_names": list(CATEGORIES),
                         "resized_from": list(train.shape[2:])})


# sha256 of the .gz files: tensorflow-datasets' url_checksums/smallnorb.txt
# (and datasets/smallnorb/checksums.tsv, the same values)
FILES = (
    RemoteFile(f"{PREFIXES[0]}-cat.mat.gz",
               "2784e542c1922060691090952b6cd6278879a216c90f81476f0f00256d42cdaa"),
    RemoteFile(f"{PREFIXES[0]}-dat.mat.gz",
               "5ffd6272a07d32695ee1082a26a41a93a37aab8c28da047f8c34ed348d214873"),
    RemoteFile(f"{PREFIXES[0]}-info.mat.gz",
               "de7eb932ebe7a4ee16217fead60660d0eb3d23632c2f4d1c51f88c501c17bf32"),
    RemoteFile(f"{PREFIXES[1]}-cat.mat.gz",
               "ecaf6d5bb8c3bc5eab9cf0258f6d2198dd474e016e374836fc097f2e5ff509ff"),
    RemoteFile(f"{PREFIXES[1]}-dat.mat.gz",
               "cf7104eed3e51174d2f65b66d1e5878b9da233b886f161b0d88f4510ba2c7474"),
    RemoteFile(f"{PREFIXES[1]}-info.mat.gz",
               "16adf314226327ee006d1a44db8cfef52773c06c829951d5653a9f6f310248a2"),
)

IMPORTERS = {"smallnorb": Importer(
    "smallnorb", read, expects=EXPECTS, files=FILES, default_size=DEFAULT_SIZE,
    base_url="https://cs.nyu.edu/~ylclab/data/norb-v1.0-small")}
