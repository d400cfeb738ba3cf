"""The whole pipeline on every kind of dataset (SPEC §9): each importer's official format
written small, imported, trained (MLP and CNN), evaluated, reported (Fig. 7 across them) and
analysed by the Kumar & Poole commands — one runs directory holding them all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import imagesets
from rdbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
RNG = np.random.default_rng(7)


def _import(kind: str, source: Path, out: Path, *extra: object) -> Path:
    assert main(["data", "import", kind, "--from", str(source), "--out", str(out),
                 *map(str, extra)]) == 0
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """One small dataset of every importer, written from files in each official format."""
    import test_importers as official

    root = tmp_path_factory.mktemp("official")
    out = {}
    for kind in ("mnist", "fashion-mnist"):
        folder, _ = official.mnist_dir(_mkdir(root / kind),
                                       official.mnist_arrays(n_train=14, n_test=8))
        out[kind] = _import(kind, folder, root / f"{kind}-ds")
    out["dsprites"] = _import("dsprites", official.dsprites_file(root)[0], root / "dsprites-ds")
    out["3dshapes"] = _import("3dshapes", official.shapes3d_file(root, n=16)[0],
                              root / "3dshapes-ds")
    dats = [RNG.integers(0, 256, (8, 2, 12, 12), np.uint8) for _ in range(2)]
    out["smallnorb"] = _import("smallnorb", official.norb_dir(root, official.norb_arrays(dats)),
                               root / "smallnorb-ds", "--size", 8)
    out["celeba"] = _import("celeba", official.celeba_dir(root), root / "celeba-ds",
                            "--size", 8)
    for i in range(12):
        Image.fromarray(RNG.integers(0, 256, (10, 14), np.uint8)).save(
            _mkdir(root / "tree" / ("a" if i % 2 else "b")) / f"{i}.png")
    out["folder"] = _import("folder", root / "tree", root / "folder-ds", "--size", 6,
                            "--channels", 1)
    np.save(root / "x.npy", RNG.integers(0, 256, (20, 9, 7, 3), np.uint8))
    pd.DataFrame({"u": RNG.random(20), "v": RNG.random(20)}).to_csv(root / "f.csv",
                                                                     index=False)
    out["npy"] = _import("npy", root / "x.npy", root / "npy-ds", "--factors", root / "f.csv")
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def pipeline(datasets, tmp_path_factory) -> Path:
    """Train, evaluate and report every dataset in one runs directory."""
    root = tmp_path_factory.mktemp("pipeline")
    grid = root / "grid.toml"
    grid.write_text("\n".join([
        'name = "every_kind"', f"datasets = {json.dumps([str(p) for p in datasets.values()])}",
        'splits = ["random"]', 'architectures = ["mlp1", "cnn1"]', "betas = [0.5, 2.0]",
        "seeds = [0]", "iterations = 3", "batch_size = 2", "log_every = 1",
        "checkpoint_every = 3", 'device = "cpu"', "[architecture_options.mlp1]", "hidden = 8",
        "[architecture_options.cnn1]", "channels = 4"]) + "\n")
    runs = root / "runs"
    assert main(["train", str(grid), "--out", str(runs)]) == 0
    assert main(["evaluate", str(runs), "--iwae-samples", "3", "--iwae-subset", "2",
                 "--nn-subset", "3", "--mi-batch", "2"]) == 0
    assert main(["report", str(runs)]) == 0
    return runs


def test_every_kind_is_trained_and_evaluated(pipeline, datasets):
    configs = [json.loads(p.read_text()) for p in pipeline.glob("*/config.json")]
    assert len(configs) == len(datasets) * 2 * 2
    shapes = {Path(c["dataset"]).name: tuple(c["image_shape"]) for c in configs}
    assert shapes == {"mnist-ds": (1, 5, 4), "fashion-mnist-ds": (1, 5, 4),
                      "dsprites-ds": (1, 6, 5), "3dshapes-ds": (3, 8, 6),
                      "smallnorb-ds": (1, 8, 8), "celeba-ds": (3, 8, 8),
                      "folder-ds": (1, 6, 6), "npy-ds": (3, 9, 7)}
    for c in configs:
        metrics = json.loads((pipeline / c["run_id"] / "metrics.json").read_text())
        assert np.isfinite(metrics["test"]["distortion"]) and metrics["test"]["n"] >= 2
    assert len(list((pipeline / "neighbours").glob("random.*.npz"))) == len(datasets)


def test_the_report_draws_each_dataset_and_figure_7_across_them(pipeline, datasets):
    figures = pipeline / "report" / "figures"
    assert (figures / "rd_datasets.png").is_file()
    for path in datasets.values():
        name = path.name
        for stem in (f"rd_random_mlp1_{name}", f"rd_random_cnn1_{name}",
                     f"reconstructions_random_mlp1_{name}", f"dataset_samples_{name}"):
            assert (figures / f"{stem}.png").is_file(), stem
    page = (pipeline / "report" / "report.md").read_text()
    # mnist's only factor is a categorical label: no factor plane for a split picture
    assert "fewer than two non-categorical factors" in page
    assert (figures / "split_random_npy-ds.png").is_file()  # u, v: a split picture
    runs = pd.read_csv(pipeline / "report" / "runs.csv")
    assert set(runs["dataset"]) == {p.name for p in datasets.values()}


def test_kp_analyses_on_every_kind(pipeline):
    for analysis in ("objectives", "jacobian"):
        assert main(["kp", analysis, str(pipeline), "--examples", "2"] +
                    (["--samples", "4"] if analysis == "objectives" else [])) == 0
    table = pd.read_csv(pipeline / "kp" / "objectives" / "objectives.csv")
    assert table["dataset"].nunique() == 8 and np.isfinite(table["grae"]).all()
    assert (table["grae"] <= table["taylor"] + 1e-6).all()


def test_imported_datasets_verify(datasets):
    for path in datasets.values():
        assert imagesets.load_verified(path).verify() == []
