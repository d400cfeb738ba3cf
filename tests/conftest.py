"""Shared pytest fixtures. Teammates: add yours at the end, each under its own header."""

import pytest

# --- tetrominoes -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path to a tiny generated Tetrominoes dataset (session-wide; treat it as read-only).

    Grid (angle, hue, scale, x, y) bins = (4, 4, 2, 4, 4): 512 images over the full factor
    ranges, seed 0, every split of ``tetrominoes.SPLIT_NAMES`` present and non-empty
    (``random`` 256/256; ``cv-<n>`` trains round(n·512/163840) rows, e.g. cv-16384 = 51;
    ``cd-<n>`` is the usual box, e.g. cd-8192 = 25/22). Open it with ``tetrominoes.load``.
    """
    from tetrominoes.build import TINY_GRID, generate

    out = tmp_path_factory.mktemp("tetrominoes") / "tiny"
    return generate(out, seed=0, workers=1, progress=False, _grid=TINY_GRID)


# --- torch -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny ops on a shared 2-core machine are ~20× faster this way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
