"""Grid TOML validation and run expansion (SPEC §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.config import expand, load_grid, parse_devices, parse_grid, run_id
from rdbench.io import InputError


def _grid(dataset: Path, **overrides) -> dict:
    raw = {"name": "t", "dataset": str(dataset), "splits": ["random", "checkerboard"],
           "architectures": ["mlp1"], "betas": [0.5, 1.0], "seeds": [0, 1]}
    raw.update(overrides)
    return raw


def test_paper_and_demo_presets_parse():
    paper = load_grid("configs/paper.toml")
    assert len(paper.splits) == 19 and len(paper.betas) == 12 and len(paper.seeds) == 5
    assert paper.architectures == ("mlp1", "mlp3", "cnn1", "cnn3")
    assert paper.iterations == 257_000 and paper.batch_size == 128
    assert paper.learning_rate == 1e-3
    demo = load_grid("configs/demo.toml")
    assert demo.iterations < paper.iterations


@pytest.mark.parametrize(
    ("override", "message"),
    [({"bogus_key": 1}, "unknown key(s) bogus_key; valid keys: dataset"),
     ({"splits": ["nope"]}, "unknown split 'nope'"),
     ({"architectures": ["mlp2"]}, "unknown architecture 'mlp2'"),
     ({"objectives": ["vae"]}, "unknown objective 'vae'"),
     ({"betas": [1.0, 0.0]}, "every beta must be > 0"),
     ({"betas": [-1.0]}, "every beta must be > 0"),
     ({"betas": [float("nan")]}, "every beta must be > 0 and finite"),
     ({"betas": [float("inf")]}, "every beta must be > 0 and finite"),
     ({"betas": [1e300]}, "finite in float32"),  # inf as the trainer's float32 β
     ({"learning_rate": float("nan")}, "learning_rate must be > 0 and finite"),
     ({"name": "../../escape"}, "name must be letters, digits"),
     ({"checkpoint_every": 25, "log_every": 10}, "must be a multiple of log_every (10)"),
     ({"seeds": [0, 0]}, "duplicate"),
     ({"iterations": 0}, "iterations must be >= 1"),
     ({"learning_rate": "fast"}, "learning_rate must be float"),
     ({"device": "tpu"}, "invalid device"),
     ({"precision": "fp8"}, "precision must be one of")])
def test_bad_grid_is_one_clear_error(tmp_path, override, message):
    with pytest.raises(InputError, match=None) as err:
        parse_grid(_grid(tmp_path, **override))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_key(tmp_path):
    raw = _grid(tmp_path)
    del raw["betas"]
    with pytest.raises(InputError, match="missing required key"):
        parse_grid(raw)


def test_bad_toml_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = [unclosed")
    with pytest.raises(InputError, match="not valid TOML"):
        load_grid(path)
    with pytest.raises(InputError, match="not found"):
        load_grid(tmp_path / "absent.toml")
    with pytest.raises(InputError, match="is a directory"):
        load_grid(tmp_path)


def test_devices():
    assert parse_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert parse_devices("auto") == ["auto"]


def test_expand_is_the_full_product_with_stable_distinct_ids(tiny_dataset):
    import tetrominoes

    data = tetrominoes.load(tiny_dataset)
    grid = parse_grid(_grid(tiny_dataset, objectives=["beta_vae", "beta_vae_block"],
                            block_sizes=[1, 2]))
    runs = expand(grid, data)
    # splits × architectures × (beta_vae + 2 block sizes) × betas × seeds
    assert len(runs) == 2 * 1 * 3 * 2 * 2
    ids = [r["run_id"] for r in runs]
    assert len(set(ids)) == len(ids)
    assert ids == [r["run_id"] for r in expand(grid, data)]  # stable
    # settings that do not change the model do not change the id
    moved = dict(runs[0], dataset="/elsewhere", log_every=7, checkpoint_every=3)
    assert run_id(moved) == runs[0]["run_id"]
    assert run_id(dict(runs[0], beta=runs[0]["beta"] * 2)) != runs[0]["run_id"]
    for run in runs:
        assert run["n_train"] == len(data.split(run["split"]).train)


def test_batch_larger_than_a_training_set_is_rejected_before_training(tiny_dataset):
    import tetrominoes

    data = tetrominoes.load(tiny_dataset)
    n = len(data.split("cd-8192").train)  # 25 rows in the tiny dataset
    grid = parse_grid(_grid(tiny_dataset, splits=["random", "cd-8192"], batch_size=n + 1))
    with pytest.raises(InputError) as err:
        expand(grid, data)
    assert f"batch_size {n + 1} exceeds the training set of cd-8192 ({n})" in str(err.value)
    assert "random" not in str(err.value) and "\n" not in str(err.value)
    assert len(expand(parse_grid(_grid(tiny_dataset, splits=["cd-8192"], batch_size=n)),
                      data)) == 4
