"""Likelihoods (SPEC §10) against known answers, and BatchNorm models in stacked groups."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as dist

from benchmark import implicit, trainer
from benchmark.likelihoods import Bernoulli, Gaussian, build_likelihood
from benchmark.models import build_model
from benchmark.trainer import GroupSpec, train_group
from rdbench.io import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gaussian_nll_is_normal_log_prob_with_its_normaliser():
    g = torch.Generator().manual_seed(0)
    u, x = torch.randn(4, 1, 5, 5, generator=g), torch.rand(4, 1, 5, 5, generator=g)
    for std in (0.05, 1.0, 3.0):
        expected = -dist.Normal(torch.sigmoid(u), std).log_prob(x).flatten(1).sum(1)
        torch.testing.assert_close(Gaussian(std).nll(u, x), expected)
    # a small σ makes D negative: the density exceeds 1 at a near-perfect reconstruction
    assert (Gaussian(0.01).nll(torch.logit(x), x) < 0).all()


def test_bernoulli_nll_mean_and_curvature_known_answers():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(3, 7, generator=g) * 4
    x = (torch.rand(3, 7, generator=g) > 0.5).float()
    torch.testing.assert_close(Bernoulli().nll(u, x), -dist.Bernoulli(logits=u).log_prob(x).sum(1))
    p = torch.sigmoid(u)
    torch.testing.assert_close(Bernoulli().mean(u), p)
    torch.testing.assert_close(Bernoulli().curvature_sqrt(u) ** 2, p * (1 - p))


def test_gaussian_curvature_is_the_hessian_of_the_nll_in_the_mean():
    """H = I/σ² for the mean μ = σ(u): in u, (dμ/du)²/σ² (the Gauss–Newton term)."""
    std, u = 0.3, torch.randn(6, dtype=torch.float64)
    mu = torch.sigmoid(u)
    hess = torch.autograd.functional.hessian(
        lambda m: (0.5 * ((torch.rand(6, dtype=torch.float64) - m) / std) ** 2).sum(), mu)
    torch.testing.assert_close(torch.diagonal(hess), torch.full((6,), 1 / std**2,
                                                               dtype=torch.float64))
    torch.testing.assert_close(Gaussian(std).curvature_sqrt(u) ** 2,
                               (mu * (1 - mu)) ** 2 / std**2)


def test_learned_std_of_a_fixed_decoder_converges_to_the_rms_residual():
    """The ML σ of N(μ, σ²) with μ fixed is σ² = mean squared residual (closed form)."""
    g = torch.Generator().manual_seed(2)
    u, x = torch.randn(64, 30, generator=g), torch.rand(64, 30, generator=g)
    lik = Gaussian(None)
    opt = torch.optim.Adam(lik.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        lik.nll(u, x).mean().backward()
        opt.step()
    rms = (x - torch.sigmoid(u)).square().mean().sqrt()
    assert lik.std().item() == pytest.approx(rms.item(), rel=1e-3)


def test_likelihood_settings_are_checked():
    assert build_likelihood("gaussian", "learned").learned
    for kind, std, match in [("gaussian", None, "decoder_std"), ("gaussian", -1.0, "decoder_std"),
                             ("gaussian", "lots", "decoder_std"), ("bernoulli", 0.1, "only"),
                             ("poisson", None, "unknown likelihood")]:
        with pytest.raises(InputError, match=match):
            build_likelihood(kind, std)


@pytest.mark.parametrize("std", [0.1, "learned"])
def test_grae_eq13_log_det_matches_a_brute_force_jacobian(std):
    """A = JᵀJ/σ² with J = ∂μ/∂z the Jacobian of the decoder's MEAN (their eq. 13)."""
    torch.manual_seed(0)
    model = build_model("mlp1", image_shape=(1, 6, 6), latent_dim=3, posterior_params=0,
                        likelihood="gaussian", decoder_std=std, options={"hidden": 8}).double()
    z, beta = torch.randn(2, 3, dtype=torch.float64), 0.7
    _, A = implicit.gauss_newton(model, z)
    sigma = model.likelihood.std().double()
    for b in range(2):
        J = torch.autograd.functional.jacobian(
            lambda zz: torch.sigmoid(model.decode(zz[None])).flatten(), z[b])  # (36, 3)
        brute = J.T @ J / sigma**2
        torch.testing.assert_close(A[b], brute)
        expected = torch.logdet(torch.eye(3, dtype=torch.float64) + brute / beta)
        torch.testing.assert_close(implicit.log_det_regulariser(A[b], beta), expected)


TINY_KP = {"width": 0.05}


@pytest.mark.parametrize("loop", [True, False])  # the CPU loop path and the vmap path
def test_batchnorm_group_equals_its_members_trained_alone(loop, monkeypatch):
    """Each model of a stacked kp-mnist group normalises with its own batch statistics and
    keeps its own running statistics."""
    monkeypatch.setattr(trainer, "_uses_loop", lambda meta, device: loop)
    images = np.random.default_rng(0).integers(0, 256, (30, 12, 12, 1), dtype=np.uint8)

    def spec(betas, seeds):
        return GroupSpec("kp-mnist", "beta_vae", {}, tuple(betas), tuple(seeds), 6, 8, 1e-3,
                         log_every=3, checkpoint_every=3, latent_dim=4, image_shape=(1, 12, 12),
                         likelihood="gaussian", decoder_std="learned",
                         architecture_options=TINY_KP)

    betas, seeds = (0.5, 2.0), (4, 9)
    group = train_group(spec(betas, seeds), images, device="cpu", progress=False)
    for r, (b, s) in enumerate(zip(betas, seeds, strict=True)):
        solo = train_group(spec([b], [s]), images, device="cpu", progress=False)[0]
        for k, v in solo.model.items():
            torch.testing.assert_close(group[r].model[k], v, atol=2e-5, rtol=1e-4, msg=k)
    assert not torch.equal(group[0].model["decoder.1.running_mean"],
                           group[1].model["decoder.1.running_mean"])
    assert int(group[0].model["decoder.1.num_batches_tracked"]) == 6
    assert not math.isclose(group[0].model["likelihood.log_std"].item(), 0.0)  # σ learned
