"""Factors, generate, load, the CLI, figures: on tiny datasets (grid (4, 4, 2, 4, 4))."""

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

import tetrominoes
from rdbench.cli import main
from rdbench.io import MARKER, InputError
from tetrominoes.build import TINY_GRID, generate
from tetrominoes.factors import BINS, FACTOR_NAMES, RANGES, factor_bins, sample_factors

# --- factors ------------------------------------------------------------------------------


def test_one_sample_in_every_grid_cell():
    f = sample_factors(3)
    assert len(f) == 16 * 8 * 5 * 16 * 16 == 163_840 and list(f.columns) == list(FACTOR_NAMES)
    bins = factor_bins(f)
    cell = np.ravel_multi_index(bins.T, BINS)
    np.testing.assert_array_equal(cell, np.arange(163_840))  # each cell once, in grid order
    for name, (lo, hi) in RANGES.items():
        assert f[name].min() >= lo and f[name].max() < hi
    assert RANGES == {"angle": (0, 337.5), "hue": (0, 0.875), "scale": (2, 5), "x": (8, 23),
                      "y": (8, 23)}


def test_factors_are_uniform_within_cells_and_seeded():
    f = sample_factors(0)
    width = 337.5 / 16
    offset = (f["angle"].to_numpy() / width) % 1  # position inside its bin: U[0, 1)
    assert abs(offset.mean() - 0.5) < 0.01 and abs(offset.var() - 1 / 12) < 0.005
    assert sample_factors(0).equals(f) and not sample_factors(1).equals(f)


# --- generate / load ----------------------------------------------------------------------


def test_tiny_dataset_layout(tiny_dataset):
    names = {p.relative_to(tiny_dataset).as_posix() for p in tiny_dataset.rglob("*")
             if p.is_file()}
    expected = {"images.npy", "factors.csv", "manifest.json", "preview.png",
                *(f"splits/{s}.npz" for s in tetrominoes.SPLIT_NAMES)}
    assert names == {*expected, MARKER}  # the marker is outside the manifest (fingerprint)
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert set(manifest["files"]) == expected - {"manifest.json"}
    assert manifest["images"] == {"count": 512, "shape": [32, 32, 3]} and manifest["seed"] == 0
    assert manifest["kind"] == "tetrominoes" and manifest["format_version"] == 2
    assert [(f["name"], f["categorical"], f["range"]) for f in manifest["factors"]] == [
        (name, False, list(RANGES[name])) for name in FACTOR_NAMES]
    images = np.load(tiny_dataset / "images.npy", mmap_mode="r")
    assert images.shape == (512, 32, 32, 3) and images.dtype == np.uint8


def test_load_matches_render_and_splits(tiny_dataset):
    data = tetrominoes.load(tiny_dataset)
    assert isinstance(data.images, np.memmap) and len(data) == 512
    np.testing.assert_array_equal(data.images[:], tetrominoes.render(data.factors))
    assert data.factors.equals(sample_factors(0, TINY_GRID))  # CSV round-trips exactly
    for name in tetrominoes.SPLIT_NAMES:
        train, test = data.split(name)
        ref = tetrominoes.make_split(name, data.factors, seed=0)
        np.testing.assert_array_equal(train, ref[0])
        np.testing.assert_array_equal(test, ref[1])
        assert len(train) > 0 and len(test) > 0
        info = data.manifest["splits"][name]
        assert (info["train"], info["test"]) == (len(train), len(test))
        assert info["rule"] == name.split("-")[0]
    assert data.verify() == [] and len(data.fingerprint) == 16


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path, tiny_dataset):
    other = generate(tmp_path / "again", seed=0, workers=2, progress=False, _grid=TINY_GRID)
    for path in tiny_dataset.rglob("*"):
        if path.is_file():
            rel = path.relative_to(tiny_dataset)
            assert (other / rel).read_bytes() == path.read_bytes(), rel
    seed1 = generate(tmp_path / "seed1", seed=1, workers=1, progress=False, _grid=TINY_GRID)
    assert (seed1 / "images.npy").read_bytes() != (other / "images.npy").read_bytes()


def test_torch_dataset(tiny_dataset):
    ds = tetrominoes.TetrominoesDataset(tiny_dataset, "cv-16384", "train")
    data = ds.data
    assert len(ds) == 51
    image, factors = ds[3]
    row = ds.indices[3]
    assert image.shape == (3, 32, 32) and image.min() >= 0 and image.max() <= 1
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy() * 255, data.images[row], atol=1e-4)
    np.testing.assert_allclose(factors.numpy(), data.factors.iloc[row].to_numpy(), rtol=1e-6)
    assert len(tetrominoes.TetrominoesDataset(data, "random", "all")) == 512
    with pytest.raises(InputError, match="valid splits"):
        tetrominoes.TetrominoesDataset(data, "nope")


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    import tetrominoes.build as gen

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gen, "make_all_splits", broken)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "out", workers=1, progress=False, _grid=TINY_GRID)
    assert list(tmp_path.iterdir()) == []


# --- command line -------------------------------------------------------------------------


def test_cli_generate_force_and_refusal(tmp_path, capsys):
    out = tmp_path / "data"
    grid = ["--grid", "2", "2", "2", "2", "2"]
    assert main(["data", "generate", "--out", str(out), "--workers", "1", *grid]) == 0
    before = (out / "images.npy").read_bytes()
    # non-empty without --force: exit 2, nothing touched
    assert main(["data", "generate", "--out", str(out), "--seed", "5", *grid]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "images.npy").read_bytes() == before
    assert main(["data", "generate", "--out", str(out), "--seed", "5", "--force",
                 "--workers", "1", *grid]) == 0
    assert (out / "images.npy").read_bytes() != before
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5


GRID_2 = ["--workers", "1", "--grid", "2", "2", "2", "2", "2"]


def test_cli_generate_force_never_deletes_a_directory_that_is_not_a_dataset(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "generate", "--out", ".", "--force", *GRID_2]) == 2
    err = capsys.readouterr().err
    assert "not written by rdbench" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_generate_files_have_umask_modes(tmp_path):
    before = os.umask(0o022)
    try:
        assert main(["data", "generate", "--out", str(tmp_path / "d"), *GRID_2]) == 0
    finally:
        os.umask(before)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "d", *(tmp_path / "d").rglob("*")]
             if p.is_file()}
    dirs = {stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "d", tmp_path / "d" / "splits"]}
    assert (modes, dirs) == ({0o644}, {0o755})


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_cli_generate_uncreatable_out_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)  # what root is told
    assert main(["data", "generate", "--out", "/proc/nope/x", *GRID_2]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rdbench: error: cannot create output directory") and \
        err.count("\n") == 1


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--workers", "0"]])
def test_cli_generate_bad_arguments(tmp_path, args):
    assert main(["data", "generate", "--out", str(tmp_path / "d"), *args]) == 2
    assert not (tmp_path / "d").exists()


def test_cli_generate_unwritable_path(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert main(["data", "generate", "--out", str(blocker / "sub")]) == 2
    assert main(["data", "generate", "--out", str(blocker)]) == 2
    assert blocker.read_text() == "mine"
    assert capsys.readouterr().err.count("rdbench: error:") == 2


def test_cli_info_reports_damage(tiny_dataset, tmp_path, capsys):
    assert main(["data", "info", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "checksums   ok" in out and "cd-8192" in out and "512" in out
    copy = shutil.copytree(tiny_dataset, tmp_path / "copy")
    raw = bytearray((copy / "factors.csv").read_bytes())
    raw[-3] = ord("7") if raw[-3] != ord("7") else ord("3")  # a flipped digit, same shape
    (copy / "factors.csv").write_bytes(bytes(raw))
    assert main(["data", "info", str(copy)]) == 2
    captured = capsys.readouterr()
    assert "checksums   FAILED (1 problem(s))" in captured.out
    assert "checksum mismatch: factors.csv" in captured.err and captured.err.count("\n") == 1
    with open(copy / "images.npy", "r+b") as f:
        f.truncate(1000)
    assert main(["data", "info", str(copy)]) == 2
    assert "truncated" in capsys.readouterr().err


@pytest.mark.parametrize("victim", ["manifest.json", "images.npy", "factors.csv"])
def test_load_missing_or_garbage_files(tiny_dataset, tmp_path, victim):
    copy = shutil.copytree(tiny_dataset, tmp_path / "copy")
    (copy / victim).write_bytes(b"garbage")
    with pytest.raises(InputError):
        tetrominoes.load(copy)
    (copy / victim).unlink()
    with pytest.raises(InputError):
        tetrominoes.load(copy)


def test_missing_dataset_and_broken_split(tmp_path, tiny_dataset, capsys):
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2
    copy = shutil.copytree(tiny_dataset, tmp_path / "copy")
    (copy / "splits" / "random.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="corrupt split"):
        tetrominoes.load(copy).split("random")


def test_cli_show(tiny_dataset, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "fig.png"
    base = ["data", "show", str(tiny_dataset), "--out", str(out)]
    assert main([*base, "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown split 'nope'" in err and "checkerboard" in err and not out.exists()
    assert main([*base, "--split", "checkerboard", "--factors", "x", "x"]) == 2
    assert not out.exists()
    assert main([*base, "--split", "checkerboard", "--factors", "angle", "hue"]) == 0
    assert Image.open(out).size[0] > 500
    assert main([*base, "--split", "checkerboard"]) == 2  # exists, no --force


def test_figures_functions(tiny_dataset, tmp_path):
    from tetrominoes.figures import plot_samples, plot_split

    data = tetrominoes.load(tiny_dataset)
    assert plot_samples(data, tmp_path / "s.pdf").read_bytes()[:4] == b"%PDF"
    path = plot_split(data, ["random", "checkerboard", "cd-16384", "cv-16384"],
                      tmp_path / "split.png", factors=("x", "y"), n=600, seed=0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
