"""``npy``: a uint8 array (N, H, W) or (N, H, W, C) saved with ``np.save``, optional factors.

``--from IMAGES.npy`` is memory-mapped (never unpickled) and copied in chunks; ``--factors
FACTORS.csv`` gives one numeric row per image (a header of column names), and
``--categorical a,b`` says which of its columns are categorical (left out of checkerboard
and cd splits). Without factors the dataset gets the random and cv-N splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from imagesets.format import CHANNELS, FactorSpec
from imagesets.importers import Importer, ImportOptions, Source, chunked
from rdbench.io import InputError, sha256_file


def open_array(path: Path) -> np.ndarray:
    """The array of ``path``, memory-mapped; one line for anything but a uint8 image stack."""
    if path.is_dir() or path.suffix != ".npy":
        raise InputError(f"--from must be a .npy file for kind npy, got {path}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path} is not a readable .npy array ({e})") from None
    if array.dtype != np.uint8:
        raise InputError(f"{path} holds {array.dtype}, expected uint8 pixels (0..255); "
                         "convert with (x * 255).round().astype(np.uint8)")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in CHANNELS or 0 in array.shape:
        raise InputError(f"{path} has shape {array.shape}, expected (N, H, W) or "
                         f"(N, H, W, C) with C in {CHANNELS}")
    return array


def read_factors(path: Path, n: int, categorical: tuple[str, ...]
                 ) -> tuple[pd.DataFrame, list[FactorSpec]]:
    """A factor CSV of n numeric rows; specs with the named columns categorical."""
    try:
        factors = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"--factors {path} is not a readable CSV ({e})") from None
    numeric = all(pd.api.types.is_numeric_dtype(t) for t in factors.dtypes)
    if len(factors) != n or not numeric or factors.isna().any().any() or factors.shape[1] == 0:
        raise InputError(f"--factors {path} must hold {n} rows (one per image) of numbers "
                         f"without gaps, got {len(factors)} rows of "
                         f"{', '.join(map(str, factors.columns))}")
    unknown = sorted(set(categorical) - set(factors.columns))
    if unknown:
        raise InputError(f"--categorical names no column of {path}: {', '.join(unknown)}")
    specs = [FactorSpec(str(c), str(c) in categorical) for c in factors.columns]
    return factors.rename(columns=str), specs


def read(path: Path, options: ImportOptions) -> Source:
    array = open_array(path)
    n, h, w, c = array.shape
    sources = {path.name: sha256_file(path)}
    factors, specs = None, []
    if options.factors is not None:
        factors, specs = read_factors(Path(options.factors), n, options.categorical)
        sources[Path(options.factors).name] = sha256_file(options.factors)
    elif options.categorical:
        raise InputError("--categorical needs --factors")
    chunks = chunked(n, lambda a, b: np.asarray(array[a:b]).reshape(b - a, h, w, c))
    return Source(n=n, shape=(h, w, c), chunks=chunks, sources=sources, factors=factors,
                  specs=specs)


IMPORTERS = {"npy": Importer("npy", read, expects="a uint8 .npy array (N, H, W[, C])")}
