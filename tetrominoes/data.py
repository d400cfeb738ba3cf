"""Read a Tetrominoes dataset: the generic loader of :mod:`imagesets` (one format for every
kind), under the names this package has always offered."""

from __future__ import annotations

from imagesets.data import ImageSet, Split, load, load_verified

Tetrominoes = ImageSet  # a Tetrominoes dataset is an ImageSet of kind "tetrominoes"

__all__ = ["Split", "Tetrominoes", "load", "load_verified"]
