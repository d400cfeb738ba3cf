"""The one dataset format (SPEC §9): loading, verification that no manifest can switch off,
split rules with known answers, user splits, and datasets written by earlier versions."""

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import imagesets
from imagesets.importers import ImportOptions, import_dataset
from imagesets.splits import checkerboard, half_indices, query_split
from imagesets.writer import npz_bytes
from rdbench.cli import main
from rdbench.io import InputError, sha256_file

# a full grid of factors: a (4 values), b (3 values), c (categorical, 2), rep (5 copies)
GRID = pd.DataFrame(list(itertools.product(range(4), range(3), range(2), range(5))),
                    columns=["a", "b", "c", "rep"])


@pytest.fixture(scope="module")
def grid_dataset(tmp_path_factory):
    """120 random 6×5 grayscale images with the GRID factors (c categorical)."""
    d = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.integers(0, 256, (len(GRID), 6, 5), dtype=np.uint8))
    GRID.to_csv(d / "f.csv", index=False)
    return import_dataset("npy", d / "x.npy", d / "ds", options=ImportOptions(
        factors=d / "f.csv", categorical=("c",), progress=False))


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------- loading and verification
def test_an_imported_dataset_loads_with_its_shape_factors_and_splits(grid_dataset):
    data = imagesets.load_verified(grid_dataset)
    assert data.images.shape == (120, 6, 5, 1) and data.image_shape == (1, 6, 5)
    assert [(s.name, s.categorical) for s in data.factor_specs] == [
        ("a", False), ("b", False), ("c", True), ("rep", False)]
    assert data.split_names == ("random", "checkerboard")  # N/2 = 60 < 1,024: no cv-N
    pd.testing.assert_frame_equal(data.factors, GRID)
    x = imagesets.model_input(data.images[:2])
    assert x.shape == (2, 1, 6, 5) and float(x.max()) <= 1.0


def test_a_manifest_cannot_switch_verification_off(grid_dataset, tmp_path):
    for drop in ("images.npy", "factors.csv", "splits/random.npz"):
        copy = _copy(grid_dataset, tmp_path / drop.replace("/", "_"))
        _edit_manifest(copy, lambda m, drop=drop: m["files"].pop(drop))
        with pytest.raises(InputError, match=f"no checksum for {drop}"):
            imagesets.load(copy)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["images"].update(count="120"), "images.count"),
    (lambda m: m.pop("images"), "'images'"),
    (lambda m: m["images"].update(shape=[6, 5, 2]), "images.shape"),
    (lambda m: m.update(factors={"a": 1}), "'factors' must be a list"),
    (lambda m: m["splits"]["random"].update(train=-1), "splits.random.train"),
    (lambda m: m["files"].update({"../x": "0" * 64}), "outside the dataset"),
    (lambda m: m["files"].update({"images.npy": "abc"}), "not a sha256"),
    (lambda m: m.update(format_version=9), "format_version"),
    (lambda m: m.pop("kind"), "'kind'"),
])
def test_damaged_manifests_are_one_line(grid_dataset, tmp_path, capsys, edit, match):
    copy = _copy(grid_dataset, tmp_path)
    _edit_manifest(copy, edit)
    with pytest.raises(InputError, match=match):
        imagesets.load(copy)
    assert main(["data", "info", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("train, test, match", [
    ([0, 1, 1, 5], [7, 8], "sorted without duplicates"),
    ([5, 1], [7, 8], "sorted without duplicates"),
    ([0, 1, 7], [7, 8], "share rows"),
    ([0, 1], [7, 500], "outside"),
    ([], [7, 8], "empty"),
])
def test_bad_split_files_are_refused_even_with_a_matching_checksum(grid_dataset, tmp_path,
                                                                    train, test, match):
    copy = _copy(grid_dataset, tmp_path)
    blob = npz_bytes({"train": np.array(train, np.int64), "test": np.array(test, np.int64)})
    (copy / "splits" / "random.npz").write_bytes(blob)
    digest = sha256_file(copy / "splits" / "random.npz")
    _edit_manifest(copy, lambda m: (m["files"].update({"splits/random.npz": digest}),
                                    m["splits"]["random"].update(train=len(train),
                                                                 test=len(test))))
    data = imagesets.load_verified(copy)  # the checksum matches
    with pytest.raises(InputError, match=match):
        data.split("random")


def test_datasets_of_earlier_versions_keep_their_fingerprint_and_run_ids(tiny_dataset):
    """The tiny Tetrominoes dataset (seed 0) and a run on it have the ids they had before
    the format changed (values computed with rdbench 0.1.0 before imagesets existed)."""
    from benchmark.config import parse_grid
    from benchmark.grid import expand

    data = imagesets.load_verified(tiny_dataset)
    assert data.fingerprint == "85cc19424b0e7c6e"
    grid = parse_grid({"dataset": str(tiny_dataset), "splits": ["random"],
                       "architectures": ["mlp1"], "betas": [0.5, 2.0], "seeds": [0, 1],
                       "iterations": 20, "batch_size": 16, "log_every": 10,
                       "checkpoint_every": 10, "name": "pin"})
    assert expand(grid, data)[0]["run_id"] == "42923796628255d5"


# ---------------------------------------------------------------- split rules
def test_checkerboard_parity_on_discrete_factors(grid_dataset):
    """Halves: a ∈ {0,1} | {2,3} (midpoint 1.5), b ∈ {0} | {1,2} (midpoint 1: an odd count's
    middle value goes up), rep ∈ {0,1} | {2,3,4}; c is categorical and takes no part. Every
    test image has, for each non-categorical factor, training images that differ from it in
    that factor only."""
    data = imagesets.load(grid_dataset)
    train, test = data.split("checkerboard")
    h = half_indices(GRID, data.factor_specs)
    np.testing.assert_array_equal(h[:, 0], GRID["a"] >= 2)
    np.testing.assert_array_equal(h[:, 1], GRID["b"] >= 1)
    np.testing.assert_array_equal(h[:, 2], GRID["rep"] >= 2)
    assert h.shape[1] == 3  # c left out
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(120))
    rows = {tuple(r) for r in GRID.iloc[train].itertuples(index=False)}
    for row in GRID.iloc[test].itertuples(index=False):
        for f, values in (("a", range(4)), ("b", range(3)), ("rep", range(5))):
            others = [row._replace(**{f: v}) for v in values if v != getattr(row, f)]
            assert any(tuple(o) in rows for o in others), (row, f)
    assert checkerboard(GRID, data.factor_specs)[0].tolist() == train.tolist()


def test_cd_box_and_cv_sizes_on_a_continuous_grid(tmp_path):
    """Two continuous factors uniform on [0, 1)²: cd-N holds a fraction N/(n/2) of the area,
    so ≈ N train images; cv-N trains exactly N; cv-N sets are nested."""
    rng = np.random.default_rng(1)
    n = 8192
    np.save(tmp_path / "x.npy", np.zeros((n, 2, 2), np.uint8))
    pd.DataFrame({"u": rng.random(n), "v": rng.random(n)}).to_csv(tmp_path / "f.csv",
                                                                  index=False)
    data = imagesets.load(import_dataset("npy", tmp_path / "x.npy", tmp_path / "ds",
                                         options=ImportOptions(factors=tmp_path / "f.csv",
                                                               progress=False)))
    assert [s for s in data.split_names if s.startswith("cv")] == ["cv-1024", "cv-2048",
                                                                   "cv-4096"]
    assert len(data.split("cv-1024").train) == 1024
    assert set(data.split("cv-1024").train) <= set(data.split("cv-2048").train)
    assert len(data.split("cv-4096").train) == len(data.split("random").train) == 4096
    for size in (1024, 2048):
        train, test = data.split(f"cd-{size}")
        assert abs(len(train) - size) < 4 * np.sqrt(size) and abs(len(test) - size) < 4 * np.sqrt(
            size)
        box = data.split_info(f"cd-{size}")["box"]
        width = (box["u"][1] - box["u"][0]) * (box["v"][1] - box["v"][0])
        assert width == pytest.approx(size / 4096, rel=0.01)  # of the observed ranges


def test_a_query_split_equals_the_pandas_mask(grid_dataset):
    data = imagesets.load(grid_dataset)
    train, test = query_split(data.factors, "not (a == 3 and b > 0)")
    mask = ~((GRID["a"] == 3) & (GRID["b"] > 0))
    assert train.tolist() == np.flatnonzero(mask).tolist()
    assert test.tolist() == np.flatnonzero(~mask).tolist()


# ---------------------------------------------------------------- rdbench data split
def test_data_split_adds_a_verified_split_without_changing_the_fingerprint(grid_dataset,
                                                                          tmp_path):
    copy = _copy(grid_dataset, tmp_path)
    before = imagesets.load(copy).fingerprint
    assert main(["data", "split", str(copy), "held-a3", "--train", "a < 3",
                 "--test", "a == 3 and c == 1"]) == 0
    data = imagesets.load_verified(copy)
    assert data.fingerprint == before
    train, test = data.split("held-a3")
    assert train.tolist() == np.flatnonzero(GRID["a"] < 3).tolist()
    assert test.tolist() == np.flatnonzero((GRID["a"] == 3) & (GRID["c"] == 1)).tolist()
    assert data.split_info("held-a3")["rule"] == "user"
    np.savez(tmp_path / "rows.npz", train=np.array([3, 1, 2]), test=np.array([9, 8]))
    assert main(["data", "split", str(copy), "mine", "--from", str(tmp_path / "rows.npz")]) == 0
    assert imagesets.load_verified(copy).split("mine").train.tolist() == [1, 2, 3]
    assert main(["data", "split", str(copy), "mine", "--from", str(tmp_path / "rows.npz")]) == 2
    assert main(["data", "split", str(copy), "mine", "--force", "--train", "b == 0"]) == 0


@pytest.mark.parametrize("args, match", [
    (["--train", "a <"], "cannot be evaluated"),
    (["--train", "nosuch > 1"], "cannot be evaluated"),
    (["--train", "a + 1"], "true/false"),
    (["--train", "a > 9"], "train set is empty"),
    (["--train", "a < 2", "--test", "a < 3"], "share rows"),
    (["--from", "ROWS"], "outside"),
    (["--test", "a < 2"], "--test goes with --train"),
    ([], "give --train"),
])
def test_bad_user_splits_are_one_line_and_write_nothing(grid_dataset, tmp_path, capsys, args,
                                                        match):
    copy = _copy(grid_dataset, tmp_path)
    np.savez(tmp_path / "rows.npz", train=np.array([1, 2]), test=np.array([3, 120]))
    args = [str(tmp_path / "rows.npz") if a == "ROWS" else a for a in args]
    manifest = (copy / "manifest.json").read_bytes()
    assert main(["data", "split", str(copy), "bad", *args]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert (copy / "manifest.json").read_bytes() == manifest
    assert not (copy / "splits" / "bad.npz").exists()


def test_a_split_written_with_the_dataset_cannot_be_replaced(grid_dataset, tmp_path, capsys):
    copy = _copy(grid_dataset, tmp_path)
    assert main(["data", "split", str(copy), "random", "--force", "--train", "a < 2"]) == 2
    assert "written with" in capsys.readouterr().err


def test_import_refusals_before_anything_is_written(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.zeros((1, 4, 4), np.uint8))
    for args, match in [
        (["--from", str(tmp_path / "one.npy")], "at least 2"),
        (["--from", str(tmp_path / "one.npy"), "--download"], "not both"),
        (["--from", str(tmp_path / "nowhere.npy")], "does not exist"),
    ]:
        assert main(["data", "import", "npy", *args, "--out", str(tmp_path / "ds")]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
        assert not (tmp_path / "ds").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npy"]


def test_a_dataset_written_by_the_earlier_format_loads_unchanged(tiny_dataset, tmp_path):
    """A format-1 manifest (as rdbench 0.1.0 wrote it) is read as it is: the same
    fingerprint, factors with their declared ranges, the splits' rules and cd boxes."""
    from imagesets.splits import cd_box

    copy = _copy(tiny_dataset, tmp_path)
    new = json.loads((copy / "manifest.json").read_text())
    old = {"format_version": 1, "generator": "rdbench tetrominoes",
           "generator_version": "1.0.0", "rendering": new["rendering"], "seed": 0,
           "factors": ["angle", "hue", "scale", "x", "y"], "ranges": new["ranges"],
           "bins": new["bins"], "counts": {"images": 512, "image_shape": [32, 32, 3]},
           "splits": {k: {"train": v["train"], "test": v["test"]}
                      for k, v in new["splits"].items()},
           "files": new["files"]}
    (copy / "manifest.json").write_text(json.dumps(old))
    data = imagesets.load_verified(copy)
    assert data.fingerprint == "85cc19424b0e7c6e" and data.kind == "tetrominoes"
    assert [s.range for s in data.factor_specs] == [tuple(r) for r in new["ranges"].values()]
    assert data.split_info("cv-8192")["rule"] == "cv"
    box = data.split_info("cd-16384")["box"]
    ranges = {k: tuple(v) for k, v in new["ranges"].items()}
    assert box == {k: list(v) for k, v in cd_box(16384, 81920, ranges).items()}
    np.testing.assert_array_equal(data.split("checkerboard").train,
                                  imagesets.load(tiny_dataset).split("checkerboard").train)
