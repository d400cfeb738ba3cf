"""The user's own model class (SPEC §10): checked when the grid is read, trained in the
vectorised trainer, its source pinned for resumes."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from benchmark import runs as runs_io
from rdbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = '''
import math

import torch
from torch import nn


class TinyVAE(nn.Module):
    """A user's VAE: one hidden layer each way, width from [architecture_options]."""

    def __init__(self, image_shape, latent_dim, posterior_params, hidden=16):
        super().__init__()
        self.image_shape, self.latent_dim = tuple(image_shape), latent_dim
        n = math.prod(image_shape)
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ELU(),
                                 nn.Linear(hidden, latent_dim + posterior_params))
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, n))

    def encode(self, x):
        h = self.enc(x)
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def decode(self, z):
        return self.dec(z).view(-1, *self.image_shape)
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """``userpkg.models`` in a fresh directory on sys.path, imported afresh by every test (a
    test rewrites the file as a user would between two commands)."""
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))

    for name in ("userpkg", "userpkg.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield package
    for name in ("userpkg", "userpkg.models"):
        sys.modules.pop(name, None)


def _rewrite(package, source: str) -> None:
    """The user edits their model file (the next command imports it afresh)."""
    (package / "models.py").write_text(source)
    sys.modules.pop("userpkg.models", None)
    importlib.invalidate_caches()


def _grid(path, dataset, architecture="userpkg.models:TinyVAE", **extra) -> None:
    lines = [f'dataset = "{dataset}"', 'name = "user"', 'splits = ["random"]',
             f'architectures = ["{architecture}"]', "betas = [0.5, 2.0]", "seeds = [0, 1]",
             "iterations = 6", "batch_size = 16", "log_every = 2", "checkpoint_every = 2",
             'device = "cpu"', 'likelihood = "gaussian"', 'decoder_std = "learned"',
             *(f"{k} = {v}" for k, v in extra.items()), "[architecture_options]",
             "hidden = 8"]
    path.write_text("\n".join(lines) + "\n")


def test_a_user_model_is_trained_evaluated_and_reported(tiny_dataset, tmp_path,
                                                        user_package):
    _grid(tmp_path / "grid.toml", tiny_dataset)
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "runs")]) == 0
    assert main(["evaluate", str(tmp_path / "runs"), "--iwae-samples", "4", "--iwae-subset",
                 "8", "--nn-subset", "20", "--max-examples", "64"]) == 0
    assert main(["report", str(tmp_path / "runs")]) == 0
    summary = (tmp_path / "runs" / "report" / "summary.csv").read_text()
    assert "userpkg.models:TinyVAE" in summary
    figures = tmp_path / "runs" / "report" / "figures"
    assert (figures / "rd_random_userpkg.models_TinyVAE.png").is_file()
    assert (figures / "reconstructions_random_userpkg.models_TinyVAE.png").is_file()
    runs = runs_io.find_runs(tmp_path / "runs")
    assert len(runs) == 4
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        assert config["architecture"] == "userpkg.models:TinyVAE"
        assert config["architecture_options"] == {"hidden": 8}
        assert len(config["architecture_source_sha256"]) == 64
        assert runs_io.read_status(run)["status"] == "done"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["test"]["n"] == 64 and np.isfinite(metrics["test"]["log_px"])
        model = runs_io.load_model(run)
        assert model.net.enc[1].out_features == 8  # the user's class, with the grid's option
        assert model.likelihood.learned and float(model.likelihood.log_std.detach()) != 0.0


@pytest.mark.parametrize("source, match", [
    ("class TinyVAE:\n    pass\n", "no torch.nn.Module class TinyVAE"),
    ("import torch\nclass TinyVAE(torch.nn.Module):\n    def encode(self, x): pass\n",
     "has no decode() method"),
    (MODEL.replace("h[:, self.latent_dim:]", "h[:, :1]"), "encode(x)[1] (params) must be"),
    (MODEL.replace(".view(-1, *self.image_shape)", ""), "decode(z) must be a float tensor"),
    (MODEL.replace("hidden=16):", "hidden=16):\n        raise ValueError('no GPU here')"),
     "failed (ValueError: no GPU here)"),
    ("import nonexistent_dependency\n", "cannot import userpkg.models (ModuleNotFoundError"),
    (MODEL + "\n        self.step = nn.Parameter(torch.zeros(1, dtype=torch.long), "
     "requires_grad=False)\n", ""),
])
def test_a_broken_user_model_is_one_line_before_any_work(tiny_dataset, tmp_path, user_package,
                                                         capsys, source, match):
    if "self.step" in source:  # a non-float parameter, added in __init__
        source = MODEL.replace("        self.dec = ", "        self.step = nn.Parameter("
                               "torch.zeros(1, dtype=torch.long), requires_grad=False)\n"
                               "        self.dec = ")
        match = "parameter step is not floating point"
    _rewrite(user_package, source)
    _grid(tmp_path / "grid.toml", tiny_dataset)
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "runs"),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_resuming_after_the_source_changed_is_refused(tiny_dataset, tmp_path, user_package,
                                                      monkeypatch, capsys):
    _grid(tmp_path / "grid.toml", tiny_dataset)
    save = runs_io.save_checkpoint

    def save_then_die(run_dir, state, history, group=()):
        save(run_dir, state, history, group)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_io, "save_checkpoint", save_then_die)
    args = ["train", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "runs")]
    assert main(args) == 130
    monkeypatch.setattr(runs_io, "save_checkpoint", save)
    _rewrite(user_package, MODEL.replace("nn.ELU()", "nn.Tanh()"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "trained with another version of userpkg.models:TinyVAE" in err
    assert err.count("rdbench: error") == 1
    _rewrite(user_package, MODEL)  # restored: the grid resumes
    assert main(args) == 0


def test_grae_with_a_user_batchnorm_model_has_per_example_jacobians(tiny_dataset, tmp_path,
                                                                    user_package):
    """torch's own BatchNorm in a user's decoder: GRAE's forward-mode Jacobians run with the
    running statistics left alone (no in-place update inside torch.func.jvp)."""
    source = MODEL.replace("nn.Linear(latent_dim, hidden), nn.ELU()",
                           "nn.Linear(latent_dim, hidden), nn.BatchNorm1d(hidden), nn.ELU()")
    _rewrite(user_package, textwrap.dedent(source))
    _grid(tmp_path / "grid.toml", tiny_dataset, objectives='["grae"]')
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "runs")]) == 0
    for run in runs_io.find_runs(tmp_path / "runs"):
        assert runs_io.read_status(run)["status"] == "done"
        state = torch.load(run / "model.pt", weights_only=True)
        assert int(state["net.dec.1.num_batches_tracked"]) == 6  # one update per step
