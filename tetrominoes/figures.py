"""Dataset figures of Tetrominoes: the samples grid (Bozkurt et al. Fig. 1) and the split
picture (Fig. 2) — the generic figures of :mod:`imagesets.figures`, which draw any dataset;
Tetrominoes' manifest names its factor labels, ranges and the x–y plane they default to."""

from imagesets.figures import (
    OTHER,
    TEST,
    TRAIN,
    draw_samples,
    draw_split,
    mosaic,
    plot_overview,
    plot_samples,
    plot_split,
    save_figure,
)

__all__ = ["OTHER", "TEST", "TRAIN", "draw_samples", "draw_split", "mosaic", "plot_overview",
           "plot_samples", "plot_split", "save_figure"]
