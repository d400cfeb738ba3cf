"""``dsprites``: DeepMind's dSprites archive as shipped (Matthey et al. 2017).

``--from`` is ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (or a directory holding
it): a zip of ``.npy`` members, deflated. ``imgs`` is uint8 0/1 (737280, 64, 64);
``latents_values`` float64 (737280, 6): color, shape, scale, orientation, posX, posY. The
member ``metadata`` is a pickled object and is never read. ``imgs`` is streamed out of the
archive in chunks (its ``.npy`` header parsed with ``numpy.lib.format``, no whole-array
load), the pixels × 255; ``latents_values`` (35 MB) is read with ``allow_pickle=False``.

Factors: ``shape`` (categorical; the publisher's 1 = square, 2 = ellipse, 3 = heart),
``scale``, ``orientation`` (radians), ``x``, ``y`` (the constant color is dropped).

There is no ``--download``: no sha256 of the archive could be confirmed from a public
source (tensorflow-datasets pins only the ``.hdf5`` variant).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from imagesets.format import FactorSpec
from imagesets.importers import CHUNK, Importer, ImportOptions, Source
from imagesets.importers._common import check_options, source_file
from rdbench.io import InputError, sha256_file

FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
IMAGES, LATENTS = "imgs.npy", "latents_values.npy"
FACTORS = {"shape": 1, "scale": 2, "orientation": 3, "x": 4, "y": 5}  # latents_values column
SHAPES = {"1": "square", "2": "ellipse", "3": "heart"}
_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile)


def npy_header(f: IO[bytes], what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the ``.npy`` stream ``f``; C order required."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
    except _ERRORS as e:
        raise InputError(f"{what} has no readable .npy header ({e})") from None
    if fortran:
        raise InputError(f"{what} is stored in Fortran order, expected C order")
    return shape, dtype, f.tell()


def open_member(archive: zipfile.ZipFile, name: str, path: Path) -> IO[bytes]:
    if name not in archive.namelist():
        raise InputError(f"{path.name} has no member {name} (not the dSprites archive)")
    return archive.open(name)


def check_images(archive: zipfile.ZipFile, path: Path) -> tuple[int, int, int]:
    """(n, H, W) of ``imgs``, its header and uncompressed size checked."""
    what = f"{path.name}:{IMAGES}"
    with open_member(archive, IMAGES, path) as f:
        shape, dtype, offset = npy_header(f, what)
    if dtype != np.uint8 or len(shape) != 3 or 0 in shape:
        raise InputError(f"{what} is {dtype} {shape}, expected uint8 (N, H, W)")
    size = archive.getinfo(IMAGES).file_size
    if size != offset + int(np.prod(shape)):
        raise InputError(f"{what} holds {size:,} bytes, its header {shape} needs "
                         f"{offset + int(np.prod(shape)):,}")
    return shape


def read_latents(archive: zipfile.ZipFile, path: Path, n: int) -> pd.DataFrame:
    """The factor table from ``latents_values`` (never unpickled)."""
    what = f"{path.name}:{LATENTS}"
    try:
        with open_member(archive, LATENTS, path) as f:
            values = np.lib.format.read_array(f, allow_pickle=False)
    except _ERRORS as e:
        raise InputError(f"{what} is unreadable ({e})") from None
    if values.shape != (n, 6) or values.dtype.kind != "f" or not np.isfinite(values).all():
        raise InputError(f"{what} is {values.dtype} {values.shape}, expected finite floats "
                         f"({n}, 6), one row per image")
    factors = pd.DataFrame({name: values[:, column] for name, column in FACTORS.items()})
    factors["shape"] = np.rint(factors["shape"]).astype(np.int64)
    return factors


def image_chunks(path: Path, shape: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """uint8 (k, H, W, 1) chunks of ``imgs`` × 255, inflated as they are read."""
    n, h, w = shape
    try:
        with zipfile.ZipFile(path) as archive, archive.open(IMAGES) as f:
            npy_header(f, f"{path.name}:{IMAGES}")
            for start in range(0, n, CHUNK):
                rows = min(CHUNK, n - start)
                yield scaled(f.read(rows * h * w), rows, (h, w), path)
            f.read(1)  # at the end: zipfile checks the CRC
    except _ERRORS as e:
        raise InputError(f"{path.name}:{IMAGES} is corrupt ({e})") from None


def scaled(block: bytes, rows: int, hw: tuple[int, int], path: Path) -> np.ndarray:
    """A block of ``rows`` images of 0/1 pixels as (rows, H, W, 1) uint8 0/255."""
    if len(block) != rows * hw[0] * hw[1]:
        raise InputError(f"{path.name}:{IMAGES} is truncated")
    pixels = np.frombuffer(block, dtype=np.uint8).reshape(-1, *hw, 1)
    if pixels.max(initial=0) > 1:
        raise InputError(f"{path.name}:{IMAGES} holds pixel values above 1, expected 0/1")
    return pixels * np.uint8(255)


def read(path: Path, options: ImportOptions) -> Source:
    check_options("dsprites", options)
    path = source_file(path, (FILE,), "dsprites")
    try:
        with zipfile.ZipFile(path) as archive:
            shape = check_images(archive, path)
            factors = read_latents(archive, path, shape[0])
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{path.name} is not a readable .npz archive ({e})") from None
    specs = [FactorSpec("shape", categorical=True), FactorSpec("scale"),
             FactorSpec("orientation", label="orientation (rad)"), FactorSpec("x"),
             FactorSpec("y")]
    return Source(n=shape[0], shape=(*shape[1:], 1), chunks=image_chunks(path, shape),
                  sources={path.name: sha256_file(path)}, factors=factors, specs=specs,
                  extra={"shape_names": SHAPES})


IMPORTERS = {"dsprites": Importer(
    "dsprites", read, expects=FILE, homepage="https://github.com/deepmind/dsprites-dataset")}
