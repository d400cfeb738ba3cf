"""``celeba``: CelebA's aligned faces as the publisher ships them (Liu et al. 2015).

``--from DIR`` holds ``img_align_celeba/`` (202,599 JPEGs, 178×218) or the archive
``img_align_celeba.zip`` (read in place, never extracted), and ``list_eval_partition.txt``
(in DIR or its ``Eval/``; lines ``000001.jpg 0``: 0 train, 1 validation, 2 test). The rows
are the partition file's, in its order; every listed image must exist (checked up front).

Each image is cropped to its central 148×148 square (the usual CelebA crop, which keeps
the face), resized to S×S (``--size``, default 64) with Pillow's Lanczos filter, RGB. The
JPEGs are decoded by a process pool, in order, a few batches in flight (bounded memory).

The ``standard`` split is the publisher's: train = partition 0 (162,770 images), test =
partition 2 (19,962); the 19,867 validation images (partition 1) are in neither. No factors
(the random and cv-N splits are drawn over all images).

There is no ``--download``: the files live on Google Drive, which has no stable direct URL.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from imagesets.importers import Importer, ImportOptions, Source, find_file
from imagesets.importers._common import check_options, source_dir
from imagesets.importers._pictures import FolderDigest, decoded
from rdbench.io import InputError, sha256_file

FOLDER, ARCHIVE, PARTITION = "img_align_celeba", "img_align_celeba.zip", "list_eval_partition.txt"
CROP = 148  # side of the central square kept
DEFAULT_SIZE = 64
TRAIN, VALID, TEST = 0, 1, 2
EXPECTS = f"{FOLDER}/ (or {ARCHIVE}) and {PARTITION}"


def read_partition(path: Path) -> tuple[list[str], np.ndarray]:
    """The image names and partitions (0, 1, 2) of ``list_eval_partition.txt``."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} ({e})") from None
    names, parts = [], []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2") or "/" in fields[0]:
            raise InputError(f"{path.name} line {number}: expected 'IMAGE.jpg 0|1|2', "
                             f"got {line.strip()!r}")
        names.append(fields[0])
        parts.append(int(fields[1]))
    if not names or len(set(names)) != len(names):
        raise InputError(f"{path.name} lists {'no images' if not names else 'an image twice'}")
    return names, np.array(parts)


def folder_members(directory: Path, names: list[str]) -> tuple[str, list[str]]:
    """Where the images are (the folder or the zip) and the names to read there; one line
    if an image the partition file lists is missing."""
    if (directory / FOLDER).is_dir():
        source, present = directory / FOLDER, {p.name for p in (directory / FOLDER).iterdir()}
        members = names
    elif (directory / ARCHIVE).is_file():
        source = directory / ARCHIVE
        present = zip_names(source)
        members = [present[name] for name in names if name in present]
    else:
        raise InputError(f"{directory} holds neither {FOLDER}/ nor {ARCHIVE}")
    missing = [name for name in names if name not in present]
    if missing:
        raise InputError(f"{len(missing):,} image(s) of {PARTITION} are not in {source.name} "
                         f"(first: {missing[0]})")
    return str(source), members


def zip_names(archive: Path) -> dict[str, str]:
    """{image file name: member} of the JPEGs in the archive."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{archive.name} is not a readable zip archive ({e})") from None
    return {PurePosixPath(m).name: m for m in members if m.lower().endswith(".jpg")}


def read(path: Path, options: ImportOptions) -> Source:
    check_options("celeba", options, size=True)
    directory = source_dir(path, "celeba", EXPECTS)
    partition = find_file(directory, (PARTITION, f"Eval/{PARTITION}"), PARTITION)
    names, parts = read_partition(partition)
    source, members = folder_members(directory, names)
    train, test = np.flatnonzero(parts == TRAIN), np.flatnonzero(parts == TEST)
    if not train.size or not test.size:
        raise InputError(f"{PARTITION} lists no {'training (0)' if not train.size else 'test (2)'}"
                         " images")
    size = options.size or DEFAULT_SIZE
    sources = {PARTITION: sha256_file(partition)}
    digest = None
    if Path(source).name == ARCHIVE:
        sources[ARCHIVE] = sha256_file(source)
    else:  # the folder's digest is completed while its files are decoded
        digest = FolderDigest(sources, f"{FOLDER}/")
    counts = {str(p): int((parts == p).sum()) for p in (TRAIN, VALID, TEST)}
    return Source(n=len(names), shape=(size, size, 3),
                  chunks=decoded(members, source, size, "RGB", CROP, digest),
                  sources=sources, standard=(train, test),
                  extra={"crop": CROP, "partition_counts": counts,
                         "standard_split": "train = partition 0, test = partition 2 "
                                           "(validation, partition 1, in neither)"})


IMPORTERS = {"celeba": Importer(
    "celeba", read, expects=EXPECTS, default_size=DEFAULT_SIZE,
    homepage="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive)")}
