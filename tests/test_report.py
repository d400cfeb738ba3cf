"""Tables, figures and the report page, on a synthetic runs directory (no training needed).

The fake RUNS_DIR follows docs/DESIGN.md: per run ``config.json``, ``status.json`` and
``metrics.json`` with plausible RD numbers (rate falls and distortion rises with β, the test
set is worse than the train set), plus ``neighbours/<split>.npz``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import stat
import subprocess
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis import figures, figures_rd, report, tables
from analysis.plot_style import Skipped
from benchmark.likelihoods import Bernoulli
from rdbench.cli import main as rdbench_main
from rdbench.io import InputError, output_kind

SIZES = {"cv-16384": (16384, 147456), "cv-81920": (81920, 81920)}
BETAS = (0.01, 0.1, 1.0, 3.0)
SEEDS = (0, 1, 2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _set_metrics(beta: float, n: int, n_train: int, test: bool, rng: np.random.Generator,
                 deterministic: bool = False) -> dict:
    rate = 20.0 * beta ** -0.25 * (1.05 if test else 1.0) * rng.normal(1, 0.02)
    distortion = 60.0 + 1500.0 / rate + (25.0 + 0.3 * rate if test else 0.0)
    distortion *= rng.normal(1, 0.01)
    mi = min(0.5 * rate, math.log(n_train) - 0.05)
    if deterministic:
        rate = mi = math.inf
    return {"n": n, "distortion": distortion, "rate": rate, "elbo": -(distortion + rate),
            "mutual_information": mi, "marginal_kl": rate - mi,
            "log_px": -(distortion + rate) + 3.0, "batch_size": 512}


def _write_run(root: Path, cfg: dict, status: str, rng: np.random.Generator) -> None:
    run = root / cfg["run_id"]
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "status.json").write_text(json.dumps(
        {"status": status, "reason": "loss is nan" if status == "failed" else None,
         "iteration": 100}))
    if status != "done" or cfg.get("_no_metrics"):
        return
    n_train, n_test = SIZES[cfg["split"]]
    det = cfg["objective"] == "ae"
    metrics = {"train": _set_metrics(cfg["beta"], n_train, n_train, False, rng, det),
               "test": _set_metrics(cfg["beta"], n_test, n_train, True, rng, det),
               "settings": {"mi_batch": 512}}
    (run / "metrics.json").write_text(json.dumps(metrics))


def _grid() -> list[dict]:
    combos = [(s, "mlp1", "beta_vae", {}) for s in SIZES]
    combos += [("cv-16384", "cnn1", "beta_vae", {}), ("cv-16384", "mlp1", "grae", {}),
               ("cv-16384", "mlp1", "ae", {}),
               ("cv-16384", "mlp1", "beta_vae_block", {"block_size": 2})]
    runs = []
    for split, arch, objective, options in combos:
        for beta in BETAS:
            for seed in SEEDS:
                run_id = f"{split}-{arch}-{objective}-{beta:g}-{seed}"
                runs.append({"run_id": run_id, "split": split, "architecture": arch,
                             "objective": objective, "beta": beta, "seed": seed,
                             "n_train": SIZES[split][0], "dataset": "/nonexistent/tetrominoes",
                             "objective_options": {"dataset_size": SIZES[split][0],
                                                   **options}})
    return runs


def make_fake_runs(root: Path) -> Path:
    """A RUNS_DIR of 72 runs (one failed, one finished without metrics, the rest done) and
    one directory with a corrupt config.json."""
    rng = np.random.default_rng(0)
    for i, cfg in enumerate(_grid()):
        status = "failed" if i == 5 else "done"
        _write_run(root, {**cfg, "_no_metrics": i == 6}, status, rng)
    (root / "zz-broken").mkdir()
    (root / "zz-broken" / "config.json").write_text("{not json")
    _write_neighbours(root, rng)
    return root


def _write_neighbours(root: Path, rng: np.random.Generator) -> None:
    (root / "neighbours").mkdir()
    for k, split in enumerate(SIZES):
        distance = rng.gamma(4.0 + 2 * k, 0.5, size=400).astype(np.float32)
        test = np.arange(400, dtype=np.int64)
        hard = test[np.argsort(distance)[int(0.9 * 399)]]
        np.savez(root / "neighbours" / f"{split}.npz", test=test, distance=distance,
                 nearest=test + 1000, hard=np.int64(hard))


N_RUNS = 6 * len(BETAS) * len(SEEDS)
FAILED, UNEVALUATED = "cv-16384-mlp1-beta_vae-0.1-2", "cv-16384-mlp1-beta_vae-1-0"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def runs(runs_dir: Path) -> pd.DataFrame:
    return tables.collect_runs(runs_dir)


# ---------------------------------------------------------------- fake dataset and models
class _FakeVAE(torch.nn.Module):
    """encode: mean pixel per channel as latent; decode: constant image of that colour."""

    def __init__(self):
        super().__init__()
        self.likelihood = Bernoulli()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = x.mean(dim=(2, 3))  # (B, 3)
        return mu, torch.zeros_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        p = z.clamp(1e-3, 1 - 1e-3)[:, :, None, None].expand(-1, -1, 32, 32)
        return torch.log(p) - torch.log1p(-p)  # logits (B, 3, 32, 32)


def _fake_load_model(run_dir: Path) -> torch.nn.Module:
    if run_dir.name.endswith("-3.0-0") or run_dir.name.endswith("-3-0"):
        raise FileNotFoundError(run_dir / "model.pt")  # one β without a model
    return _FakeVAE()


def _fake_images() -> np.ndarray:
    rng = np.random.default_rng(1)
    images = np.zeros((1500, 32, 32, 3), np.uint8)
    for i in range(images.shape[0]):
        r, c = rng.integers(4, 24, size=2)
        images[i, r:r + 6, c:c + 6] = rng.integers(60, 255, size=3)
    return images


def _fake_dataset_figures() -> types.SimpleNamespace:
    import matplotlib.pyplot as plt

    def plot_samples(data: object, path: Path) -> None:
        plt.imsave(path, data.images[0])

    def plot_split(data: object, split: str, path: Path) -> None:
        plt.imsave(path, data.images[1])

    return types.SimpleNamespace(plot_samples=plot_samples, plot_split=plot_split,
                                 split_picture_note=lambda data: None)


@pytest.fixture(scope="module")
def built(runs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the fake runs, with a fake dataset, model loader and dataset figures."""
    data = types.SimpleNamespace(images=_fake_images(), split_names=("random", "cv-16384"))
    kp = runs_dir / "kp" / "objectives"  # as `rdbench kp objectives` leaves it; no jacobian
    kp.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (200, 10, 10)).save(kp / "objectives.png")
    (kp / "objectives.pdf").write_bytes(b"%PDF-1.4 kp objectives")
    out = tmp_path_factory.mktemp("built") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "_load_dataset", lambda path: data)
        mp.setattr(report, "_model_loader", lambda: _fake_load_model)
        mp.setattr(figures, "dataset_figures", _fake_dataset_figures())
        assert report.build_report(runs_dir, out) == out.resolve()
    return out


EXPECTED_FIGURES = [
    "rd_cv-16384_mlp1", "rd_cv-16384_cnn1", "rd_cv-81920_mlp1", "rd_sizes",
    "rd_cv82_cv16_checkerboard", "rd_mlp_vs_cnn", "rd_objectives", "mi_kl_cv-16384_mlp1",
    "mi_kl_cv-16384_cnn1", "mi_kl_cv-81920_mlp1", "reconstructions_cv-16384_mlp1",
    "reconstructions_cv-16384_cnn1", "reconstructions_cv-81920_mlp1", "nn_distances",
    "dataset_samples", "splits_paper", "split_cv-16384", "split_cv-81920", "kp_objectives",
]


def test_report_takes_in_the_kp_figures_that_exist_and_names_the_missing(built: Path,
                                                                        runs_dir: Path) -> None:
    copied = built / "figures" / "kp_objectives.pdf"
    assert copied.read_bytes() == (runs_dir / "kp" / "objectives" / "objectives.pdf").read_bytes()
    page = (built / "report.md").read_text()
    assert "Implicit regularisation (Kumar & Poole 2020)" in page
    assert page.count("not made yet: run `rdbench kp jacobian RUNS_DIR`") == 2
    assert not (built / "figures" / "kp_jacobian_heatmaps.png").exists()


# ---------------------------------------------------------------- tables
def test_runs_table_has_two_rows_per_run_and_the_contract_columns(runs: pd.DataFrame) -> None:
    assert len(runs) == 2 * (N_RUNS + 1)
    broken = runs[runs["run_id"] == "zz-broken"]
    assert list(broken["status"]) == ["corrupt_config"] * 2 and broken["rate"].isna().all()
    runs = runs[runs["run_id"] != "zz-broken"]
    assert list(runs.columns[: len(tables.RUN_COLUMNS)]) == list(tables.RUN_COLUMNS)
    assert "block_size" in runs.columns and "dataset_size" not in runs.columns
    assert (runs.groupby("run_id")["set"].apply(sorted) == pd.Series(
        [["test", "train"]] * N_RUNS, index=sorted(runs["run_id"].unique()))).all()
    status = runs.drop_duplicates("run_id").set_index("run_id")["status"]
    assert status[FAILED] == "failed" and status[UNEVALUATED] == "not_evaluated"
    assert (status.drop([FAILED, UNEVALUATED]) == "done").all()
    assert runs.loc[runs["run_id"].isin([FAILED, UNEVALUATED]), "distortion"].isna().all()
    block = runs[runs["objective"] == "beta_vae_block"]
    assert (block["block_size"] == 2).all() and runs.loc[
        runs["objective"] != "beta_vae_block", "block_size"].isna().all()


def test_summary_equals_pandas_mean_and_std_over_seeds(runs_dir: Path,
                                                       runs: pd.DataFrame) -> None:
    summary = tables.summarise(runs)
    rows = []  # recomputed from the JSON files, not from runs.csv
    for metrics_file in runs_dir.glob("*/metrics.json"):
        cfg = json.loads((metrics_file.parent / "config.json").read_text())
        for set_name, values in json.loads(metrics_file.read_text()).items():
            if set_name in ("train", "test"):
                rows.append({"split": cfg["split"], "architecture": cfg["architecture"],
                             "objective": cfg["objective"], "beta": cfg["beta"],
                             "set": set_name, "seed": cfg["seed"], "rate": values["rate"],
                             "distortion": values["distortion"]})
    expected = pd.DataFrame(rows).groupby(["split", "architecture", "objective", "beta", "set"])
    got = summary.set_index(["split", "architecture", "objective", "beta", "set"])
    assert len(got) == expected.ngroups == 6 * len(BETAS) * 2
    for key, group in expected:
        row = got.loc[key]
        assert row["n_seeds"] == len(group)
        assert row["distortion_mean"] == pytest.approx(group["distortion"].mean())
        assert row["distortion_std"] == pytest.approx(group["distortion"].std())
        assert row["rate_mean"] == pytest.approx(group["rate"].mean(), nan_ok=True)
    assert got.loc[("cv-16384", "mlp1", "beta_vae", 0.1, "test"), "n_seeds"] == 2
    assert list(got.index.get_level_values("set")[:2]) == ["train", "test"]


def test_number_format() -> None:
    assert [tables.format_number(x) for x in (1834.27, 12.04, 9.6789, 0.012345, -0.5)] == [
        "1834.3", "12.0", "9.68", "0.0123", "-0.5"]
    assert tables.format_number(math.nan) == "–" and tables.format_number(math.inf) == "∞"


def test_markdown_and_latex_tables(runs: pd.DataFrame) -> None:
    summary = tables.summarise(runs)
    shown = tables.display_table(summary)
    md = tables.to_markdown(shown).splitlines()
    assert len(md) == 2 + len(summary) and md[0].startswith("| split | architecture")
    assert all(line.count("|") == md[0].count("|") for line in md)
    assert "±" in md[2] and "nan" not in "".join(md)
    tex = tables.to_latex(shown, caption="x", long_after=len(summary))
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert tex.count(r"\\") == 1 + len(summary) and r"\_" in tex
    long = tables.to_latex(shown, caption="x", long_after=len(summary) - 1)
    assert r"\begin{longtable}" in long and r"\endhead" in long
    assert long.count(r"\\") == 1 + 2 + len(summary)  # caption, header twice, rows
    # pdflatex without inputenc tricks: the report's caption and cells are plain ASCII
    ours = tables.to_latex(shown, caption=report._SUMMARY_NOTE)
    assert not {c for c in ours if ord(c) > 127} and r"$\geq$" in ours


# ---------------------------------------------------------------- report
def test_report_writes_tables_and_every_figure_as_png_and_pdf(built: Path) -> None:
    for name in ("runs.csv", "summary.csv", "summary.md", "summary.tex", "report.md",
                 "index.html"):
        assert (built / name).stat().st_size > 0, name
    assert len(pd.read_csv(built / "runs.csv")) == 2 * (N_RUNS + 1)
    assert len(pd.read_csv(built / "summary.csv")) == 6 * len(BETAS) * 2
    for name in EXPECTED_FIGURES:
        assert (built / "figures" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC, name
        assert (built / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name
    assert not list(built.parent.glob(".report.*")), "staging directory left behind"


def test_report_md_links_every_figure_and_the_summary(built: Path) -> None:
    md = (built / "report.md").read_text()
    for name in EXPECTED_FIGURES:
        assert f"](figures/{name}.png)" in md, name
    assert (built / "summary.md").read_text() in md
    assert f"{FAILED} (failed)" in md


def test_index_html_is_self_contained_and_embeds_every_figure(built: Path) -> None:
    page = (built / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|figures/)""", page)
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(EXPECTED_FIGURES)
    assert all(base64.b64decode(u)[:8] == PNG_MAGIC for u in uris)
    for name in EXPECTED_FIGURES:
        assert f'alt="{name}"' in page, name
    assert page.count("<tr>") == 1 + len(pd.read_csv(built / "summary.csv"))


# ---------------------------------------------------------------- skipped figures, bad input
def test_figures_without_inputs_are_skipped_with_a_reason(runs: pd.DataFrame,
                                                         tmp_path: Path) -> None:
    summary = tables.summarise(runs)
    one_split = summary[summary["split"] == "cv-81920"]
    results = [figures_rd.plot_rd_sizes(one_split, tmp_path / "a"),
               figures_rd.plot_rd_splits(one_split, tmp_path / "b"),
               figures_rd.plot_rd_mlp_vs_cnn(one_split, tmp_path / "c"),
               figures_rd.plot_rd_objectives(one_split, tmp_path / "d"),
               figures.plot_nn_distances({}, tmp_path / "e"),
               figures.plot_reconstructions(runs, "cv-16384", "mlp1", {}, None, None,
                                            tmp_path, tmp_path / "f")]
    assert all(isinstance(r, Skipped) and str(r).startswith("skipped: ") for r in results)
    assert not list(tmp_path.iterdir())


def test_cli_report_without_dataset_notes_the_skips(runs_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    few = tmp_path / "runs"
    for run in sorted(runs_dir.glob("cv-81920-mlp1-beta_vae-*")):
        shutil.copytree(run, few / run.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "_load_dataset", _raise_input_error)
        assert rdbench_main(["report", str(few)], packages=("analysis",)) == 0
    out = few / "report"
    assert str(out / "index.html") in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "rd_sizes: skipped: needs runs on at least two" in md
    assert "reconstructions_cv-81920_mlp1: skipped:" in md
    assert "Dataset figures skipped: dataset" in md
    assert (out / "figures" / "rd_cv-81920_mlp1.png").read_bytes()[:8] == PNG_MAGIC


def test_runs_differing_in_a_training_setting_are_not_pooled_as_restarts(
        tmp_path: Path) -> None:
    """Two grids in one runs directory, same seed, learning rates 1e-3 and 1e-4: two summary
    rows of one run each (a column for the setting), not one row of 'one seed' with a std."""
    rng = np.random.default_rng(0)
    cfg = {**_grid()[0], "iterations": 100, "batch_size": 128, "latent_dim": 10}
    for i, lr in enumerate((1e-3, 1e-4)):
        _write_run(tmp_path, {**cfg, "run_id": f"lr{i}", "learning_rate": lr}, "done", rng)
    runs = tables.collect_runs(tmp_path)
    assert "learning_rate" in runs.columns and "iterations" not in runs.columns  # constant
    summary = tables.summarise(runs)
    test = summary[summary["set"] == "test"].set_index("learning_rate")
    assert list(test["n_seeds"]) == [1, 1] and test["distortion_std"].isna().all()
    for i, lr in enumerate((1e-3, 1e-4)):
        metrics = json.loads((tmp_path / f"lr{i}" / "metrics.json").read_text())
        assert test.loc[lr, "distortion_mean"] == metrics["test"]["distortion"]


def _write_settings(run: Path, settings: dict | None) -> None:
    """Replace the estimator settings of a run's metrics.json (None: state none, as older
    files)."""
    path = run / "metrics.json"
    metrics = {k: v for k, v in json.loads(path.read_text()).items() if k != "settings"}
    path.write_text(json.dumps({**metrics, **({"settings": settings} if settings else {})}))


def _test_rows(runs_dir: Path) -> pd.DataFrame:
    return tables.summarise(tables.collect_runs(runs_dir)).query("set == 'test'")


def test_runs_evaluated_with_different_estimator_settings_are_not_pooled(
        tmp_path: Path) -> None:
    """Two seeds of one β evaluated with --iwae-subset 1000 and 100 (two runs directories
    merged, say): two summary rows of one seed each under an ``iwae_subset`` column (the
    settings that agree, and --batch-size, make none); a third seed whose metrics.json
    states no settings (an older file) is a row of its own; equal settings are pooled."""
    rng = np.random.default_rng(0)
    runs_dir, aside = tmp_path / "runs", tmp_path / "aside"
    recorded = {"iwae_samples": 1000, "iwae_subset": 1000, "mi_batch": 512, "max_examples": 0,
                "batch_size": 256}
    for seed in range(3):
        _write_run(runs_dir, {**_grid()[0], "run_id": f"s{seed}", "seed": seed}, "done", rng)
        _write_settings(runs_dir / f"s{seed}", recorded)
    _write_settings(runs_dir / "s1", {**recorded, "iwae_subset": 100, "batch_size": 64})
    shutil.move(runs_dir / "s2", aside)
    runs = tables.collect_runs(runs_dir)
    assert "iwae_subset" in runs.columns
    assert not {"iwae_samples", "mi_batch", "max_examples", "batch_size"} & set(runs.columns)
    test = _test_rows(runs_dir).set_index("iwae_subset")
    assert sorted(test.index) == ["100", "1000"]
    assert (test["n_seeds"] == 1).all() and test["distortion_std"].isna().all()
    for seed, subset in enumerate(["1000", "100"]):
        metrics = json.loads((runs_dir / f"s{seed}" / "metrics.json").read_text())
        assert test.loc[subset, "distortion_mean"] == metrics["test"]["distortion"]
    shutil.move(aside, runs_dir / "s2")
    _write_settings(runs_dir / "s2", None)
    assert list(_test_rows(runs_dir)["n_seeds"]) == [1, 1, 1]
    for seed in (1, 2):
        _write_settings(runs_dir / f"s{seed}", recorded)
    assert "iwae_subset" not in tables.collect_runs(runs_dir).columns
    assert list(_test_rows(runs_dir)["n_seeds"]) == [3]


def test_rd_curves_of_an_objective_that_only_has_options(runs: pd.DataFrame) -> None:
    """Only block-diagonal runs (every row has block_size): its curves are the main ones."""
    block = runs[runs["objective"] == "beta_vae_block"]
    summary = tables.summarise(block)
    main = figures_rd._main(summary)
    assert len(main) == len(summary) and (main["block_size"] == 2).all()


def test_beta_labels_do_not_collide_at_the_papers_betas() -> None:
    """A tick at every β, labels only where they are a span/8 apart: round values first."""
    from analysis.plot_style import labelled_betas

    paper = [0.001, 0.005, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1, 2, 3, 5]
    assert labelled_betas(paper) == {0.001, 0.01, 0.1, 0.3, 1, 3}
    assert labelled_betas([0.1, 0.3, 1, 3, 10]) == {0.1, 0.3, 1, 3, 10}  # the demo's: all


def test_run_files_of_the_wrong_shape_are_listed_not_fatal(tmp_path: Path) -> None:
    """Valid JSON of the wrong type in a run's files marks that run, and the report of the
    rest is built (one bad run does not cost the whole report)."""
    rng = np.random.default_rng(0)
    cfg = _grid()[0]
    bad = {"metrics": ("metrics.json", "[1, 2]", "corrupt_metrics"),
           "status": ("status.json", '["done"]', "corrupt_status"),
           "split": ("config.json", json.dumps({**cfg, "split": None}), "corrupt_config"),
           "beta": ("config.json", json.dumps({**cfg, "beta": "one"}), "corrupt_config")}
    _write_run(tmp_path, {**cfg, "run_id": "good"}, "done", rng)
    for name, (file, text, _) in bad.items():
        _write_run(tmp_path, {**cfg, "run_id": name}, "done", rng)
        (tmp_path / name / file).write_text(text)
    status = tables.collect_runs(tmp_path).drop_duplicates("run_id").set_index(
        "run_id")["status"]
    assert status.to_dict() == {"good": "done", **{k: v[2] for k, v in bad.items()}}
    out = report.build_report(tmp_path, tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "metrics (corrupt_metrics)" in text and "beta (corrupt_config)" in text


def test_a_dataset_other_than_the_runs_is_not_used_for_images(monkeypatch, tmp_path) -> None:
    """Reconstructions and neighbours would show other images: skipped with a note."""
    rng = np.random.default_rng(0)
    _write_run(tmp_path, {**_grid()[0], "dataset_fingerprint": "aaa"}, "done", rng)
    other = types.SimpleNamespace(images=_fake_images(), fingerprint="bbb")
    monkeypatch.setattr(report, "_load_dataset", lambda path: other)
    (view,) = report._dataset_views(tmp_path, pd.DataFrame())
    assert view.data is None and "fingerprint differs" in view.note
    monkeypatch.setattr(report, "_load_dataset",
                        lambda path: types.SimpleNamespace(images=other.images, fingerprint="aaa"))
    (view,) = report._dataset_views(tmp_path, pd.DataFrame())
    assert view.note is None and view.data.fingerprint == "aaa"


def _raise_input_error(path: str) -> None:
    raise InputError(f"not a dataset: {path}")


def test_bad_input_is_one_clear_error(runs_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(InputError, match="runs directory not found"):
        report.build_report(tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / "run0").mkdir(parents=True)
    (empty / "run0" / "config.json").write_text(json.dumps({"run_id": "run0", "beta": 1.0}))
    with pytest.raises(InputError, match="no evaluated runs"):
        report.build_report(empty)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        report.build_report(runs_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    assert rdbench_main(["report", str(tmp_path / "missing")], packages=("analysis",)) == 2
    assert capsys.readouterr().err.startswith("rdbench: error: runs directory not found")


def test_force_never_replaces_the_runs_or_a_user_directory(runs_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    before = sorted(p.name for p in runs_dir.iterdir())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for out, why in [(runs_dir, "is the input directory"),
                     (runs_dir.parent, "contains the input directory"),
                     (mine, "not written by rdbench")]:
        argv = ["report", str(runs_dir), "--out", str(out), "--force"]
        assert rdbench_main(argv, packages=("analysis",)) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1
    assert sorted(p.name for p in runs_dir.iterdir()) == before
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_report_is_marked_as_one_and_readable_by_others(built: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert output_kind(built) == "report"  # what lets `--force` replace it later
    for path in (built, built / "figures"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    for path in (built / "index.html", built / "figures" / "rd_sizes.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------- the page in a browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not on PATH")
def test_index_html_renders_in_headless_chromium(built: Path, tmp_path: Path) -> None:
    from PIL import Image

    script = Path(__file__).resolve().parents[1] / "scripts" / "check_html.sh"
    shot = tmp_path / "shot.png"
    subprocess.run(["bash", str(script), str(built / "index.html"), str(shot), "1280x1600"],
                   check=True, timeout=150, capture_output=True)
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        grey = np.asarray(image.convert("L"), dtype=float)
    assert grey.std() > 10, "blank screenshot"
    assert (grey < 128).mean() > 0.005, "no dark pixels: text and figures missing"


# ---------------------------------------------------------------- several datasets, variants
def _write_history(run: Path) -> None:
    rows = ["iteration,loss,distortion,rate"] + [f"{i},{90 - i / 10},{80 - i / 10},10"
                                                 for i in (10, 20)]
    (run / "history.csv").write_text("\n".join(rows) + "\n")


def _write_best(run: Path, best_iteration: int) -> None:
    """As training with a validation set and `evaluate --checkpoint best` leave a run."""
    (run / "status.json").write_text(json.dumps(
        {"status": "done", "iteration": 1000, "best_iteration": best_iteration,
         "stopped": None}))
    (run / "model_best.pt").write_bytes(b"")
    metrics = json.loads((run / "metrics.json").read_text())
    for set_name in ("train", "test"):
        metrics[set_name]["distortion"] *= 0.98
    (run / "metrics_best.json").write_text(json.dumps(metrics))


def _runs_on_datasets(root: Path, datasets: dict[str, str],
                      best_at: dict[tuple[str, str], int] | None = None) -> Path:
    """cv-16384 · mlp1 runs (β-VAE and GRAE, β 0.1 and 1, seeds 0 and 1) on each dataset
    path, with its fingerprint; ``best_at[(path, objective)]``: every such run's best
    validation iteration (with model_best.pt and metrics_best.json)."""
    rng = np.random.default_rng(0)
    for k, (path, fingerprint) in enumerate(datasets.items()):
        for objective in ("beta_vae", "grae"):
            for beta in (0.1, 1.0):
                for seed in (0, 1):
                    cfg = {**_grid()[0], "run_id": f"d{k}-{objective}-{beta:g}-{seed}",
                           "objective": objective, "beta": beta, "seed": seed,
                           "dataset": path, "dataset_fingerprint": fingerprint}
                    _write_run(root, cfg, "done", rng)
                    if best_at:
                        _write_best(root / cfg["run_id"], best_at[path, objective])
    return root


def _section(page: str, heading: str) -> str:
    """The text of a report.md section, up to the next heading of its level."""
    level = heading.split(" ")[0]
    after = page.split(heading + "\n", 1)[1]
    return re.split(rf"^{level} ", after, maxsplit=1, flags=re.M)[0]


def test_early_stopping_is_drawn_and_tabled_per_dataset(monkeypatch, tmp_path: Path) -> None:
    """Two datasets with validation sets and one split name (as configs/datasets.toml's
    cv-2048): a figure and a stopping table each, whose best iterations are that dataset's
    and objective's own, never averaged over datasets or objectives."""
    from analysis import curves

    paths = {"/nonexistent/one/dsa": "a" * 16, "/nonexistent/two/dsb": "b" * 16}
    best_at = {("/nonexistent/one/dsa", "beta_vae"): 100, ("/nonexistent/one/dsa", "grae"): 500,
               ("/nonexistent/two/dsb", "beta_vae"): 300, ("/nonexistent/two/dsb", "grae"): 700}
    runs_dir = _runs_on_datasets(tmp_path / "runs", paths, best_at)
    labels = {}

    def record(fig, stem: Path):
        labels[stem.name] = sorted({t.get_text() for ax in fig.axes for t in ax.texts})
        return []

    monkeypatch.setattr(report, "_load_dataset", _raise_input_error)
    monkeypatch.setattr(curves, "save", record)
    out = report.build_report(runs_dir, tmp_path / "report")
    assert labels == {"rd_early_stopping_cv-16384_mlp1_dsa": ["0.1 @100", "1 @100"],
                      "rd_early_stopping_cv-16384_mlp1_dsb": ["0.1 @300", "1 @300"]}
    early = _section((out / "report.md").read_text(), "## Early stopping (Bozkurt et al., "
                     "appendix)")
    for name, iterations in (("dsa", (100, 500)), ("dsb", (300, 700))):
        rows = [line.split(" | ") for line in _section(early, f"### Dataset {name}").splitlines()
                if line.startswith("| cv-16384")]
        assert sorted((r[2], r[4]) for r in rows) == [
            ("beta_vae", f"{iterations[0]} ± 0"), ("beta_vae", f"{iterations[0]} ± 0"),
            ("grae", f"{iterations[1]} ± 0"), ("grae", f"{iterations[1]} ± 0")]
    stopping = pd.read_csv(out / "stopping.csv")
    assert set(zip(stopping["dataset"], stopping["objective"], stopping["best_iteration"],
                   strict=True)) == {("dsa", "beta_vae", 100), ("dsa", "grae", 500),
                                     ("dsb", "beta_vae", 300), ("dsb", "grae", 700)}


def test_early_stopping_of_one_dataset_is_not_drawn_for_another(monkeypatch,
                                                               tmp_path: Path) -> None:
    """Only one dataset's runs have best checkpoints (the best table has no dataset column
    of its own): its early-stopping figure, none for the other dataset."""
    paths = {"/nonexistent/one/dsa": "a" * 16, "/nonexistent/two/dsb": "b" * 16}
    runs_dir = _runs_on_datasets(tmp_path / "runs", paths)
    for run in runs_dir.glob("d0-*"):
        _write_best(run, 100)
    monkeypatch.setattr(report, "_load_dataset", _raise_input_error)
    out = report.build_report(runs_dir, tmp_path / "report")
    assert sorted(p.name for p in (out / "figures").glob("rd_early_stopping_*.png")) == [
        "rd_early_stopping_cv-16384_mlp1_dsa.png"]


def test_datasets_sharing_a_directory_name_are_compared_across(monkeypatch,
                                                               tmp_path: Path) -> None:
    """Two datasets named tetrominoes (other parents, other fingerprints): labelled apart by
    their fingerprints, and Fig. 7 draws both."""
    paths = {"/nonexistent/one/tetrominoes": "a" * 16,
             "/nonexistent/two/tetrominoes": "b" * 16}
    runs_dir = _runs_on_datasets(tmp_path / "runs", paths)
    monkeypatch.setattr(report, "_load_dataset", _raise_input_error)
    out = report.build_report(runs_dir, tmp_path / "report")
    page = (out / "report.md").read_text()
    assert "## Dataset tetrominoes-aaaaaa" in page and "## Dataset tetrominoes-bbbbbb" in page
    assert (out / "figures" / "rd_datasets.png").read_bytes()[:8] == PNG_MAGIC


def test_training_curves_group_by_training_settings_only(tmp_path: Path) -> None:
    """Seeds of one β, one evaluated with other estimator settings and one not evaluated
    (an iwae_samples column in the runs table): one training-curve figure of all three."""
    rng = np.random.default_rng(0)
    recorded = {"iwae_samples": 1000, "iwae_subset": 1000, "mi_batch": 512, "max_examples": 0}
    for seed in range(3):
        cfg = {**_grid()[0], "run_id": f"s{seed}", "seed": seed, "_no_metrics": seed == 2}
        _write_run(tmp_path, cfg, "done", rng)
        _write_history(tmp_path / f"s{seed}")
    _write_settings(tmp_path / "s0", recorded)
    _write_settings(tmp_path / "s1", {**recorded, "iwae_samples": 100})
    runs = tables.collect_runs(tmp_path)
    assert "iwae_samples" in runs.columns
    from analysis.curves import collect_histories, curve_groups

    histories = collect_histories(runs, tmp_path)
    assert "iwae_samples" not in histories.columns
    (key, rows), = curve_groups(histories)
    assert key == ("cv-16384", "mlp1", "beta_vae") and sorted(rows["seed"].unique()) == [0, 1, 2]


def test_an_objectives_own_logged_values_are_not_curve_keys(tmp_path: Path) -> None:
    """GRAE logs log_det and taylor_distortion beside loss, D and R: values that differ at
    every row, which once made a figure of every row. Two seeds: one figure, both seeds."""
    rng = np.random.default_rng(0)
    for seed in range(2):
        cfg = {**_grid()[0], "run_id": f"g{seed}", "seed": seed, "objective": "grae"}
        _write_run(tmp_path, cfg, "done", rng)
        rows = ["iteration,loss,distortion,rate,log_det,taylor_distortion"] + [
            f"{i},{90 - i / 10},{80 - i / 10},10,{seed + i / 7},{70 - i / 9}" for i in (10, 20)]
        (tmp_path / f"g{seed}" / "history.csv").write_text("\n".join(rows) + "\n")
    from analysis.curves import collect_histories, curve_groups

    histories = collect_histories(tables.collect_runs(tmp_path), tmp_path)
    assert {"log_det", "taylor_distortion"} <= set(histories.columns)
    (key, rows), = curve_groups(histories)
    assert key == ("cv-16384", "mlp1", "grae") and sorted(rows["seed"].unique()) == [0, 1]
    assert len(rows) == 4


def test_reconstructions_are_of_the_variant_the_rd_curve_shows(tmp_path: Path) -> None:
    """Two latent sizes on one split and architecture (no plain variant): the RD figure
    draws the most common (latent 10: three β); the reconstructions are of its runs (seed 1),
    not of the lowest seed of any variant (seed 0, latent 20)."""
    rng = np.random.default_rng(0)
    for latent, betas, seed in ((10, (0.1, 1.0, 3.0), 1), (20, (0.1, 1.0), 0)):
        for beta in betas:
            _write_run(tmp_path, {**_grid()[0], "run_id": f"z{latent}-{beta:g}", "beta": beta,
                                  "seed": seed, "latent_dim": latent}, "done", rng)
    runs = tables.collect_runs(tmp_path)
    shown = figures_rd._main(tables.summarise(runs))
    assert set(shown["latent_dim"]) == {10}
    chosen = figures.reconstruction_runs(runs, "cv-16384", "mlp1")
    assert list(chosen["run_id"]) == ["z10-0.1", "z10-1", "z10-3"]
