"""Estimators of SPEC §5, pure torch: Gaussian densities and KLs, the rate decomposition
R = I_q(x;z) + KL(q(z) ‖ p(z)), the importance-sampled bound on log p(x), and ℓ₂ nearest
neighbours. The Gaussian formulas training shares live in
``benchmark.gaussians`` and are re-exported here.

All quantities are in nats. Shapes: N examples (B in a batch), d latent dimensions, K
importance samples. A Gaussian posterior is given mean-field as ``(mu, logvar)`` or with a
full / block covariance as ``(mu, scale_tril)``, Σ = L Lᵀ with L lower triangular (pass
``logvar=None``). The prior is p(z) = N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.gaussians import (  # noqa: F401  (re-exported: one formula, two stages)
    LOG_2PI,
    _check_posterior,
    _half_logdet,
    gaussian_kl_to_standard,
    kl_tril_to_standard,
    log_normal_diag,
    log_normal_tril,
    log_standard_normal,
    minibatch_log_qz,
    pairwise_log_density,
    reparameterise,
)

# Exact log q(z): blocks of (rows, columns) of the N × N matrix ℓᵢⱼ small enough to stay in
# cache; the N² exps dominate, so one pass over cache-sized blocks beats big matmuls.
_EXACT_BLOCK = (256, 2048)
_EXACT_BLOCK_GPU = (2048, 65536)  # 1 GiB of float64 per block


def sample_gaussian(mu: Tensor, logvar: Tensor | None = None, *,
                    scale_tril: Tensor | None = None, num_samples: int | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """z = μ + e^{logvar/2} ⊙ ε  or  z = μ + L ε,  ε ~ N(0, I) drawn from ``generator``.

    mu: (N, d) -> (N, d), or (K, N, d) with ``num_samples=K``.
    """
    _check_posterior(mu, logvar, scale_tril)
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    return reparameterise(_randn(shape, mu, generator), mu, logvar, scale_tril)


def exact_log_qz(z: Tensor, mu: Tensor, logvar: Tensor | None = None, *,
                 scale_tril: Tensor | None = None, paired: bool = False) -> Tensor:
    """log q(zᵢ) = logsumexpⱼ ℓᵢⱼ − log N over all N encodings (not differentiable).

    Uses ℓᵢⱼ = −½ (φ(zᵢ)·ψⱼ + cⱼ), one float64 matmul per cache-sized block and an online
    logsumexp, so memory stays O(N·d) (N = 163,840 is fine). The expansion loses ~1e-16·zᵀPz
    to cancellation; with ``paired`` (zᵢ drawn from posterior i, n = N) the own term ℓᵢᵢ is
    computed directly instead, which keeps log q(zᵢ) ≥ ℓᵢᵢ − log N, i.e. Î ≤ log N, exact.
    z: (n, d), mu: (N, d), logvar: (N, d) or scale_tril: (N, d, d) -> (n,) float64.
    """
    mu, logvar, scale_tril = mu.double(), _maybe_double(logvar), _maybe_double(scale_tril)
    with torch.no_grad():
        z = z.double()
        own = _log_posterior(z, mu, logvar, scale_tril) if paired else None  # (N,)
        features, psi, c = _quadratic_factors(mu, logvar, scale_tril)
        phi, psi_t = features(z), psi.T.contiguous()  # (n, F), (F, N)
        rows, cols = _EXACT_BLOCK if mu.device.type == "cpu" else _EXACT_BLOCK_GPU
        out = [_block_logsumexp(phi[i:i + rows], psi_t, c, cols, i,
                                None if own is None else own[i:i + rows])
               for i in range(0, len(phi), rows)]
        return torch.cat(out) - math.log(mu.shape[0])


def rate_decomposition(mu: Tensor, logvar: Tensor | None = None, *,
                       scale_tril: Tensor | None = None, batch_size: int | None = 512,
                       generator: torch.Generator | None = None,
                       dataset_size: int | None = None) -> dict[str, float]:
    """R = I_q(x;z) + KL(q(z) ‖ p(z)) over a set of N encodings, one zᵢ ~ q(z|xᵢ) each.

        Î   = meanᵢ [ℓᵢᵢ − log q̂(zᵢ)],   KL̂ = meanᵢ [log q̂(zᵢ) − log p(zᵢ)],
        rate = meanᵢ [ℓᵢᵢ − log p(zᵢ)]  (Monte-Carlo rate: Î + KL̂ = rate exactly),
        rate_analytic = meanᵢ KL(q(z|xᵢ) ‖ p(z))  (closed form),
    with log q̂ from :func:`minibatch_log_qz` on disjoint batches of ``batch_size`` after a
    random permutation (a lone leftover example joins the previous batch; B ≥ N gives one
    batch, which is exact), or from :func:`exact_log_qz` when ``batch_size is None``.
    Î ≤ log N always. Computed in float64; values are Python floats.

    ``dataset_size``: when the n encodings are a uniform random subset of a set of
    N = ``dataset_size`` ≥ n examples, the minibatch weights use that N, so q(z) is the
    aggregate posterior of the whole set (and Î ≤ log N, not log n). The exact estimator
    needs all N encodings and refuses a subset.

    mu: (n, d), logvar: (n, d) or scale_tril: (n, d, d).
    """
    _check_posterior(mu, logvar, scale_tril)
    if mu.shape[0] < 2 or (batch_size is not None and batch_size < 2):
        raise ValueError(f"need N >= 2 and batch_size >= 2 (N={mu.shape[0]}, B={batch_size})")
    n_set = mu.shape[0] if dataset_size is None else dataset_size
    if n_set < mu.shape[0] or (batch_size is None and n_set != mu.shape[0]):
        raise ValueError(f"dataset_size={dataset_size} does not fit {mu.shape[0]} encodings "
                         "(the exact estimator needs the whole set)")
    mu, logvar, scale_tril = mu.double(), _maybe_double(logvar), _maybe_double(scale_tril)
    with torch.no_grad():
        z = sample_gaussian(mu, logvar, scale_tril=scale_tril, generator=generator)
        log_q_own = _log_posterior(z, mu, logvar, scale_tril)  # (N,) ℓᵢᵢ
        log_p = log_standard_normal(z)
        if batch_size is None:
            log_qz = exact_log_qz(z, mu, logvar, scale_tril=scale_tril, paired=True)
        else:
            log_qz = _minibatch_log_qz_of_set(z, mu, logvar, scale_tril, batch_size, generator,
                                              n_set)
        analytic = (gaussian_kl_to_standard(mu, logvar) if scale_tril is None
                    else kl_tril_to_standard(mu, scale_tril))
    return {"rate": (log_q_own - log_p).mean().item(),
            "mutual_information": (log_q_own - log_qz).mean().item(),
            "marginal_kl": (log_qz - log_p).mean().item(),
            "rate_analytic": analytic.mean().item()}


def importance_log_px(x: Tensor | Any, mu: Tensor, logvar: Tensor | None,
                      log_likelihood: Callable[[Tensor, Tensor], Tensor], *,
                      scale_tril: Tensor | None = None, num_samples: int = 1000,
                      chunk_size: int = 4096,
                      generator: torch.Generator | None = None) -> Tensor:
    """Importance-sampled bound  log p(x) ≥ log (1/K) Σₖ p(x|zₖ) p(zₖ) / q(zₖ|x),  zₖ ~ q(z|x).

    ``log_likelihood(x_chunk (b, ...), z (k, b, d)) -> (k, b)`` is log p(x|z), supplied by
    the caller (the decoder); it is called with at most ``chunk_size`` pairs (k·b) at a time,
    chunked over samples and examples (the samples drawn do not depend on the chunking).
    K = 1 is the single-sample ELBO; the bound rises
    toward log p(x) with K and is tight when q(z|x) is the exact posterior.
    x: (B, ...), mu: (B, d), logvar: (B, d) or scale_tril: (B, d, d) -> (B,) float64;
    ``x`` is only sliced by example (``x[a:b]``) for ``log_likelihood``, so any object that
    slices so (rows read from disk on demand) does.
    Samples are drawn and scored in float64 (``log_likelihood`` gets float64 z): a float32
    μ + σε would round to μ once σ is far below μ's float32 spacing (logvar ≲ −33 at |μ| ~ 1),
    and the estimate would no longer be a bound.
    """
    _check_posterior(mu, logvar, scale_tril)
    if num_samples < 1 or chunk_size < 1:
        raise ValueError("num_samples and chunk_size must be >= 1")
    mu, logvar, scale_tril = (None if t is None else t.double() for t in (mu, logvar, scale_tril))
    n = mu.shape[0]
    per_example = max(1, min(n, chunk_size))
    per_call = max(1, chunk_size // per_example)
    total = torch.full((n,), -math.inf, dtype=torch.float64, device=mu.device)
    for k0 in range(0, num_samples, per_call):
        # one (N, d) draw per sample index, so the estimate does not depend on chunk_size
        eps = torch.stack([_randn(mu.shape, mu, generator)
                           for _ in range(min(per_call, num_samples - k0))])  # (k, N, d)
        for b in range(0, n, per_example):
            sl = slice(b, b + per_example)
            post = (mu[sl], None if logvar is None else logvar[sl],
                    None if scale_tril is None else scale_tril[sl])
            z = reparameterise(eps[:, sl], *post)  # (k, b, d)
            log_w = (log_likelihood(x[sl], z).double() + log_standard_normal(z)
                     - _log_posterior(z, *post))  # (k, b)
            total[sl] = torch.logaddexp(total[sl], torch.logsumexp(log_w, 0))
    return total - math.log(num_samples)


def nearest_neighbour_distances(test: Tensor | np.ndarray, train: Tensor | np.ndarray, *,
                                chunk_size: int = 2048, device: str | torch.device | None = None,
                                candidates: int = 8, test_rows: np.ndarray | None = None,
                                train_rows: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """ℓ₂ distance of every test row to its nearest train row, and that row's index.

    Rows are flattened: test (n, ...), train (m, ...) in the inputs' units (uint8 stays
    0..255). Search: ‖a − b‖² = ‖a‖² − 2 a·b + ‖b‖² as float32 matmuls, chunked over both
    sets, keeping the ``candidates`` nearest; then those are re-ranked with the exact
    float64 difference (so duplicates give exactly 0). Returns (distance (n,) float64,
    index (n,) int64), on the CPU.

    ``test_rows`` / ``train_rows``: use only these rows of ``test`` / ``train`` (n = len of
    them; the index returned is still a row of ``train``). They are read ``chunk_size`` rows
    at a time, so a memory-mapped set is never copied whole.
    """
    device = torch.device(device) if device is not None else _device_of(test)
    test_flat, train_flat = _Rows(_flat(test), test_rows), _Rows(_flat(train), train_rows)
    if test_flat.width != train_flat.width or len(train_flat) == 0:
        raise ValueError(f"incompatible sets: test {tuple(test.shape)}, train {tuple(train.shape)}")
    k = min(candidates, len(train_flat))
    dists, index = [], []
    for i in range(0, len(test_flat), chunk_size):
        chunk = test_flat[i:i + chunk_size]
        a = _to_device(chunk, device, torch.float32)  # (c, D)
        cand = _nearest_candidates(a, train_flat, chunk_size, k, device)  # (c, k)
        dist, best = _rerank(chunk, train_flat, cand.cpu())
        dists.append(dist)
        index.append(train_flat.row_of(best))
    return torch.cat(dists), torch.cat(index)


# --- helpers -----------------------------------------------------------------------------

def _maybe_double(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.double()


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise from ``generator`` (on its own device), moved to ``like``."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return eps.to(like.device)


def _log_posterior(z: Tensor, mu: Tensor, logvar: Tensor | None,
                   scale_tril: Tensor | None) -> Tensor:
    """log q(z | x) for z of shape (..., N, d) against the N posteriors -> (..., N)."""
    if scale_tril is None:
        return log_normal_diag(z, mu, logvar)
    return log_normal_tril(z, mu, scale_tril)


def _minibatch_log_qz_of_set(z: Tensor, mu: Tensor, logvar: Tensor | None,
                             scale_tril: Tensor | None, batch_size: int,
                             generator: torch.Generator | None, dataset_size: int) -> Tensor:
    """:func:`minibatch_log_qz` on disjoint random batches covering all N rows -> (N,)."""
    N = mu.shape[0]
    perm = torch.randperm(N, generator=generator,
                          device=generator.device if generator is not None else "cpu")
    batches = list(perm.to(mu.device).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2:] = [torch.cat(batches[-2:])]
    log_qz = torch.empty(N, dtype=mu.dtype, device=mu.device)
    for idx in batches:
        log_qz[idx] = minibatch_log_qz(
            z[idx], mu[idx], None if logvar is None else logvar[idx],
            scale_tril=None if scale_tril is None else scale_tril[idx],
            dataset_size=dataset_size)
    return log_qz


def _quadratic_factors(mu: Tensor, logvar: Tensor | None, scale_tril: Tensor | None
                       ) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    """Write log q(z | xⱼ) = −½ (φ(z)·ψⱼ + cⱼ), with P = Σ⁻¹ the precision:
    zᵀPz − 2 μᵀPz + μᵀPμ + log det Σ + d log 2π;  φ(z) holds the monomials zₖzₗ (k ≤ l) and z.
    Mean-field: φ = [z², z], ψ = [p, −2pμ] (F = 2d); full: F = d(d+1)/2 + d.
    Returns (φ: (n, d) -> (n, F), ψ (N, F), c (N,)).
    """
    d = mu.shape[-1]
    if scale_tril is None:
        p = (-logvar).exp()  # (N, d)
        c = (p * mu.square() + logvar).sum(-1) + d * LOG_2PI
        return (lambda z: torch.cat([z.square(), z], -1)), torch.cat([p, -2 * p * mu], -1), c
    eye = torch.eye(d, dtype=mu.dtype, device=mu.device).expand_as(scale_tril)
    inv = torch.linalg.solve_triangular(scale_tril, eye, upper=False)
    P = inv.transpose(-1, -2) @ inv  # (N, d, d)
    r, s = torch.triu_indices(d, d, device=mu.device)
    weight = torch.where(r == s, 1.0, 2.0).to(mu.dtype)  # off-diagonal pairs appear twice
    Pmu = (P @ mu.unsqueeze(-1)).squeeze(-1)
    psi = torch.cat([P[:, r, s] * weight, -2 * Pmu], -1)
    c = (Pmu * mu).sum(-1) + 2 * _half_logdet(scale_tril) + d * LOG_2PI
    return (lambda z: torch.cat([z[:, r] * z[:, s], z], -1)), psi, c


def _block_logsumexp(phi: Tensor, psi_t: Tensor, c: Tensor, cols: int, row0: int,
                     own: Tensor | None) -> Tensor:
    """logsumexpⱼ −½ (φᵢ·ψⱼ + cⱼ) over column blocks, online (running max and sum).

    phi: (r, F) = rows row0.., psi_t: (F, N), c: (N,), own: (r,) or None -> (r,).
    All float64: exps in float32 would save ~20 % but cost ~1e-7 relative accuracy.
    """
    m = torch.full((phi.shape[0], 1), -math.inf, dtype=phi.dtype, device=phi.device)
    s = torch.zeros_like(m)
    for j in range(0, psi_t.shape[1], cols):
        ell = torch.addmm(c[j:j + cols], phi, psi_t[:, j:j + cols], beta=-0.5, alpha=-0.5)
        if own is not None:
            _put_own_terms(ell, own, row0, j)
        new_m = torch.maximum(m, ell.amax(1, keepdim=True))
        block = ell.sub_(new_m).exp_().sum(1, keepdim=True)
        s = s * (m - new_m).exp() + block
        m = new_m
    return (m + s.log()).squeeze(1)


def _put_own_terms(ell: Tensor, own: Tensor, row0: int, col0: int) -> None:
    """Overwrite the entries (k − row0, k − col0) of a block with the direct ℓₖₖ."""
    lo, hi = max(row0, col0), min(row0 + ell.shape[0], col0 + ell.shape[1])
    if lo < hi:
        k = torch.arange(lo, hi, device=ell.device)
        ell[k - row0, k - col0] = own[k - row0]


def _device_of(t: Tensor | np.ndarray) -> torch.device:
    return t.device if isinstance(t, Tensor) else torch.device("cpu")


def _flat(t: Tensor | np.ndarray) -> Tensor | np.ndarray:
    return t.reshape(len(t), -1)


def _to_device(t: Tensor | np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(np.asarray(t)) if not isinstance(t, Tensor) else t
    return t.to(device=device).to(dtype)


class _Rows:
    """Rows ``rows`` of a flattened set (all when None), indexed by position: slices and
    position arrays read only those rows (a memmap's fancy index copies just them)."""

    def __init__(self, flat: Tensor | np.ndarray, rows: np.ndarray | None):
        self.flat, self.rows = flat, rows
        self.width = flat.shape[1]

    def __len__(self) -> int:
        return len(self.flat) if self.rows is None else len(self.rows)

    def __getitem__(self, positions: slice | np.ndarray) -> Tensor | np.ndarray:
        picked = positions if self.rows is None else self.rows[positions]
        if isinstance(self.flat, Tensor) and not isinstance(picked, slice):
            picked = torch.as_tensor(picked, device=self.flat.device)
        return self.flat[picked]

    def row_of(self, positions: Tensor) -> Tensor:
        """Rows of the whole set at these positions: (n,) int64."""
        if self.rows is None:
            return positions
        return torch.as_tensor(np.asarray(self.rows)[positions.numpy()], dtype=torch.long)


def _nearest_candidates(a: Tensor, train: _Rows, chunk_size: int, k: int,
                        device: torch.device) -> Tensor:
    """Positions (c, k) in train of the k smallest ‖a − b‖², float32 matmul form."""
    a_sq = a.square().sum(1, keepdim=True)  # (c, 1)
    best_d = torch.empty(len(a), 0, device=device)
    best_i = torch.empty(len(a), 0, dtype=torch.long, device=device)
    for j in range(0, len(train), chunk_size):
        b = _to_device(train[j:j + chunk_size], device, torch.float32)  # (m, D)
        d2 = (a_sq - 2.0 * a @ b.T + b.square().sum(1)).clamp_min_(0.0)  # (c, m)
        d_all = torch.cat([best_d, d2], 1)
        i_all = torch.cat([best_i, torch.arange(j, j + len(b), device=device).expand_as(d2)], 1)
        best_d, pos = d_all.topk(min(k, d_all.shape[1]), dim=1, largest=False)
        best_i = i_all.gather(1, pos)
    return best_i


def _rerank(a: Tensor | np.ndarray, train: _Rows, cand: Tensor) -> tuple[Tensor, Tensor]:
    """Exact float64 distances (c, k) to the candidate positions; the nearest, lowest
    position on ties."""
    a64 = _to_device(a, torch.device("cpu"), torch.float64)  # (c, D)
    rows, inverse = torch.unique(cand, return_inverse=True)  # rows sorted, cand = rows[inverse]
    b64 = _to_device(train[rows.numpy()], torch.device("cpu"), torch.float64)  # (u, D)
    dist = torch.stack([(a64 - b64[inverse[:, t]]).square().sum(-1)
                        for t in range(cand.shape[1])], 1).sqrt()  # (c, k)
    order = torch.argsort(cand, dim=1, stable=True)
    dist_s, cand_s = dist.gather(1, order), cand.gather(1, order)
    j = dist_s.argmin(1, keepdim=True)  # first minimum in index order
    return dist_s.gather(1, j).squeeze(1), cand_s.gather(1, j).squeeze(1)
