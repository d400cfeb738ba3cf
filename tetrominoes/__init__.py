"""The Tetrominoes dataset of Bozkurt et al. 2021: render, splits, generate, load.

``TetrominoesDataset`` (torch) and ``figures`` (matplotlib) are imported on first use, so
``import tetrominoes`` stays light (numpy, pandas).
"""

from tetrominoes.build import generate
from tetrominoes.data import Split, Tetrominoes, load, load_verified
from tetrominoes.factors import BINS, FACTOR_NAMES, N_IMAGES, RANGES, sample_factors
from tetrominoes.raster import coverage, render
from tetrominoes.splits import SPLIT_NAMES, make_split

__all__ = [
    "BINS", "FACTOR_NAMES", "N_IMAGES", "RANGES", "SPLIT_NAMES", "Split", "Tetrominoes",
    "TetrominoesDataset", "coverage", "figures", "generate", "load",
    "load_verified", "make_split", "render", "sample_factors",
]


def __getattr__(name: str):
    if name == "TetrominoesDataset":
        from tetrominoes.torch_data import TetrominoesDataset

        return TetrominoesDataset
    if name == "figures":
        import importlib

        return importlib.import_module("tetrominoes.figures")
    raise AttributeError(f"module 'tetrominoes' has no attribute {name!r}")
