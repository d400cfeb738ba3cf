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


@pytest.fixture
def cuda_reproducible(monkeypatch):
    """CUDA runs that repeat bit for bit and match a group's runs alone to 1e-5.

    The trainer turns TF32 and cuDNN autotuning on for CUDA (``trainer._setup_device``);
    this turns them off after it, with deterministic cuDNN algorithms, and restores all
    three afterwards. A no-op on CPU.
    """
    import torch

    from benchmark import trainer

    setup = trainer._setup_device
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [f.allow_tf32 for f in flags]
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    def exact(device):
        device = setup(device)
        for f in flags:
            f.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        return device

    monkeypatch.setattr(trainer, "_setup_device", exact)
    yield
    for f, value in zip(flags, before, strict=True):
        f.allow_tf32 = value


# --- evaluation --------------------------------------------------------------------------


@pytest.fixture
def read_metrics():
    """``read_metrics(runs_dir) -> {run_id: metrics.json contents}`` of every evaluated run."""
    import json

    def read(runs_dir):
        return {p.parent.name: json.loads(p.read_text()) for p in runs_dir.glob("*/metrics.json")}

    return read
