"""Grids expanded into runs (SPEC §4, §10, §11): axes, ids that hold for old grids, and the
checks that need the datasets — all before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

import imagesets
from benchmark.config import parse_grid
from benchmark.grid import expand, run_id
from rdbench.cli import main
from rdbench.io import InputError


def _grid(dataset, **overrides) -> dict:
    raw = {"name": "g", "dataset": str(dataset), "splits": ["random"],
           "architectures": ["mlp1"], "betas": [0.5, 1.0], "seeds": [0], "iterations": 4,
           "batch_size": 8, "log_every": 2, "checkpoint_every": 4}
    raw.update(overrides)
    return raw


def _toml(grid: dict) -> str:
    """A grid as TOML: scalars and lists first, then tables with inline sub-tables."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in grid.items() if not isinstance(v, dict)]
    for k, v in grid.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *(f"{a} = {value(b)}" for a, b in v.items())]
    return "\n".join(lines) + "\n"


def _runs(dataset, **overrides) -> list[dict]:
    return expand(parse_grid(_grid(dataset, **overrides)), imagesets.load(dataset))


def test_axes_multiply_and_gaussian_std_only_with_the_gaussian(tiny_dataset):
    runs = _runs(tiny_dataset, latent_dims=[4, 8], likelihood=["bernoulli", "gaussian"],
                 decoder_std=[0.1, "learned"], activation=["relu", "elu"])
    # 2 β × 2 latent sizes × (1 Bernoulli + 2 Gaussian σ) × 2 activations
    assert len(runs) == 2 * 2 * 3 * 2
    assert {(r["likelihood"], r["decoder_std"]) for r in runs} == {
        ("bernoulli", None), ("gaussian", 0.1), ("gaussian", "learned")}
    assert {r["activation"] for r in runs} == {None, "elu"}  # relu is mlp1's own: None
    assert len({r["run_id"] for r in runs}) == len(runs)
    assert {tuple(r["image_shape"]) for r in runs} == {(3, 32, 32)}


def test_defaults_named_explicitly_keep_the_run_ids_of_older_grids(tiny_dataset):
    plain = _runs(tiny_dataset)
    named = _runs(tiny_dataset, latent_dims=[10], likelihood="bernoulli", activation="relu",
                  architecture_options={"hidden": 512})
    assert [r["run_id"] for r in plain] == [r["run_id"] for r in named]
    other = _runs(tiny_dataset, architecture_options={"hidden": 64})
    assert other[0]["architecture_options"] == {"hidden": 64}
    assert other[0]["run_id"] != plain[0]["run_id"]
    assert run_id({**plain[0], "validation": 0, "patience": None}) == plain[0]["run_id"]


def test_architecture_options_per_architecture(tiny_dataset):
    runs = _runs(tiny_dataset, architectures=["mlp1", "cnn1"],
                 architecture_options={"mlp1": {"hidden": 16}, "cnn1": {"channels": 4}})
    assert {r["architecture"]: r["architecture_options"]["hidden" if r["architecture"] ==
            "mlp1" else "channels"] for r in runs} == {"mlp1": 16, "cnn1": 4}
    with pytest.raises(InputError, match="has no option 'hidden'"):
        _runs(tiny_dataset, architectures=["cnn1"], architecture_options={"hidden": 16})


def test_validation_shrinks_the_training_set_and_enters_the_id(tiny_dataset):
    plain = _runs(tiny_dataset)
    held = _runs(tiny_dataset, validation=56, patience=2)
    assert held[0]["n_train"] == plain[0]["n_train"] - 56 == 200
    assert held[0]["validate_every"] == 2 and held[0]["run_id"] != plain[0]["run_id"]
    with pytest.raises(InputError, match="holds out all"):
        _runs(tiny_dataset, validation=256)
    with pytest.raises(InputError, match="exceeds the training set"):
        _runs(tiny_dataset, validation=250)


@pytest.mark.parametrize("overrides, match", [
    ({"splits": ["nope"]}, "unknown split 'nope'"),
    ({"architecture_options": {"mlp1": {"depth": 2}}}, "has no option 'depth'"),
    ({"architectures": ["no_such_module:Net"]}, "cannot import no_such_module"),
    ({"architectures": ["json:JSONDecoder"]}, "no torch.nn.Module class JSONDecoder"),
])
def test_models_and_splits_are_checked_against_the_datasets(tiny_dataset, tmp_path, capsys,
                                                          overrides, match):
    (tmp_path / "grid.toml").write_text(_toml(_grid(tiny_dataset, **overrides)))
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "runs"),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_user_split_made_again_with_other_rows_gets_new_run_ids(tiny_dataset, tmp_path):
    import shutil

    data_dir = shutil.copytree(tiny_dataset, tmp_path / "data")
    assert main(["data", "split", str(data_dir), "mine", "--train", "x < 15"]) == 0
    first = _runs(data_dir, splits=["mine"])
    assert first[0]["split_sha256"] is not None
    assert main(["data", "split", str(data_dir), "mine", "--force", "--train", "x < 14"]) == 0
    again = _runs(data_dir, splits=["mine"])
    assert first[0]["run_id"] != again[0]["run_id"]
    assert _runs(data_dir)[0]["run_id"] == _runs(tiny_dataset)[0]["run_id"]  # others unchanged


def test_several_datasets_in_one_grid(tiny_dataset, tmp_path):
    from imagesets.importers import ImportOptions, import_dataset

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (40, 6, 6),
                                                                   dtype=np.uint8))
    other = import_dataset("npy", tmp_path / "x.npy", tmp_path / "ds",
                           options=ImportOptions(progress=False))
    raw = {k: v for k, v in _grid(tiny_dataset).items() if k != "dataset"}
    grid = parse_grid({**raw, "datasets": [str(tiny_dataset), str(other)]})
    runs = expand(grid, {str(tiny_dataset): imagesets.load(tiny_dataset),
                         str(other): imagesets.load(other)})
    assert {(r["dataset_kind"], tuple(r["image_shape"])) for r in runs} == {
        ("tetrominoes", (3, 32, 32)), ("npy", (1, 6, 6))}


def test_block_sizes_run_only_where_they_divide_the_latent_size(tiny_dataset):
    """Kumar & Poole's MNIST setting: latent sizes 8/12/16/20 with blocks of 1, 2 and 3; a
    block of 3 divides only 12."""
    runs = _runs(tiny_dataset, objectives=["beta_vae_block"], block_sizes=[1, 2, 3],
                 latent_dims=[8, 12, 16, 20], betas=[1.0])
    pairs = sorted((r["latent_dim"], r["objective_options"]["block_size"]) for r in runs)
    assert pairs == [(8, 1), (8, 2), (12, 1), (12, 2), (12, 3), (16, 1), (16, 2), (20, 1),
                     (20, 2)]
    with pytest.raises(InputError, match="block size 3 divides none"):
        parse_grid(_grid(tiny_dataset, objectives=["beta_vae_block"], block_sizes=[3],
                         latent_dims=[8, 16]))
