"""rdbench's one dataset format: read (any stage), write (generators, importers), split.

Every dataset — generated Tetrominoes, an imported published dataset, the user's own images —
is a directory of the same files (:mod:`imagesets.format`), read through :func:`load` /
:func:`load_verified`. Later stages (benchmark, analysis) import this package, never a
particular dataset's. ``ImageDataset`` (torch) and ``figures`` (matplotlib) load on first use.
"""

from imagesets.data import ImageSet, Split, load, load_verified, split_order
from imagesets.format import FORMAT_VERSION, FactorSpec, fingerprint
from imagesets.tensor import channels_first, model_input, to_float

__all__ = [
    "FORMAT_VERSION", "FactorSpec", "ImageDataset", "ImageSet", "Split", "channels_first",
    "figures", "fingerprint", "load", "load_verified", "model_input", "split_order", "to_float",
]


def __getattr__(name: str):
    if name == "ImageDataset":
        from imagesets.torch_data import ImageDataset

        return ImageDataset
    if name == "figures":
        import importlib

        return importlib.import_module("imagesets.figures")
    raise AttributeError(f"module 'imagesets' has no attribute {name!r}")
