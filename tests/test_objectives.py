"""beta_vae against torch.distributions on a fixed batch; the merged registry."""

import pytest
import torch
from torch import distributions as dist

from benchmark import objectives
from benchmark.likelihoods import Bernoulli
from benchmark.models import build_model
from benchmark.objectives import (
    gaussian_kl,
    get_objective,
    objective_names,
    reparameterise,
)
from rdbench.io import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


class _Fixed(torch.nn.Module):
    """A 'model' with known encoder outputs and a decoder we can recompute by hand."""

    def __init__(self, mu, logvar):
        super().__init__()
        self.mu, self.logvar = mu, logvar
        self.w = torch.randn(mu.shape[1], 3 * 32 * 32, generator=torch.Generator().manual_seed(1))
        self.likelihood = Bernoulli()

    def encode(self, x):
        return self.mu, self.logvar

    def decode(self, z):
        return (z @ self.w).view(-1, 3, 32, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beta_vae_equals_definitions(dtype):
    """In float64 the loss stays float64 (only autocast's half precision is upcast)."""
    g = torch.Generator().manual_seed(0)
    B, d, beta = 4, 10, 0.3
    x = torch.rand(B, 3, 32, 32, generator=g, dtype=dtype)
    mu, logvar = (torch.randn(B, d, generator=g, dtype=dtype) for _ in range(2))
    eps = torch.randn(B, d, generator=g, dtype=dtype)
    model = _Fixed(mu, logvar)
    model.w = model.w.to(dtype)
    out = get_objective("beta_vae").loss(
        model, x, torch.tensor(beta), {"eps": eps, "u": torch.rand(B)}, {}
    )
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = model.decode(z)
    # continuous-Bernoulli-free BCE: -[x log σ + (1 - x) log(1 - σ)], the log_prob formula
    expected_d = (
        -(
            x * torch.nn.functional.logsigmoid(logits)
            + (1 - x) * torch.nn.functional.logsigmoid(-logits)
        )
        .flatten(1)
        .sum(1)
    )
    q = dist.Normal(mu, torch.exp(0.5 * logvar))
    p = dist.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected_r = dist.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(out["distortion"], expected_d)
    torch.testing.assert_close(out["rate"], expected_r)
    torch.testing.assert_close(out["loss"], expected_d + beta * expected_r)
    assert {v.dtype for v in out.values()} == {dtype}


def test_distortion_matches_bernoulli_log_prob_on_binary_data():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 3, 32, 32, generator=g) * 3
    x = (torch.rand(3, 3, 32, 32, generator=g) > 0.5).float()
    expected = -dist.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().nll(logits, x), expected)


def test_kl_known_answers():
    assert gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)).tolist() == [0.0, 0.0]
    # ½(μ² + σ² − 1 − log σ²) with μ = 2, σ² = e: ½(4 + e − 1 − 1)
    value = gaussian_kl(torch.tensor([[2.0]]), torch.tensor([[1.0]])).item()
    assert value == pytest.approx(0.5 * (4 + torch.e - 2))


def test_reparameterise_scale():
    z = reparameterise(torch.ones(1, 2), torch.ones(1, 2), torch.log(torch.tensor([[4.0, 9.0]])))
    assert z.tolist() == [[3.0, 4.0]]


def test_gradients_flow_through_real_model():
    model = build_model("cnn1")
    x = torch.rand(2, 3, 32, 32)
    out = objectives.beta_vae.loss(
        model, x, torch.tensor(1.0), {"eps": torch.randn(2, 10), "u": torch.rand(2)}, {}
    )
    out["loss"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert objectives.beta_vae.posterior_params(10, {}) == 10


def test_registry_merges_teammates_objectives():
    from benchmark import ablations, implicit

    names = objective_names()
    assert "beta_vae" in names
    assert set(ablations.OBJECTIVES) <= set(names) and set(implicit.OBJECTIVES) <= set(names)
    assert objectives.OBJECTIVES.keys() == set(names)
    for name in names:
        assert get_objective(name).name == name


def test_unknown_objective_is_input_error():
    with pytest.raises(InputError, match="beta_vae"):
        get_objective("vqvae")
