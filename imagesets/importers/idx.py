"""``mnist`` and ``fashion-mnist``: the four IDX files as LeCun / Zalando ship them.

``--from DIR`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz`` (read
through gzip, streamed). IDX: a big-endian int32 magic number (0x00000803: uint8, 3
dimensions — the images; 0x00000801: uint8, 1 dimension — the labels), one big-endian int32
per dimension, then the values row by row. Magic numbers, dimensions, file sizes and the
image/label counts are checked before anything is written.

The dataset: the training images first, then the test images (70,000 × 28×28×1), factor
``label`` (categorical), and the publisher's partition as the ``standard`` split (the
60,000 training rows / the 10,000 test rows).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from imagesets.format import FactorSpec
from imagesets.importers import CHUNK, Importer, ImportOptions, RemoteFile, Source, find_file
from imagesets.importers._binary import check_size, read_head, stream_rows
from imagesets.importers._common import check_options, source_dir
from rdbench.io import InputError, sha256_file

PARTS = (("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
UBYTE = 0x08  # IDX type code of unsigned bytes
EXPECTS = "the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, " \
          "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each plain or .gz)"
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class Part:
    """One of the publisher's partitions: its images file (n × rows × cols) and labels."""

    images: Path
    shape: tuple[int, int, int]  # (n, rows, cols)
    labels_file: Path
    labels: np.ndarray  # uint8 (n,)


def idx_dims(path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions in the header of an IDX file of ``ndim``-d unsigned bytes, checked
    against the magic number and the file's size."""
    head = read_head(path, 4)
    magic, expected = int.from_bytes(head, "big"), UBYTE << 8 | ndim
    if magic != expected:
        raise InputError(f"{path.name} is not an IDX file of {ndim}-d unsigned bytes "
                         f"(magic number 0x{magic:08X}, expected 0x{expected:08X})")
    dims = struct.unpack(f">{ndim}i", read_head(path, 4 + 4 * ndim)[4:])
    if min(dims) < 1:
        raise InputError(f"{path.name} has dimensions {dims}, expected positive sizes")
    check_size(path, 4 + 4 * ndim + int(np.prod(dims)), f"{' × '.join(map(str, dims))}")
    return dims


def read_labels(path: Path, n: int) -> np.ndarray:
    """The n labels of an IDX labels file (70 kB: read whole)."""
    return np.frombuffer(b"".join(stream_rows(path, 8, 1, n, n)), dtype=np.uint8)


def read_part(directory: Path, images: str, labels: str) -> Part:
    """One partition's two files (plain or .gz), headers and counts checked."""
    images_path = find_file(directory, (images, f"{images}.gz"), images)
    labels_path = find_file(directory, (labels, f"{labels}.gz"), labels)
    shape = idx_dims(images_path, 3)
    (count,) = idx_dims(labels_path, 1)
    if count != shape[0]:
        raise InputError(f"{images_path.name} holds {shape[0]:,} images but {labels_path.name} "
                         f"{count:,} labels")
    return Part(images_path, shape, labels_path, read_labels(labels_path, count))


def part_chunks(part: Part) -> Iterator[np.ndarray]:
    """uint8 (k, rows, cols, 1) chunks of one partition's images, streamed."""
    n, rows, cols = part.shape
    for block in stream_rows(part.images, 16, rows * cols, n, CHUNK):
        yield np.frombuffer(block, dtype=np.uint8).reshape(-1, rows, cols, 1)


def read(path: Path, options: ImportOptions, kind: str) -> Source:
    check_options(kind, options)
    directory = source_dir(path, kind, EXPECTS)
    train, test = (read_part(directory, images, labels) for _, images, labels in PARTS)
    if train.shape[1:] != test.shape[1:]:
        raise InputError(f"training images are {train.shape[1]}×{train.shape[2]} but test "
                         f"images {test.shape[1]}×{test.shape[2]}")
    n_train, n = train.shape[0], train.shape[0] + test.shape[0]
    labels = np.concatenate([train.labels, test.labels]).astype(np.int64)
    files = (train.images, train.labels_file, test.images, test.labels_file)
    sources = {p.name: sha256_file(p) for p in files}
    extra = {"label_names": list(FASHION_LABELS)} if kind == "fashion-mnist" else {}
    return Source(n=n, shape=(*train.shape[1:], 1),
                  chunks=(c for part in (train, test) for c in part_chunks(part)),
                  sources=sources, factors=pd.DataFrame({"label": labels}),
                  specs=[FactorSpec("label", categorical=True)],
                  standard=(np.arange(n_train), np.arange(n_train, n)), extra=extra)


def remote_files(hashes: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f"{name}.gz", sha) for name, sha in hashes.items())


# sha256 of the .gz files: tensorflow-datasets' url_checksums/mnist.txt and fashion_mnist.txt
MNIST = remote_files({
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
})
FASHION = remote_files({
    "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
})

IMPORTERS = {
    "mnist": Importer("mnist", partial(read, kind="mnist"), expects=EXPECTS,
                      base_url="https://storage.googleapis.com/cvdf-datasets/mnist",
                      files=MNIST),
    "fashion-mnist": Importer("fashion-mnist", partial(read, kind="fashion-mnist"),
                              expects=EXPECTS,
                              base_url="http://fashion-mnist.s3-website.eu-central-1"
                                       ".amazonaws.com",
                              files=FASHION),
}
