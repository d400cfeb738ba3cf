"""The no_mi / no_marginal_kl ablations against their definitions, written out by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional

from benchmark.models import build_model
from benchmark.objectives import get_objective
from rdbench.io import InputError

B, D_LAT, N_TRAIN = 6, 10, 1000


def _batch(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    torch.manual_seed(seed)
    model = build_model("mlp1").double()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, 32, 32, generator=g, dtype=torch.float64)
    noise = {"eps": torch.randn(B, D_LAT, generator=g, dtype=torch.float64),
             "u": torch.rand(B, generator=g, dtype=torch.float64)}
    return model, x, noise


def _log_normal(z: list, mu: list, var: list) -> float:
    terms = zip(z, mu, var, strict=True)
    return sum(-0.5 * ((a - m) ** 2 / v + math.log(2 * math.pi * v)) for a, m, v in terms)


def _by_hand(model, x, noise, N: int) -> dict[str, list[float]]:
    """Double loop in float64 Python floats: D, KL, Îᵢ, KL̂ᵢ of SPEC §3/§5."""
    with torch.no_grad():
        h = model.encoder(x)  # (B, 2d): mean, then log-variance
        mu, var = h[:, :D_LAT], h[:, D_LAT:].exp()
        z = mu + var.sqrt() * noise["eps"]
        logits = model.decoder(z)
        distortion = functional.binary_cross_entropy_with_logits(
            logits, x, reduction="none").flatten(1).sum(1).tolist()
    mu, var, z = mu.tolist(), var.tolist(), z.tolist()
    out = {"distortion": distortion, "rate": [], "mutual_information": [], "marginal_kl": []}
    for i in range(B):
        q = 0.0
        for j in range(B):
            w = 1 / N if i == j else (N - 1) / (N * (B - 1))
            q += w * math.exp(_log_normal(z[i], mu[j], var[j]))
        own = _log_normal(z[i], mu[i], var[i])
        prior = _log_normal(z[i], [0.0] * D_LAT, [1.0] * D_LAT)
        out["mutual_information"].append(own - math.log(q))
        out["marginal_kl"].append(math.log(q) - prior)
        pairs = zip(mu[i], var[i], strict=True)
        out["rate"].append(0.5 * sum(m * m + v - 1 - math.log(v) for m, v in pairs))
    return out


@pytest.mark.parametrize(("name", "kept"), [("no_mi", "marginal_kl"),
                                            ("no_marginal_kl", "mutual_information")])
def test_ablation_loss_equals_its_definition(name: str, kept: str) -> None:
    model, x, noise = _batch()
    beta = torch.tensor(0.7, dtype=torch.float64)
    got = get_objective(name).loss(model, x, beta, noise, {"dataset_size": N_TRAIN})
    ref = _by_hand(model, x, noise, N_TRAIN)
    for key in ("distortion", "rate", "mutual_information", "marginal_kl"):
        assert torch.allclose(got[key], torch.tensor(ref[key], dtype=torch.float64),
                              atol=1e-8, rtol=1e-10), key
    loss = [d + 0.7 * k for d, k in zip(ref["distortion"], ref[kept], strict=True)]
    assert torch.allclose(got["loss"], torch.tensor(loss, dtype=torch.float64), atol=1e-8)


class _Bound(torch.nn.Module):
    """objective(model, fixed batch) as a module, so functional_call can swap the weights."""

    def __init__(self, model, objective, x, noise):
        super().__init__()
        self.model, self.objective, self.x, self.noise = model, objective, x, noise

    def forward(self, beta):
        out = self.objective.loss(self.model, self.x, beta, self.noise, {"dataset_size": N_TRAIN})
        return out["loss"].mean()


def test_ablation_is_differentiable_and_vmaps_over_an_ensemble() -> None:
    models = [_batch(seed)[0] for seed in (1, 2)]
    _, x, noise = _batch(3)
    objective = get_objective("no_marginal_kl")
    params, _ = stack_module_state(models)  # (2, ...) each
    bound = _Bound(copy.deepcopy(models[0]).to("meta"), objective, x, noise)

    def one(p, beta):
        return functional_call(bound, {f"model.{k}": v for k, v in p.items()}, (beta,))

    betas = torch.tensor([0.5, 2.0], dtype=torch.float64)
    batched = vmap(one, randomness="error")(params, betas)
    single = [_Bound(m, objective, x, noise)(b) for m, b in zip(models, betas, strict=True)]
    assert torch.allclose(batched, torch.stack(single).detach())
    single[0].backward()
    assert models[0].encoder[1].weight.grad.abs().sum() > 0


def test_ablation_needs_the_dataset_size() -> None:
    model, x, noise = _batch()
    with pytest.raises(InputError):
        get_objective("no_mi").loss(model, x, torch.tensor(1.0), noise, {})
    with pytest.raises(InputError):
        get_objective("no_mi").loss(model, x, torch.tensor(1.0), noise, {"dataset_size": 3})
