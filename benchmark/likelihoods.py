"""The observation model p(x | z): one object scores, averages and differentiates the decoder.

A decoder outputs one unconstrained number u per pixel value (B, C, H, W); the likelihood
turns it into a distribution over x ∈ [0, 1] (v = uint8 / 255):

- ``Bernoulli`` (default; the papers' Tetrominoes setting): p = σ(u), −log p(x|u) =
  Σ softplus(u) − x·u (binary cross-entropy, continuous targets as in Bozkurt et al.).
- ``Gaussian(σ)``: x ~ N(μ, σ²) per value with μ = σ(u) (Kumar & Poole's decoders end in a
  sigmoid, App. D); −log p(x|u) = Σ ½((x − μ)/σ)² + log σ + ½ log 2π — *with* the normaliser, so
  D is a proper negative log-likelihood in nats and can be negative when σ is small.
  ``Gaussian(None)`` learns one scalar log σ per model (the σ-VAE of Rybkin et al. 2021): a
  parameter of this module, so it is stacked, trained, checkpointed and resumed with the rest.

Every place that scores, samples or differentiates the decoder goes through these methods:
the objectives (``nll``), GRAE's curvature (``curvature_sqrt``), evaluation (``nll``),
reconstructions (``mean``). The likelihood is a sub-module of every model
(``model.likelihood``), so a stacked ensemble swaps its parameters like any other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

LIKELIHOODS = ("bernoulli", "gaussian")
LEARNED = "learned"
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _upcast(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Likelihood(nn.Module):
    """−log p(x | u) summed over an image, the mean E[x | u], and H^½ for GRAE."""

    kind = "likelihood"

    def nll(self, output: Tensor, x: Tensor, event_dims: int | None = None) -> Tensor:
        """−log p(x | output), summed over the last ``event_dims`` dims (default: all but the
        first): (..., *event) -> (...)."""
        values = self.nll_values(_upcast(output), x)
        return values.flatten(-(event_dims or values.dim() - 1)).sum(-1)

    def nll_values(self, output: Tensor, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, output: Tensor) -> Tensor:
        """E[x | output] in [0, 1], elementwise (what a reconstruction shows)."""
        return torch.sigmoid(_upcast(output))

    def curvature_sqrt(self, output: Tensor) -> Tensor:  # pragma: no cover - abstract
        """H^½ elementwise: the square root of the (Gauss–Newton) curvature of −log p(x|u) in
        u, independent of x, so that A = JᵀHJ for J = ∂u/∂z (Kumar & Poole eq. 12/13)."""
        raise NotImplementedError

    def config(self) -> dict[str, object]:
        """What ``config.json`` records: ``likelihood`` and (Gaussian) ``decoder_std``."""
        return {"likelihood": self.kind}


class Bernoulli(Likelihood):
    """p(x | u) = σ(u)^x (1 − σ(u))^(1−x); H = σ(u)(1 − σ(u)) in u (exact)."""

    kind = "bernoulli"

    def nll_values(self, output: Tensor, x: Tensor) -> Tensor:
        # Σ softplus(u) − x·u, the stable form of the BCE; it stays elementwise under vmap
        # (the fused binary_cross_entropy_with_logits kernel is decomposed there and ~3× slower)
        return functional.softplus(output) - x * output

    def curvature_sqrt(self, output: Tensor) -> Tensor:
        u = _upcast(output)  # log space: stable for large |u|
        return torch.exp(0.5 * (functional.logsigmoid(u) + functional.logsigmoid(-u)))


class Gaussian(Likelihood):
    """x ~ N(σ(u), std²) per value; ``std`` fixed, or None to learn log std (one scalar)."""

    kind = "gaussian"

    def __init__(self, std: float | None):
        super().__init__()
        if std is None:
            self.log_std = nn.Parameter(torch.zeros(()))  # σ = 1 at initialisation
        else:
            self.fixed_log_std = math.log(std)

    @property
    def learned(self) -> bool:
        return hasattr(self, "log_std")

    def _log_std(self) -> Tensor | float:
        return self.log_std if self.learned else self.fixed_log_std

    def std(self) -> Tensor:
        """σ as a 0-dim tensor (the learned value or the fixed one)."""
        log_std = self._log_std()
        return log_std.exp() if isinstance(log_std, Tensor) else torch.tensor(math.exp(log_std))

    def nll_values(self, output: Tensor, x: Tensor) -> Tensor:
        log_std = self._log_std()
        inv_var = torch.exp(-2 * log_std) if isinstance(log_std, Tensor) \
            else math.exp(-2 * log_std)
        return 0.5 * (x - torch.sigmoid(output)).square() * inv_var + log_std + _HALF_LOG_2PI

    def curvature_sqrt(self, output: Tensor) -> Tensor:
        # H = I/σ² for the mean μ = σ(u) (their eq. 13); in u that is diag(σ'(u))²/σ²
        # (Gauss–Newton: the sigmoid belongs to the decoder g, as in their App. D networks)
        s = torch.sigmoid(_upcast(output))
        log_std = self._log_std()
        inv_std = torch.exp(-log_std) if isinstance(log_std, Tensor) else math.exp(-log_std)
        return s * (1 - s) * inv_std

    def config(self) -> dict[str, object]:
        return {"likelihood": self.kind,
                "decoder_std": LEARNED if self.learned else math.exp(self.fixed_log_std)}


def build_likelihood(kind: str = "bernoulli", decoder_std: float | str | None = None
                     ) -> Likelihood:
    """``bernoulli``, or ``gaussian`` with ``decoder_std`` a positive σ or ``"learned"``."""
    from rdbench.io import InputError

    if kind == "bernoulli":
        if decoder_std is not None:
            raise InputError("decoder_std applies to the gaussian likelihood only")
        return Bernoulli()
    if kind == "gaussian":
        if decoder_std == LEARNED:
            return Gaussian(None)
        if isinstance(decoder_std, bool) or not isinstance(decoder_std, (int, float)) \
                or not 1e-6 <= decoder_std <= 1e6:
            raise InputError(f"decoder_std must be a number in [1e-6, 1e6] or \"learned\" for "
                             f"the gaussian likelihood, got {decoder_std!r}")
        return Gaussian(float(decoder_std))
    raise InputError(f"unknown likelihood {kind!r}; valid: {', '.join(LIKELIHOODS)}")
