"""Kumar & Poole analyses (analysis/kp/jacobian.py, objectives.py): known answers + CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from analysis.kp import common, jacobian, objectives
from benchmark.likelihoods import Bernoulli
from rdbench.io import InputError, atomic_write_json


def _spd(n: int, d: int, seed: int) -> torch.Tensor:
    M = torch.randn(n, d, d + 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return M @ M.transpose(1, 2) + 0.1 * torch.eye(d, dtype=torch.float64)


# --- scores (jacobian) ---------------------------------------------------------------------


def test_alignment_is_one_for_rescaled_copies_and_known_for_diagonal_vs_correlated():
    Q = _spd(5, 4, 0)
    scale = torch.diag_embed(torch.rand(5, 4, dtype=torch.float64) + 0.5)
    torch.testing.assert_close(jacobian.alignment(scale @ Q @ scale, Q),
                               torch.ones(5, dtype=torch.float64))
    r = 0.6  # cos(I, [[1, r], [r, 1]]) = 2 / (√2 · √(2 + 2r²)) = 1/√(1 + r²)
    C = torch.tensor([[2.0, r * 2.0], [r * 2.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(jacobian.alignment(torch.diag(torch.tensor([3.0, 0.5],
                               dtype=torch.float64)), C), torch.tensor(1 / (1 + r * r) ** 0.5,
                               dtype=torch.float64))
    assert (jacobian.alignment(_spd(20, 4, 1), _spd(20, 4, 2)) < 1 - 1e-6).all()


def test_leakage_counts_only_correlations_outside_the_blocks():
    Q = torch.eye(4, dtype=torch.float64)
    Q[0, 1] = Q[1, 0] = 0.5  # inside a 2-block
    assert jacobian.leakage(Q, 2) == 0
    Q[0, 2] = Q[2, 0] = 0.4  # outside: 2 of the 8 off-block entries are 0.4
    torch.testing.assert_close(jacobian.leakage(Q, 2), torch.tensor(2 * 0.16 / 8,
                                                                    dtype=torch.float64))
    torch.testing.assert_close(jacobian.leakage(Q, 1),
                               torch.tensor((2 * 0.25 + 2 * 0.16) / 12, dtype=torch.float64))


def test_kl_gap_is_gaussian_kl_and_zero_at_the_optimum():
    sigma, Q = _spd(6, 3, 3), _spd(6, 3, 4)
    zero = torch.zeros(6, 3, dtype=torch.float64)
    expected = kl_divergence(MultivariateNormal(zero, sigma),
                             MultivariateNormal(zero, torch.linalg.inv(Q)))
    torch.testing.assert_close(jacobian.kl_gap(sigma, Q), expected)
    torch.testing.assert_close(jacobian.kl_gap(torch.linalg.inv(Q), Q),
                               torch.zeros(6, dtype=torch.float64))


def test_run_scores_are_perfect_when_the_encoder_matches_eq_11():
    A = _spd(8, 4, 5)
    beta = 0.5
    Q = torch.eye(4, dtype=torch.float64) + A / beta
    L = torch.linalg.cholesky(torch.linalg.inv(Q))
    scores = jacobian.run_scores({"scale_tril": L, "A": A}, beta, 4)
    assert scores["alignment"] == pytest.approx(1.0)
    assert scores["log_diag_error"] == pytest.approx(0.0, abs=1e-9)
    assert scores["kl_gap"] == pytest.approx(0.0, abs=1e-9)


# --- objectives ----------------------------------------------------------------------------


def test_taylor_equals_grae_at_the_optimal_covariance_and_exceeds_it_elsewhere():
    d, n, beta = 3, 5, 0.7
    A = _spd(n, d, 6)
    mu = torch.randn(n, d, dtype=torch.float64)
    x = torch.rand(n, 7, dtype=torch.float64)
    logits = torch.randn(n, 7, dtype=torch.float64)
    opt = torch.linalg.cholesky(torch.linalg.inv(torch.eye(d, dtype=torch.float64) + A / beta))
    mc = torch.zeros(n, dtype=torch.float64)
    at_opt = objectives.objective_terms(x, {"mu": mu, "scale_tril": opt, "A": A,
                                            "logits": logits}, mc, beta, Bernoulli())
    torch.testing.assert_close(at_opt["taylor"], at_opt["grae"])
    other = objectives.objective_terms(x, {"mu": mu, "scale_tril": 0.5 * opt, "A": A,
                                           "logits": logits}, mc, beta, Bernoulli())
    assert (other["taylor"] > other["grae"] + 1e-9).all()


@pytest.mark.parametrize("std", [0.05, 1.0])
def test_gaussian_grae_is_below_taylor_by_the_closed_form_gap(std):
    """With a Gaussian decoder (their eq. 13): Taylor − GRAE = β·KL(N(0, Σ) ‖ N(0, Σ*)) with
    Σ* = (I + A/β)⁻¹, A = JᵀJ/σ² — zero at Σ*, positive anywhere else."""
    from benchmark.likelihoods import Gaussian

    d, n, beta = 3, 6, 0.4
    A = _spd(n, d, 9) / std**2
    mu = torch.randn(n, d, dtype=torch.float64)
    x, logits = torch.rand(n, 5, dtype=torch.float64), torch.randn(n, 5, dtype=torch.float64)
    Q = torch.eye(d, dtype=torch.float64) + A / beta
    for L in (torch.linalg.cholesky(torch.linalg.inv(Q)), 0.3 * torch.eye(d).double().expand(
            n, d, d)):
        terms = objectives.objective_terms(x, {"mu": mu, "scale_tril": L, "A": A,
                                               "logits": logits},
                                           torch.zeros(n, dtype=torch.float64), beta,
                                           Gaussian(std))
        gap = beta * jacobian.kl_gap(L @ L.mT, Q)
        torch.testing.assert_close(terms["taylor"] - terms["grae"], gap)
        assert (terms["grae"] <= terms["taylor"] + 1e-9).all()
    expected = -torch.distributions.Normal(torch.sigmoid(logits), std).log_prob(x).sum(1)
    torch.testing.assert_close(terms["distortion_mean"], expected)


def test_taylor_matches_monte_carlo_for_a_linear_decoder_at_small_variance():
    """Linear decoder: eq. 7's error is the BCE's 4th-order term (odd moments vanish), ≤ 1e-3
    here, while the curvature term ½ tr(AΣ) it adds to BCE(x, g(μ)) is > 0.01."""
    torch.manual_seed(0)
    dec = torch.nn.Linear(3, 6).double()

    class Model:
        likelihood = Bernoulli()

        def decode(self, z):
            return dec(z)

    x = torch.rand(4, 6, dtype=torch.float64)
    mu = torch.randn(4, 3, dtype=torch.float64)
    L = torch.diag_embed(torch.full((4, 3), 0.3, dtype=torch.float64))
    logits = dec(mu)
    p = torch.sigmoid(logits)
    A = torch.einsum("kd,bk,ke->bde", dec.weight, p * (1 - p), dec.weight)
    mc = objectives.mc_distortion(Model(), x, mu, L, 2000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        terms = objectives.objective_terms(x, {"mu": mu, "scale_tril": L, "A": A,
                                               "logits": logits}, mc, 1.0, Bernoulli())
    torch.testing.assert_close(terms["taylor"], terms["beta_vae"], atol=3e-3, rtol=0)
    assert (terms["trace_term"] > 0.01).all()


# --- end to end on fake runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def kp_runs(tmp_path_factory, tiny_dataset):
    """Finished (untrained-weight) runs: mean-field and block-diagonal β-VAEs, 2 β each."""
    import tetrominoes
    from benchmark.models import build_model
    from benchmark.objectives import get_objective

    runs_dir = tmp_path_factory.mktemp("kp_runs")
    fingerprint = tetrominoes.load(tiny_dataset).fingerprint
    specs = [("beta_vae", {}, 0.1), ("beta_vae", {}, 1.0),
             ("beta_vae_block", {"block_size": 2}, 0.1), ("beta_vae_block", {"block_size": 2}, 1.0),
             ("grae", {}, 1.0)]  # not a β-VAE: ignored
    for i, (name, options, beta) in enumerate(specs):
        run = runs_dir / f"run{i}"
        config = {"run_id": f"run{i}", "dataset": str(tiny_dataset), "split": "random",
                  "architecture": "mlp1", "objective": name, "objective_options": options,
                  "beta": beta, "seed": 0, "latent_dim": 10, "dataset_fingerprint": fingerprint}
        atomic_write_json(run / "config.json", config)
        atomic_write_json(run / "status.json", {"status": "done", "reason": None, "iteration": 1})
        torch.manual_seed(i)
        params = get_objective(name).posterior_params(10, options)
        torch.save(build_model("mlp1", posterior_params=params).state_dict(), run / "model.pt")
    return runs_dir


def _args(runs_dir, out, **kw) -> argparse.Namespace:
    return argparse.Namespace(**{"runs_dir": str(runs_dir), "out": str(out), "device": "cpu",
                                 "force": False, "examples": 6, "samples": 3, **kw})


def test_jacobian_cli_writes_tables_and_figures(kp_runs, tmp_path):
    out = tmp_path / "kp"
    assert jacobian.main(_args(kp_runs, out)) == 0
    table = pd.read_csv(out / "jacobian.csv")
    assert sorted(table.run_id) == ["run0", "run1", "run2", "run3"]
    assert set(table.block_size) == {1, 2} and (table.n == 6).all()
    assert table.alignment.between(0, 1).all() and (table.kl_gap >= 0).all()
    for stem in ("jacobian_heatmaps", "jacobian_alignment"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").exists()
    assert len(np.load(out / "jacobian_matrices.npz").files) == 8
    with pytest.raises(InputError, match="not empty"):
        jacobian.main(_args(kp_runs, out))


def test_objectives_cli_writes_tables_and_figure(kp_runs, tmp_path):
    out = tmp_path / "kp"
    assert objectives.main(_args(kp_runs, out)) == 0
    table = pd.read_csv(out / "objectives.csv")
    assert len(table) == 4 and (table.samples == 3).all()
    assert (table.grae <= table.taylor + 1e-6).all()  # GRAE = Taylor at its optimal Σ
    summary = pd.read_csv(out / "objectives_summary.csv")
    assert len(summary) == 4 and (summary.n_seeds == 1).all()
    assert (out / "objectives.png").exists() and (out / "objectives.pdf").exists()


def test_force_replaces_an_earlier_output_but_never_the_runs(kp_runs, tmp_path):
    out = tmp_path / "kp"
    assert objectives.main(_args(kp_runs, out, examples=2, samples=1)) == 0
    assert objectives.main(_args(kp_runs, out, examples=2, samples=1, force=True)) == 0
    before = sorted(p.name for p in kp_runs.rglob("*"))
    with pytest.raises(InputError, match="is the input directory"):
        objectives.main(_args(kp_runs, kp_runs, examples=2, samples=1, force=True))
    assert sorted(p.name for p in kp_runs.rglob("*")) == before


def test_analyses_refuse_runs_dir_without_vae_runs(tmp_path):
    atomic_write_json(tmp_path / "r" / "config.json", {"objective": "grae"})
    with pytest.raises(InputError, match="no finished"):
        common.finished_vae_runs(tmp_path)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["objective"] == "grae"


def test_missing_dataset_is_refused_before_any_output(tmp_path):
    run = tmp_path / "runs" / "r"
    atomic_write_json(run / "config.json", {
        "run_id": "r", "dataset": str(tmp_path / "nowhere"), "split": "random",
        "architecture": "mlp1", "objective": "beta_vae", "objective_options": {}, "beta": 1.0,
        "seed": 0, "latent_dim": 10})
    atomic_write_json(run / "status.json", {"status": "done", "reason": None, "iteration": 1})
    (run / "model.pt").write_bytes(b"")
    with pytest.raises(InputError):
        jacobian.main(_args(tmp_path / "runs", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# --- trust: damaged runs, the dataset verified as evaluate does ------------------------------


def _one_run(runs_dir, dataset, **changes) -> Path:
    """A finished mean-field β-VAE run (untrained weights) on ``dataset``."""
    import tetrominoes
    from benchmark.models import build_model

    run = runs_dir / "r"
    config = {"run_id": "r", "dataset": str(dataset), "split": "random", "architecture": "mlp1",
              "objective": "beta_vae", "objective_options": {}, "beta": 1.0, "seed": 0,
              "latent_dim": 10, "dataset_fingerprint": tetrominoes.load(dataset).fingerprint,
              **changes}
    atomic_write_json(run / "config.json", config)
    atomic_write_json(run / "status.json", {"status": "done", "reason": None, "iteration": 1})
    torch.save(build_model("mlp1").state_dict(), run / "model.pt")
    return run


@pytest.mark.parametrize("analysis", [objectives, jacobian])
@pytest.mark.parametrize("damage", [[1, 2], {"beta": "one"}, {"latent_dim": None},
                                    {"split": 3}, {"objective_options": []}])
def test_a_damaged_run_config_is_one_line_before_any_output(analysis, damage, tmp_path,
                                                            tiny_dataset):
    run = _one_run(tmp_path / "runs", tiny_dataset)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(damage if isinstance(damage, list)
                                                else {**config, **damage}))
    with pytest.raises(InputError, match="config.json is damaged"):
        analysis.main(_args(tmp_path / "runs", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("analysis", [objectives, jacobian])
def test_the_dataset_is_verified_and_must_be_the_runs(analysis, tmp_path, tiny_dataset):
    """Checksums (a changed factors.csv) and each run's dataset_fingerprint, as evaluate."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    other = _one_run(tmp_path / "other", data, dataset_fingerprint="0123456789abcdef")
    with pytest.raises(InputError, match="changed since training"):
        analysis.main(_args(other.parent, tmp_path / "out"))
    run = _one_run(tmp_path / "runs", data)
    with (data / "factors.csv").open("a") as f:
        f.write("\n")
    common._dataset.cache_clear()  # (cached per path within one process)
    with pytest.raises(InputError, match="damaged"):
        analysis.main(_args(run.parent, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_unreadable_model_is_one_line_before_any_output(tmp_path, tiny_dataset):
    run = _one_run(tmp_path / "runs", tiny_dataset)
    (run / "model.pt").write_bytes(b"not a model")
    with pytest.raises(InputError) as error:
        objectives.main(_args(tmp_path / "runs", tmp_path / "out"))
    assert "\n" not in str(error.value) and "weights_only" not in str(error.value)
    assert not (tmp_path / "out").exists()
