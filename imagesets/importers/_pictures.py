"""Pictures to uint8 squares: Pillow decodes, crops the centre, resizes (Lanczos).

Folders of PNG/JPEG files (``celeba``, ``folder``) are decoded in batches by a process
pool (fork where there is one): the first batches are submitted when the importer reads
(so the pool forks before the writer starts its side thread), at most two per worker are
in flight, and results come back in file order, so memory stays at a few batches whatever
the number of files. Workers end with their parent (:func:`rdbench.processes.
exit_with_parent`). Each worker also returns the sha256 of every file it read, so a folder's
digest costs no second pass over the files (:class:`FolderDigest`).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from rdbench.io import InputError
from rdbench.processes import exit_with_parent

FILTER = Image.Resampling.LANCZOS
FORMATS = ("PNG", "JPEG")
BATCH = 256  # images per task of a worker
_zips: dict[str, zipfile.ZipFile] = {}  # per process: archives opened by decode_batch


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) image resized to (size, size) (unchanged if it is)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), FILTER))


def centre_square(image: Image.Image, side: int | None = None) -> Image.Image:
    """The central ``side`` × ``side`` square (``None``: the largest; at most the image)."""
    w, h = image.size
    side = min(w, h) if side is None else min(side, w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def picture(data: bytes, name: str, size: int, mode: str, side: int | None) -> np.ndarray:
    """The PNG/JPEG ``data`` as uint8 (size, size, C): upright (EXIF), in ``mode`` ("L" or
    "RGB"), its central square cropped and resized; one line naming ``name`` if unreadable."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
            image = ImageOps.exif_transpose(opened).convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{name} is not a readable PNG or JPEG image ({e})") from None
    square = centre_square(image, side)
    if square.size != (size, size):
        square = square.resize((size, size), FILTER)
    array = np.asarray(square)
    return array[..., None] if array.ndim == 2 else array


def read_bytes(source: str, name: str) -> bytes:
    """File ``name`` of folder ``source``, or member ``name`` of the zip archive ``source``."""
    try:
        if os.path.isdir(source):
            return (Path(source) / name).read_bytes()
        if source not in _zips:
            _zips[source] = zipfile.ZipFile(source)  # noqa: SIM115 (kept for the batches)
        return _zips[source].read(name)
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise InputError(f"cannot read {name} ({e})") from None


def decode_batch(names: Sequence[str], source: str, size: int, mode: str, side: int | None
                 ) -> tuple[np.ndarray, list[str]]:
    """The pictures ``names`` of ``source`` as uint8 (k, size, size, C), and their sha256."""
    images, digests = [], []
    for name in names:
        data = read_bytes(source, name)
        digests.append(hashlib.sha256(data).hexdigest())
        images.append(picture(data, name, size, mode, side))
    return np.stack(images), digests


def default_workers() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def in_order(task: Callable[[Any], Any], batches: Sequence[Any], workers: int
             ) -> Iterator[Any]:
    """``task(batch)`` for every batch, in order; in a pool of ``workers`` processes when
    there are several batches (the first ``2 × workers`` are submitted now)."""
    if workers < 2 or len(batches) < 2:
        return (task(batch) for batch in batches)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=exit_with_parent, initargs=(os.getpid(),))
    window = 2 * workers
    pending = deque(pool.submit(task, batch) for batch in batches[:window])

    def results() -> Iterator[Any]:
        try:
            for batch in batches[window:]:
                yield pending.popleft().result()
                pending.append(pool.submit(task, batch))
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(cancel_futures=True)

    return results()


class FolderDigest:
    """sha256 of a folder of files, known once every file was read: the sha256 of its
    ``sha256sum``-style listing (``<sha256>  <relative path>`` lines, in file order), so
    ``sha256sum`` can recompute it. Added to ``sources`` under ``key`` when complete."""

    def __init__(self, sources: dict[str, str], key: str):
        self.sources, self.key = sources, key
        self.listing = hashlib.sha256()

    def update(self, names: Sequence[str], digests: Sequence[str]) -> None:
        for name, digest in zip(names, digests, strict=True):
            self.listing.update(f"{digest}  {name}\n".encode())

    def finish(self) -> None:
        self.sources[self.key] = self.listing.hexdigest()


def decoded(names: Sequence[str], source: str, size: int, mode: str, side: int | None,
            digest: FolderDigest | None = None) -> Iterator[np.ndarray]:
    """uint8 (k, size, size, C) chunks of the pictures ``names`` of ``source``, decoded by
    a pool; their files' sha256 go into ``digest``."""
    batches = [names[i:i + BATCH] for i in range(0, len(names), BATCH)]
    task = partial(decode_batch, source=source, size=size, mode=mode, side=side)
    results = in_order(task, batches, default_workers())

    def chunks() -> Iterator[np.ndarray]:
        for batch, (images, digests) in zip(batches, results, strict=True):
            if digest is not None:
                digest.update(batch, digests)
            yield images
        if digest is not None:
            digest.finish()

    return chunks()
