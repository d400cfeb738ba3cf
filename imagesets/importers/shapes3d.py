"""``3dshapes``: DeepMind's 3dShapes as shipped, ``3dshapes.h5`` (Burgess & Kim 2018).

``--from`` is ``3dshapes.h5`` (or a directory holding it), read with h5py: dataset
``images`` uint8 (480000, 64, 64, 3) and ``labels`` float64 (480000, 6) — floor_hue,
wall_hue, object_hue, scale, shape, orientation. The images (5.9 GB as uint8; the file
stores them compressed) are read a chunk of rows at a time, so memory stays flat; the
labels (23 MB) whole. Factor ``shape`` is categorical (0 cube, 1 cylinder, 2 sphere,
3 capsule), the others ordinal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from imagesets.format import FactorSpec
from imagesets.importers import CHUNK, Importer, ImportOptions, RemoteFile, Source
from imagesets.importers._common import check_options, source_file
from rdbench.io import InputError, sha256_file

FILE = "3dshapes.h5"
FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES = ("cube", "cylinder", "sphere", "capsule")
MAX_READ = 1 << 30  # bytes: the most one read may take to cover whole storage chunks


def open_h5(path: Path):
    """``path`` opened with h5py; one line if it is not an HDF5 file."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path.name} is not a readable HDF5 file ({e})") from None


def check_file(h5, path: Path) -> tuple[tuple[int, int, int, int], pd.DataFrame]:
    """The shape of ``images`` and the factor table from ``labels``, both checked."""
    import h5py

    datasets = {k: h5[k] for k in ("images", "labels") if isinstance(h5.get(k), h5py.Dataset)}
    if len(datasets) != 2:
        raise InputError(f"{path.name} lacks the datasets 'images' and 'labels' (has "
                         f"{', '.join(h5.keys()) or 'nothing'})")
    images, labels = datasets["images"], datasets["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3) \
            or 0 in images.shape:
        raise InputError(f"{path.name}: 'images' is {images.dtype} {images.shape}, expected "
                         "uint8 (N, H, W, 3)")
    if labels.shape != (images.shape[0], len(FACTORS)) or labels.dtype.kind != "f":
        raise InputError(f"{path.name}: 'labels' is {labels.dtype} {labels.shape}, expected "
                         f"floats ({images.shape[0]}, {len(FACTORS)}), one row per image")
    try:
        values = labels[()]
    except OSError as e:
        raise InputError(f"{path.name}: 'labels' is unreadable ({e})") from None
    if not np.isfinite(values).all():
        raise InputError(f"{path.name}: 'labels' holds values that are not finite")
    factors = pd.DataFrame(values, columns=list(FACTORS))
    factors["shape"] = np.rint(factors["shape"]).astype(np.int64)
    return images.shape, factors


def rows_per_read(images) -> int:
    """About ``CHUNK`` rows, a whole number of the file's storage chunks (so that each
    compressed chunk is inflated once, whatever h5py's small chunk cache holds), unless one
    storage chunk alone is larger than ``MAX_READ`` bytes."""
    stored = images.chunks[0] if images.chunks else 1
    row_bytes = int(np.prod(images.shape[1:]))
    if stored * row_bytes > MAX_READ:
        return CHUNK
    return max(1, CHUNK // stored) * stored


def image_chunks(path: Path, n: int) -> Iterator[np.ndarray]:
    """uint8 (k, H, W, C) chunks of ``images``, about ``CHUNK`` rows at a time."""
    with open_h5(path) as h5:
        images = h5["images"]
        step = rows_per_read(images)
        for start in range(0, n, step):
            try:
                block = images[start:min(n, start + step)]
            except OSError as e:  # a damaged compressed chunk
                raise InputError(f"{path.name}: 'images' rows from {start} are unreadable "
                                 f"({e})") from None
            yield block


def read(path: Path, options: ImportOptions) -> Source:
    check_options("3dshapes", options)
    path = source_file(path, (FILE,), "3dshapes")
    with open_h5(path) as h5:
        shape, factors = check_file(h5, path)
    specs = [FactorSpec(name, categorical=name == "shape") for name in FACTORS]
    return Source(n=shape[0], shape=shape[1:], chunks=image_chunks(path, shape[0]),
                  sources={path.name: sha256_file(path)}, factors=factors, specs=specs,
                  extra={"shape_names": list(SHAPES)})


# sha256: tensorflow-datasets' url_checksums/shapes3d.txt and datasets/shapes3d/checksums.tsv
IMPORTERS = {"3dshapes": Importer(
    "3dshapes", read, expects=FILE, base_url="https://storage.googleapis.com/3d-shapes",
    files=(RemoteFile(FILE, "0a0f6ed98baff276a50f3a081a7434d788da63cb135a98189b2a5b5769be1785"),))}
