"""Grid TOML validation and run expansion (SPEC §4)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchmark.config import load_grid, parse_devices, parse_grid
from benchmark.grid import expand, run_id
from rdbench.io import InputError


def _grid(dataset: Path, **overrides) -> dict:
    raw = {"name": "t", "dataset": str(dataset), "splits": ["random", "checkerboard"],
           "architectures": ["mlp1"], "betas": [0.5, 1.0], "seeds": [0, 1]}
    raw.update(overrides)
    return raw


@pytest.mark.parametrize("preset", ["b21_cpu", "kp_mnist", "datasets", "demo", "paper"])
def test_every_preset_parses(preset):
    grid = load_grid(f"configs/{preset}.toml")
    assert grid.name == preset
    assert Path(f"configs/{preset}.toml").resolve().parent.name == "presets"  # shipped


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
     ({"architectures": ["mlp2"]}, "unknown architecture 'mlp2'"),
     ({"objectives": ["vae"]}, "unknown objective 'vae'"),
     ({"betas": [1.0, 0.0]}, "betas must be a number from 1.1754944e-38 to 3.4028235e+38"),
     ({"betas": [-1.0]}, "got -1.0"),
     ({"betas": [float("nan")]}, "got nan"),
     ({"betas": [float("inf")]}, "got inf"),
     ({"betas": [1e300]}, "got 1e+300"),  # inf as the trainer's float32 β
     ({"betas": [1e-45]}, "got 1e-45"),  # 0 in float32
     ({"betas": [1e-39]}, "a normal float32 number"),  # subnormal in float32
     ({"betas": [10**400]}, "got 1000000"),  # too large for a float: no OverflowError
     ({"learning_rate": float("nan")}, "learning_rate must be a number from 1.1754944e-38"),
     ({"learning_rate": 1e-40}, "got 1e-40"),
     ({"learning_rate": 10**400}, "learning_rate must be a number"),
     ({"name": "../../escape"}, "name must be letters, digits"),
     ({"name": "n" * 201}, "name is 201 characters long, at most 200"),
     ({"checkpoint_every": 25, "log_every": 10}, "must be a multiple of log_every (10)"),
     ({"seeds": [0, 0]}, "duplicate"),
     ({"seeds": [-1]}, "seeds must be an integer from 0 to 9,223,372,036,854,775,807"),
     ({"seeds": [2**63]}, "got 9223372036854775808"),
     ({"iterations": 0}, "iterations must be an integer from 1 to 9,223,372,036,854,775,807"),
     ({"iterations": 2**63}, "iterations must be an integer from 1"),
     ({"latent_dim": 10**9}, "latent_dim must be an integer from 1 to 4,096"),
     ({"latent_dim": 0}, "latent_dim must be an integer from 1 to 4,096"),
     ({"batch_size": 65_537}, "batch_size must be an integer from 1 to 65,536"),
     ({"max_group_size": 2**70}, "max_group_size must be an integer from 1 to 65,536"),
     ({"block_sizes": [0]}, "block_sizes must be an integer from 1 to 4,096"),
     ({"log_every": -5}, "log_every must be an integer from 1"),
     ({"learning_rate": "fast"}, "learning_rate must be float"),
     ({"device": "tpu"}, "invalid device"),
     ({"device": "mps"}, "invalid device 'mps'"),
     ({"device": "cuda,mps"}, "invalid device 'cuda,mps'"),
     ({"precision": "fp8"}, "precision must be one of"),
     ({"likelihood": "poisson"}, "unknown likelihood 'poisson'"),
     ({"likelihood": "gaussian"}, "needs decoder_std"),
     ({"decoder_std": 0.1}, "needs decoder_std"),
     ({"likelihood": "gaussian", "decoder_std": -1}, "decoder_std must be a number"),
     ({"likelihood": "gaussian", "decoder_std": "fixed"}, "or \"learned\""),
     ({"activation": "tanh"}, "unknown activation 'tanh'"),
     ({"activation": "elu", "architectures": ["pkg.mod:Net"]}, "built-in architectures"),
     ({"latent_dims": [8, 8]}, "duplicate"),
     ({"latent_dims": [8], "latent_dim": 4}, "not both"),
     ({"latent_dims": [0]}, "latent_dims must be an integer from 1"),
     ({"architecture_options": 3}, "must be a table"),
     ({"architecture_options": {"hidden": [1, 2]}}, "must be a number, a string"),
     ({"patience": 3}, "need a validation set"),
     ({"validation": 100, "validate_every": 15, "log_every": 10,
       "checkpoint_every": 30}, "multiple of log_every"),
     ({"validation": -1}, "validation must be an integer from 0"),
     ({"tensorboard": "yes"}, "tensorboard must be bool"),
     ({"datasets": ["a", "b"]}, "not both")])
def test_bad_grid_is_one_clear_error(tmp_path, override, message):
    with pytest.raises(InputError, match=None) as err:
        parse_grid(_grid(tmp_path, **override))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_float32_and_size_bounds_are_inclusive(tmp_path):
    """The extremes of every range are accepted: the smallest normal and the largest
    float32 β and learning rate, a 200-character name, the largest integers."""
    tiny, huge = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    grid = parse_grid(_grid(tmp_path, betas=[tiny, huge], learning_rate=tiny,
                            name="n" * 200, seeds=[2**63 - 1], latent_dim=4096,
                            batch_size=65_536, max_group_size=65_536, iterations=2**63 - 1))
    assert grid.betas == (tiny, huge) and grid.learning_rate == tiny
    below = float(np.nextafter(np.float32(tiny), np.float32(0)))  # the largest subnormal
    above = float(np.nextafter(huge, np.inf))  # the next float64 beyond float32's max
    for beta in (below, above):
        with pytest.raises(InputError, match="a normal float32 number"):
            parse_grid(_grid(tmp_path, betas=[beta]))


def test_an_absurd_latent_dim_is_refused_by_the_dry_run_before_any_model(
        tiny_dataset, tmp_path, capsys, monkeypatch):
    """--dry-run builds each model to count its FLOPs: latent_dim = 10**9 must stop first."""
    from benchmark import objectives
    from rdbench.cli import main

    monkeypatch.setattr(objectives, "build_objective_model", None)  # a call would crash
    grid = tmp_path / "g.toml"
    grid.write_text(f'dataset = "{tiny_dataset}"\nsplits = ["random"]\n'
                    'architectures = ["mlp1"]\nbetas = [1.0]\nlatent_dim = 1000000000\n')
    assert main(["train", str(grid), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "latent_dim must be an integer from 1 to 4,096" in err and err.count("\n") == 1


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


def _one_line_error(path: Path) -> str:
    with pytest.raises(InputError) as err:
        load_grid(path)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_unreadable_grid_files_are_one_line_and_never_block(tmp_path, monkeypatch):
    """A FIFO would block the read forever and a device never end: refused unopened."""
    fifo = tmp_path / "grid.toml"
    os.mkfifo(fifo)
    assert "not a regular file" in _one_line_error(fifo)  # returns: nothing opened it
    if Path("/dev/zero").exists():
        assert "not a regular file" in _one_line_error(Path("/dev/zero"))
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))  # é: byte 11
    assert "is not UTF-8 text (invalid continuation byte at byte 11)" in _one_line_error(latin)
    locked = tmp_path / "locked.toml"
    locked.write_text('name = "x"\n')
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: make the read fail as for anyone else
        def denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(Path, "read_bytes", denied)
    assert _one_line_error(locked) == f"cannot read config file {locked}: Permission denied"


def test_devices():
    assert parse_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert parse_devices("auto") == ["auto"]


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:127", "mps",
                                  "xla", "meta", "cuda:x", "gpu", "cuda:01",
                                  "cuda:2147483648"])
def test_a_grid_device_is_one_resolve_device_takes(name):
    """Every name the grid accepts, resolve_device takes (or refuses only for want of CUDA,
    which training checks later, on the machine that trains); the rest are refused when the
    grid is read."""
    from rdbench.device import resolve_device

    try:
        accepted = parse_devices(name) == [name]
    except InputError as e:
        accepted = False
        assert str(e).startswith(f"invalid device {name!r}")
    try:
        resolve_device(name)
        resolved = True
    except InputError as e:
        resolved = "CUDA is not available" in str(e) or "does not exist" in str(e)
    assert accepted == resolved


def test_train_refuses_an_unsupported_device_in_one_line_exit_2(tmp_path, capsys):
    """Before any dataset is opened (this one does not exist), from the file or --device."""
    from rdbench.cli import main

    path = tmp_path / "grid.toml"
    for device, extra in (("mps", []), ("cpu", ["--device", "mps"])):
        path.write_text('name = "t"\ndataset = "/nonexistent"\nsplits = ["random"]\n'
                        f'architectures = ["mlp1"]\nbetas = [1.0]\ndevice = "{device}"\n')
        assert main(["train", str(path), "--dry-run", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rdbench: error: invalid device 'mps'") and err.count("\n") == 1


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
