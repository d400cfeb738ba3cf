"""``folder``: the user's own PNG/JPEG pictures, any tree of them.

``--from DIR``: every ``.png``, ``.jpg`` and ``.jpeg`` file below DIR (any case; hidden
files and folders skipped), in sorted path order. When the pictures sit in sub-folders of
DIR, the sub-folder right below DIR is a categorical factor ``label`` (0..K-1 in sorted
folder-name order; the names are kept in the manifest as ``label_names``); then every
picture must be in one. Each picture is turned upright (EXIF), converted to ``--channels``
(1: grayscale, 3: RGB, the default), cropped to its central square and resized to S×S
(``--size``, default 64) with Pillow's Lanczos filter. Decoding runs in a process pool, in
order, with bounded memory; an unreadable picture is one line naming it (nothing written).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from imagesets.format import FactorSpec
from imagesets.importers import Importer, ImportOptions, Source
from imagesets.importers._common import check_options
from imagesets.importers._pictures import FolderDigest, decoded
from rdbench.io import InputError

SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_SIZE = 64
EXPECTS = "a directory of PNG/JPEG pictures (sub-folders become the label)"


def picture_paths(root: Path) -> list[str]:
    """Relative POSIX paths of the pictures below ``root``, sorted; hidden entries skipped."""
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(here).relative_to(root)
        found += [(rel / f).as_posix() for f in files
                  if not f.startswith(".") and f.lower().endswith(SUFFIXES)]
    if not found:
        raise InputError(f"--from {root} holds no PNG or JPEG pictures "
                         f"({', '.join(SUFFIXES)})")
    return sorted(found)


def labels(paths: list[str], root: Path) -> tuple[np.ndarray, list[str]] | None:
    """Each picture's sub-folder index and the sorted sub-folder names; None when every
    picture is directly in ``root``."""
    folders = [p.split("/")[0] if "/" in p else None for p in paths]
    if all(f is None for f in folders):
        return None
    loose = next((p for p, f in zip(paths, folders, strict=True) if f is None), None)
    if loose is not None:
        raise InputError(f"{root / loose} is directly in --from while other pictures are in "
                         "sub-folders (which become the label): move it into one")
    names = sorted(set(folders))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[f] for f in folders], dtype=np.int64), names


def read(path: Path, options: ImportOptions) -> Source:
    check_options("folder", options, size=True, channels=True)
    if not path.is_dir():
        raise InputError(f"--from {path} is not a directory (kind folder expects {EXPECTS})")
    paths = picture_paths(path)
    size, channels = options.size or DEFAULT_SIZE, options.channels or 3
    found = labels(paths, path)
    sources: dict[str, str] = {}
    digest = FolderDigest(sources, f"{path.name}/")
    chunks = decoded(paths, str(path), size, "L" if channels == 1 else "RGB", None, digest)
    factors, specs, extra = None, [], {"channels": channels, "pictures": len(paths)}
    if found is not None:
        factors = pd.DataFrame({"label": found[0]})
        specs, extra["label_names"] = [FactorSpec("label", categorical=True)], found[1]
    return Source(n=len(paths), shape=(size, size, channels), chunks=chunks, sources=sources,
                  factors=factors, specs=specs, extra=extra)


IMPORTERS = {"folder": Importer("folder", read, expects=EXPECTS, default_size=DEFAULT_SIZE)}
