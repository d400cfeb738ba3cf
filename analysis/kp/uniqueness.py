"""Kumar & Poole (2020), Appendix C: a mean-field posterior makes the latents unique.

Data (per trial): x = ν(W z) + ε, z ~ N(0, I₂), ε ~ N(0, 0.05² I₂), W = Q diag(2, 1) with Q
Haar-random orthogonal (orthogonal columns of norms 2 and 1), 4,000 points.

Model: decoder p(x|z) = N(ν(A z) + b, σ² I), σ = 0.05; encoder q(z|x) = N(C x + d, Σ) with
Σ diagonal or full. Fixed random rotations of the parameterisation (their App. C) keep the
optimiser free of any axis-aligned bias in latent space:

    C = O_C C',  d = O_C d',  A = A' O_Aᵀ,  Σ = O_S L Lᵀ O_Sᵀ,  L = [[e^{l₁}, 0], [ℓ, e^{l₂}]]

where C', d', A', b, l, ℓ are learned and the O's are fixed per trial. The paper rotates C and
Σ only (plain gradient descent is rotation-equivariant); we train with Adam, which is not, so
A and d are rotated too. A diagonal Σ has O_S = I and ℓ ≡ 0 — its axis alignment is the
point of the experiment.

ELBO per data point (nats), exact: for ν = identity in closed form from the data's first two
moments; otherwise E_q[(x_j − b_j − ν(u_j))²], u_j = a_jᵀz ~ N(a_jᵀμ, a_jᵀΣa_j), is a 1-D
Gaussian expectation evaluated by Gauss–Hermite quadrature (deterministic, exact for
polynomials of degree < 2K). KL(q‖N(0, I)) is closed form.

Training: full batch, Adam, learning rate 0.1 divided by 10 every n steps, 5n steps. All
trials of one ν (every n, both covariances) form one batch with a leading trial dimension;
trials are sorted by length so the ones still training are always a suffix of the batch.

The rotation angle between true latents z and posterior means μ is the orthogonal
Procrustes rotation argmin_O ‖Z − O M‖_F against whitened Z (the polar factor of the
least-squares map M ≈ G Z, exact for anisotropically scaled rotations), reduced modulo signed
permutations of the latent axes to (−45°, 45°].

What the experiment shows (see README): for every ν the diagonal-Σ optimum is unique (runs from
different inits on one data set agree to < 0.01° and reach the full-Σ optimum's ELBO), but
only for ν = identity is it the true axes. For a saturating ν the linear-Gaussian encoder
cannot represent the posterior, the ELBO optimum is not the generating model (the ELBO at
A = W, b = 0 with its best encoder is lower), and the mean-field axes are those of the
learned decoder, rotated from W's by an angle set by W's orientation (``orientation_sweep``:
≈ 0 for every ν only at 45°, where swapping x₁ ↔ x₂ is a symmetry; up to ~30° elsewhere).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.functional import elu
from tqdm import tqdm

from rdbench.io import InputError, atomic_write_json, atomic_write_text, staged_directory

NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda u: u,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": elu,
}
COVARIANCES = ("diagonal", "full")
# The paper's schedule: n -> random trials (420 per ν and covariance).
PAPER_SCHEDULE = ((100, 20), (500, 20), *((k * 1000, 20) for k in range(1, 10)),
                  (10_000, 100), (20_000, 100))
# Quick: 16 trials per ν and Σ; the 8 longest (5·3000 steps) are within ~1° of the converged angle.
QUICK_SCHEDULE = ((300, 4), (1000, 4), (3000, 8))
PARAMS = ("A", "b", "C", "d", "log_diag", "off")


@dataclass(frozen=True)
class UniquenessConfig:
    """Everything that defines one run of the experiment (written as ``config.json``)."""

    schedule: tuple[tuple[int, int], ...] = PAPER_SCHEDULE  # (n, trials): 5n steps each
    nonlinearities: tuple[str, ...] = tuple(NONLINEARITIES)
    n_points: int = 4000
    noise_std: float = 0.05
    learning_rate: float = 0.1
    decays: int = 5  # lr·10^-k for k = 0..decays-1, n steps each
    quadrature_nodes: int = 4  # training; the reported ELBO uses 32 nodes in float64
    dtype: str = "float32"
    seed: int = 0
    optimizer: str = field(default="adam (full batch, betas 0.9/0.999, eps 1e-8)")


# ----------------------------------------------------------------------------- data


def random_orthogonal(generator: torch.Generator) -> torch.Tensor:
    """A Haar-random 2×2 orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(2, 2, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    """A uniformly random 2×2 rotation R(α), α ~ U[0, 2π)."""
    a = 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
    return rotation_matrix(a)


def rotation_matrix(radians: float | torch.Tensor) -> torch.Tensor:
    """R(α) = [[cos α, −sin α], [sin α, cos α]], float64."""
    a = torch.as_tensor(radians, dtype=torch.float64)
    return torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])


def make_data(nonlinearity: str, n_points: int, noise_std: float, generator: torch.Generator,
              Q: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (z, x), both (n_points, 2) float64: x = ν(W z) + ε, W = Q diag(2, 1).

    Q is Haar-random (drawn first from ``generator``) unless given; with a given Q the
    generator draws only z and ε, so one generator state gives the same z and ε for any Q.
    """
    Q = random_orthogonal(generator) if Q is None else Q
    W = Q * torch.tensor([2.0, 1.0], dtype=torch.float64)
    z = torch.randn(n_points, 2, generator=generator, dtype=torch.float64)
    eps = noise_std * torch.randn(n_points, 2, generator=generator, dtype=torch.float64)
    return z, NONLINEARITIES[nonlinearity](z @ W.T) + eps


def trial_generator(seed: int, nonlinearity: str, n: int, trial: int) -> torch.Generator:
    """The generator of one trial; diagonal and full trials share it (paired design)."""
    key = [seed, list(NONLINEARITIES).index(nonlinearity), n, trial]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


# ----------------------------------------------------------------------------- model


def init_trial(generator: torch.Generator, full: bool) -> tuple[dict, dict]:
    """Initial learned parameters and fixed rotations of one trial (float64, no batch dim)."""
    params = {"A": torch.randn(2, 2, generator=generator, dtype=torch.float64) / math.sqrt(2),
              "b": torch.zeros(2, dtype=torch.float64),
              "C": torch.randn(2, 2, generator=generator, dtype=torch.float64) / math.sqrt(2),
              "d": torch.zeros(2, dtype=torch.float64),
              "log_diag": torch.zeros(2, dtype=torch.float64),
              "off": torch.zeros((), dtype=torch.float64)}
    rotations = [random_rotation(generator) for _ in range(3)]
    fixed = {"O_A": rotations[0], "O_C": rotations[1],
             "O_S": rotations[2] if full else torch.eye(2, dtype=torch.float64),
             "full": torch.tensor(float(full), dtype=torch.float64)}
    return params, fixed


def decoder_encoder(params: dict, fixed: dict) -> tuple[torch.Tensor, ...]:
    """Effective (A, C, d, Σ, log det Σ) from the rotated parameterisation, all (T, ...)."""
    A = params["A"] @ fixed["O_A"].mT                                  # (T, 2, 2)
    C = fixed["O_C"] @ params["C"]                                     # (T, 2, 2)
    d = (fixed["O_C"] @ params["d"][..., None])[..., 0]                # (T, 2)
    l1, l2 = params["log_diag"].unbind(-1)
    zero = torch.zeros_like(l1)
    L = torch.stack([torch.stack([l1.exp(), zero], -1),
                     torch.stack([params["off"] * fixed["full"], l2.exp()], -1)], -2)
    OL = fixed["O_S"] @ L
    return A, C, d, OL @ OL.mT, 2 * (l1 + l2)


def _kl(Sigma: torch.Tensor, logdet: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
    """Mean KL(N(μ, Σ) ‖ N(0, I₂)) = ½(tr Σ + E‖μ‖² − 2 − log det Σ), (T,)."""
    return 0.5 * (torch.diagonal(Sigma, dim1=-2, dim2=-1).sum(-1) + mean_sq - 2 - logdet)


def elbo_linear(params: dict, fixed: dict, mean: torch.Tensor, second: torch.Tensor,
                noise_std: float) -> torch.Tensor:
    """Exact ELBO per point for ν = identity, from x̄ (T, 2) and S = E[x xᵀ] (T, 2, 2).

    E‖x − A μ − b‖² = tr(M S Mᵀ) − 2 cᵀ M x̄ + ‖c‖² with M = I − A C, c = A d + b, plus
    tr(A Σ Aᵀ) from the posterior noise; E‖μ‖² = tr(C S Cᵀ) + 2 dᵀ C x̄ + ‖d‖².
    """
    A, C, d, Sigma, logdet = decoder_encoder(params, fixed)
    M = torch.eye(2, dtype=A.dtype, device=A.device) - A @ C
    c = (A @ d[..., None])[..., 0] + params["b"]
    Mx = (M @ mean[..., None])[..., 0]
    err = _trace(M @ second @ M.mT) - 2 * (c * Mx).sum(-1) + (c * c).sum(-1)
    err = err + _trace(A @ Sigma @ A.mT)
    loglik = -err / (2 * noise_std**2) - math.log(2 * math.pi * noise_std**2)
    Cx = (C @ mean[..., None])[..., 0]
    mean_sq = _trace(C @ second @ C.mT) + 2 * (d * Cx).sum(-1) + (d * d).sum(-1)
    return loglik - _kl(Sigma, logdet, mean_sq)


def _trace(m: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)


def elbo_quadrature(params: dict, fixed: dict, x: torch.Tensor, nonlinearity: str,
                    noise_std: float, nodes: int) -> torch.Tensor:
    """ELBO per point, (T,), for x (T, N, 2), by K-node Gauss–Hermite quadrature.

    E_{u~N(m, s²)} f(u) ≈ Σ_k w_k f(m + √2 s t_k) / √π with m_ij = a_jᵀμ_i, s_j² = a_jᵀΣa_j,
    m = x (AC)ᵀ + A d; E‖μ‖² of the KL term comes from the data's first two moments. The work
    is laid out with the data points innermost, (T, 2, N), which is what vectorises on CPU.
    """
    A, C, d, Sigma, logdet = decoder_encoder(params, fixed)
    xt = x.mT.contiguous()                                             # (T, 2, N)
    G, c = A @ C, A @ d[..., None]                                     # (T, 2, 2), (T, 2, 1)
    m = torch.addcmul(torch.addcmul(c, G[..., :1], xt[:, :1]), G[..., 1:], xt[:, 1:])
    s = torch.diagonal(A @ Sigma @ A.mT, dim1=-2, dim2=-1).clamp_min(1e-30).sqrt()  # (T, 2)
    y = xt - params["b"][..., None]                                    # (T, 2, N)
    err = _ExpectedSquaredError.apply(m, s, y, nonlinearity, nodes)    # (T, 2, N)
    loglik = -err.sum(1).mean(-1) / (2 * noise_std**2) - math.log(2 * math.pi * noise_std**2)
    mean, second = x.mean(1), xt @ x / x.shape[1]
    mean_sq = (_trace(C @ second @ C.mT) + 2 * (d * (C @ mean[..., None])[..., 0]).sum(-1)
               + (d * d).sum(-1))
    return loglik - _kl(Sigma, logdet, mean_sq)


def _apply_nonlinearity(nonlinearity: str,
                        u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ν(u), ν'(u)), overwriting u. tanh(u) is computed as 2σ(2u) − 1: torch's CPU tanh is
    ~10× slower than its sigmoid (they differ by ≲ 2e-7 in float32). ν' is None for identity."""
    if nonlinearity == "tanh":
        h = u.mul_(2).sigmoid_().mul_(2).sub_(1)
        return h, torch.addcmul(torch.ones((), dtype=h.dtype, device=h.device), h, h, value=-1)
    if nonlinearity == "sigmoid":
        h = u.sigmoid_()
        return h, torch.addcmul(h, h, h, value=-1)
    if nonlinearity == "elu":
        h = elu(u, inplace=True)
        return h, h.clamp(max=0).add_(1)              # ν' = 1 for u > 0, e^u = h + 1 below
    return u, None


@functools.cache
def _gauss_hermite(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes τ_k and weights w_k with E_{ε~N(0,1)} f(ε) ≈ Σ_k w_k f(τ_k) (exact for
    polynomials of degree < 2K)."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    return math.sqrt(2) * t, w / math.sqrt(math.pi)


class _ExpectedSquaredError(torch.autograd.Function):
    """E_{u~N(m, s²)}(y − ν(u))² by Gauss–Hermite, fused: (m, s, y) -> (T, 2, N).

    m, y: (T, 2, N); s: (T, 2). The gradients are computed with the forward pass from the
    same nodes (∂/∂u_k = 2 w_k r_k ν'(u_k), r_k = ν(u_k) − y, u_k = m + √2 s t_k), which
    avoids keeping autograd's intermediates; the (K, T, 2, N) work is done in place and the
    weighted sums over the K nodes are vector–matrix products.
    """

    @staticmethod
    def forward(ctx, m, s, y, nonlinearity: str, nodes: int):  # noqa: ANN001, ANN205
        tau, w = (torch.as_tensor(v, dtype=m.dtype, device=m.device)
                  for v in _gauss_hermite(nodes))                      # (K,) each
        u = m + tau[:, None, None, None] * s[..., None]                # (K, T, 2, N)
        h, slope = _apply_nonlinearity(nonlinearity, u)
        r = h.sub_(y)                                                  # ν(u) − y
        grad_y = (-2 * w) @ r.flatten(1)
        dr = (r if slope is None else slope.mul_(r)).flatten(1)
        grad_m, grad_s = (2 * w) @ dr, (2 * w * tau) @ dr
        err = w @ r.square_().flatten(1)
        shape = m.shape
        ctx.save_for_backward(grad_m.view(shape), grad_s.view(shape), grad_y.view(shape))
        return err.view(shape)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_m, grad_s, grad_y = ctx.saved_tensors
        return grad * grad_m, (grad * grad_s).sum(-1), grad * grad_y, None, None


# ----------------------------------------------------------------------------- angle


def procrustes_angle(z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Rotation angle (degrees) between latents z and m, (..., N, 2) -> (...,), in (−45, 45].

    The paper solves min_O ‖Z − O M‖_F (Z, M of shape 2 × N) by O = U Vᵀ from the SVD of
    Z Mᵀ. When Z Zᵀ = N·I, that O is the orthogonal (polar) factor of Gᵀ, the least-squares
    map M ≈ G Z; for a finite sample Z Zᵀ ≠ N·I, which tilts the plain Procrustes answer by an
    amount growing with the anisotropy of G (0.8° for M = diag(3, ½)·R(θ)·Z at N = 4,000). We
    therefore take O from the SVD of (Z Zᵀ)⁻¹ Z Mᵀ = Gᵀ (Procrustes against whitened Z; z and
    m centred), which is exact for M = S R(θ) Z and M = R(θ) S Z with S diagonal.
    """
    z = z - z.mean(-2, keepdim=True)
    m = m - m.mean(-2, keepdim=True)
    return _reduced_angle(torch.linalg.solve(z.mT @ z, z.mT @ m))


def procrustes_angle_plain(z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The paper's unwhitened Procrustes angle (SVD of Z Mᵀ), kept for comparison."""
    return _reduced_angle(z.mT @ m)


def _reduced_angle(zm: torch.Tensor) -> torch.Tensor:
    """Angle of the orthogonal factor O = U Vᵀ of zm = U S Vᵀ, modulo signed permutations.

    Relabelling m's axes by a signed permutation P maps O to O Pᵀ; if det O = −1 we multiply
    by the reflection diag(1, −1), leaving a rotation whose angle is taken modulo 90°.
    """
    U, _, Vh = torch.linalg.svd(zm)
    O = U @ Vh
    flip = torch.where(torch.linalg.det(O) < 0, -1.0, 1.0).to(O.dtype)
    O = torch.cat([O[..., :1], O[..., 1:] * flip[..., None, None]], -1)
    theta = torch.rad2deg(torch.atan2(O[..., 1, 0], O[..., 0, 0]))
    theta = 45.0 - torch.remainder(45.0 - theta, 90.0)
    return torch.where(theta <= -45.0 + 1e-9, theta + 90.0, theta)   # −45° (± rounding) is 45°


# ----------------------------------------------------------------------------- training


@dataclass
class Batch:
    """All trials of one ν, sorted by n: learned params, Adam moments, fixed parts, data."""

    rows: list[dict]
    params: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]
    z: torch.Tensor                 # (T, N, 2)
    x: torch.Tensor                 # (T, N, 2)
    n: torch.Tensor                 # (T,) decay period of each trial


def build_batch(config: UniquenessConfig, nonlinearity: str,
                device: torch.device) -> Batch:
    """Data and initial state of every (n, trial, covariance) of one ν, sorted by n."""
    rows, params, fixed, zs, xs = [], [], [], [], []
    for n, trials in sorted(config.schedule):
        for trial in range(trials):
            for covariance in COVARIANCES:
                g = trial_generator(config.seed, nonlinearity, n, trial)
                z, x = make_data(nonlinearity, config.n_points, config.noise_std, g)
                p, f = init_trial(g, covariance == "full")
                rows.append({"nonlinearity": nonlinearity, "covariance": covariance,
                             "iterations": config.decays * n, "trial": trial})
                params.append(p), fixed.append(f), zs.append(z), xs.append(x)
    periods = [r["iterations"] // config.decays for r in rows]
    return _stack_batch(rows, params, fixed, zs, xs, periods, config.dtype, device)


def _stack_batch(rows: list[dict], params: list[dict], fixed: list[dict], zs: list, xs: list,
                 periods: list[int], dtype: str, device: torch.device) -> Batch:
    """One ``Batch`` from per-trial parts (float64, no batch dim), in the given order."""
    dt = getattr(torch, dtype)

    def stack(items: list) -> torch.Tensor:
        return torch.stack(items).to(device=device, dtype=dt)

    return Batch(rows=rows,
                 params={k: stack([p[k] for p in params]).requires_grad_() for k in PARAMS},
                 fixed={k: stack([f[k] for f in fixed]) for k in fixed[0]},
                 z=stack(zs), x=stack(xs), n=torch.tensor(periods, device=device))


def batch_elbo(batch: Batch, config: UniquenessConfig, nonlinearity: str,
               start: int = 0) -> torch.Tensor:
    """ELBO per point of trials ``start:`` of the batch, (T − start,)."""
    params = {k: v[start:] for k, v in batch.params.items()}
    fixed = {k: v[start:] for k, v in batch.fixed.items()}
    x = batch.x[start:]
    if nonlinearity == "identity":
        second = x.mT @ x / x.shape[1]
        return elbo_linear(params, fixed, x.mean(1), second, config.noise_std)
    return elbo_quadrature(params, fixed, x, nonlinearity, config.noise_std,
                           config.quadrature_nodes)


def train_batch(batch: Batch, config: UniquenessConfig, nonlinearity: str,
                progress: tqdm | None = None, frozen: tuple[str, ...] = ()) -> None:
    """Full-batch Adam on −ELBO; trial t uses lr·10^-⌊s/n_t⌋ and stops after decays·n_t.

    Adam runs on all parameters of a trial as one flat vector (elementwise, so this is the
    same update as one Adam per tensor, with far fewer small tensor operations per step).
    Parameters named in ``frozen`` get zero gradients and so stay where they are.
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    T = len(batch.rows)
    sizes = [batch.params[k][0].numel() for k in PARAMS]
    dtype = batch.params[PARAMS[0]].dtype
    m1 = torch.zeros(T, sum(sizes), dtype=dtype, device=batch.x.device)
    m2 = torch.zeros_like(m1)
    total = batch.n * config.decays
    lr_all = config.learning_rate * 10.0 ** -torch.arange(config.decays, dtype=torch.float64)
    for step in range(int(total.max())):
        start = int(torch.searchsorted(total, step, right=True))       # first active trial
        loss = -batch_elbo(batch, config, nonlinearity, start).sum()
        grads = torch.autograd.grad(loss, [batch.params[k] for k in PARAMS])
        grads = [g.zero_() if k in frozen else g for k, g in zip(PARAMS, grads, strict=True)]
        with torch.no_grad():
            g = torch.cat([gk[start:].reshape(T - start, -1) for gk in grads], 1)  # (., P)
            m, v = m1[start:], m2[start:]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            lr = lr_all[torch.div(step, batch.n[start:], rounding_mode="floor").cpu()]
            lr = (lr / (1 - beta1 ** (step + 1))).to(dtype=dtype, device=m.device)
            update = m * lr[:, None] / (v / (1 - beta2 ** (step + 1))).sqrt_().add_(eps)
            for k, u in zip(PARAMS, update.split(sizes, 1), strict=True):
                batch.params[k][start:].sub_(u.view_as(batch.params[k][start:]))
        if progress is not None:
            progress.update(1)


# ----------------------------------------------------------------------------- experiment


def evaluate_batch(batch: Batch, config: UniquenessConfig, nonlinearity: str,
                   chunk: int = 16) -> pd.DataFrame:
    """Final ELBO (float64, 32 quadrature nodes) and Procrustes angle of every trial."""
    exact = UniquenessConfig(**{**asdict(config), "quadrature_nodes": 32, "dtype": "float64"})
    elbos, angles = [], []
    with torch.no_grad():
        for lo in range(0, len(batch.rows), chunk):
            part = Batch(rows=batch.rows[lo:lo + chunk],
                         params={k: v[lo:lo + chunk].double() for k, v in batch.params.items()},
                         fixed={k: v[lo:lo + chunk].double() for k, v in batch.fixed.items()},
                         z=batch.z[lo:lo + chunk].double(), x=batch.x[lo:lo + chunk].double(),
                         n=batch.n[lo:lo + chunk])
            elbos.append(batch_elbo(part, exact, nonlinearity))
            _, C, d, _, _ = decoder_encoder(part.params, part.fixed)
            angles.append(procrustes_angle(part.z, part.x @ C.mT + d[:, None, :]))
    table = pd.DataFrame(batch.rows)
    table["elbo"] = torch.cat(elbos).cpu().numpy()
    table["angle_deg"] = torch.cat(angles).cpu().numpy()
    return table


def run_experiment(config: UniquenessConfig, device: torch.device,
                   progress: bool = True) -> pd.DataFrame:
    """Train and evaluate every trial; one row per trial (see ``TRIAL_COLUMNS``)."""
    steps = config.decays * max(n for n, _ in config.schedule)
    tables = []
    with tqdm(total=steps * len(config.nonlinearities), desc="kp uniqueness", unit="step",
              disable=not progress) as bar:
        for nonlinearity in config.nonlinearities:
            bar.set_postfix_str(nonlinearity)
            batch = build_batch(config, nonlinearity, device)
            train_batch(batch, config, nonlinearity, bar)
            tables.append(evaluate_batch(batch, config, nonlinearity))
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["nonlinearity", "covariance", "iterations", "trial"],
                             ignore_index=True)[list(TRIAL_COLUMNS)]


def same_data_trials(nonlinearity: str, n: int, inits: int, *, seed: int = 0,
                     device: torch.device | str = "cpu",
                     config: UniquenessConfig | None = None) -> pd.DataFrame:
    """One data set, ``inits`` initialisations per covariance: is the solution unique?

    Trial k (of each covariance) starts from its own initialisation and rotations; all see
    the data of trial 0. A unique optimum shows as equal angles across k (not necessarily 0).
    """
    config = config or UniquenessConfig(schedule=((n, inits),), seed=seed)
    batch = build_batch(replace(config, schedule=((n, inits),)), nonlinearity,
                        torch.device(device))
    with torch.no_grad():
        batch.z.copy_(batch.z[:1].clone().expand_as(batch.z))
        batch.x.copy_(batch.x[:1].clone().expand_as(batch.x))
    train_batch(batch, config, nonlinearity)
    table = evaluate_batch(batch, config, nonlinearity)[list(TRIAL_COLUMNS)]
    return table.sort_values(["covariance", "trial"], ignore_index=True)


def true_decoder_trials(config: UniquenessConfig, nonlinearity: str,
                        device: torch.device | str = "cpu") -> pd.DataFrame:
    """The trials of ``config`` with the decoder fixed at the generating one (A = W, b = 0)
    and only the encoder (C, d, Σ) trained: is the true model the ELBO optimum?

    Rows match those of ``run_experiment`` for the same config (same data and init), so
    ``elbo`` here minus ``elbo`` there is the ELBO of the true model relative to the learned
    one; > 0 would mean training stopped short, < 0 that the optimum is another model.
    """
    batch = build_batch(config, nonlinearity, torch.device(device))
    with torch.no_grad():
        for i, row in enumerate(batch.rows):
            g = trial_generator(config.seed, nonlinearity, row["iterations"] // config.decays,
                                row["trial"])
            W = random_orthogonal(g) * torch.tensor([2.0, 1.0], dtype=torch.float64)  # as make_data
            batch.params["A"][i] = W.to(batch.x) @ batch.fixed["O_A"][i]   # A = A' O_Aᵀ
            batch.params["b"][i] = 0.0
    train_batch(batch, config, nonlinearity, frozen=("A", "b"))
    table = evaluate_batch(batch, config, nonlinearity)[list(TRIAL_COLUMNS)]
    return table.sort_values(["covariance", "iterations", "trial"], ignore_index=True)


TRIAL_COLUMNS = ("nonlinearity", "covariance", "iterations", "trial", "elbo", "angle_deg")


# ----------------------------------------------------------------------------- orientation

ORIENTATION_COLUMNS = ("nonlinearity", "q_angle_deg", "init", "elbo", "angle_deg")
ORIENTATION_STEP = 7.5  # degrees between orientations of W in [0°, 90°)
# (n, inits per orientation): 5n steps; the diagonal optimum is unique, so a few inits suffice.
ORIENTATION_QUICK, ORIENTATION_FULL = (3000, 3), (10_000, 4)


def orientation_generator(seed: int, nonlinearity: str, stream: int) -> torch.Generator:
    """Stream 0 draws the sweep's data (z, ε); stream k ≥ 1 the k-th initialisation.

    The key has a fifth element, so no stream coincides with a ``trial_generator``'s."""
    key = [seed, list(NONLINEARITIES).index(nonlinearity), stream, 0, 1]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def orientation_batch(config: UniquenessConfig, nonlinearity: str, q_angles_deg: list[float],
                      device: torch.device) -> Batch:
    """Diagonal-Σ trials of one ν with W = R(α) diag(2, 1) for each α in ``q_angles_deg``.

    ``config.schedule`` is one (n, inits) pair. Paired design: every α sees the same z and ε
    (so only W's orientation differs), and init k starts from the same parameters and fixed
    rotations at every α.
    """
    ((n, inits),) = config.schedule
    rows, params, fixed, zs, xs = [], [], [], [], []
    for q_angle in q_angles_deg:
        Q = rotation_matrix(math.radians(q_angle))
        z, x = make_data(nonlinearity, config.n_points, config.noise_std,
                         orientation_generator(config.seed, nonlinearity, 0), Q)
        for init in range(inits):
            p, f = init_trial(orientation_generator(config.seed, nonlinearity, 1 + init), False)
            rows.append({"nonlinearity": nonlinearity, "q_angle_deg": q_angle, "init": init})
            params.append(p), fixed.append(f), zs.append(z), xs.append(x)
    return _stack_batch(rows, params, fixed, zs, xs, [n] * len(rows), config.dtype, device)


def orientation_sweep(config: UniquenessConfig, q_angles_deg: list[float],
                      device: torch.device | str = "cpu",
                      progress: bool = False) -> pd.DataFrame:
    """Train diagonal-Σ models for every ν of ``config`` and orientation α of W = R(α) D.

    ν acts along the coordinate axes, so only ν = identity is rotation invariant. A symmetry
    of the data that maps W's columns to ± themselves (x₁ ↔ x₂ at α = 45°, any ν; x₁ ↦ −x₁
    at α = 0 for odd ν, and for sigmoid up to b) makes the true axes a stationary point, and
    the optimum if it is unique; it need not be (tanh at α = 0: a ± pair off the axes).
    One row per (ν, α, init), columns ``ORIENTATION_COLUMNS``; α is in degrees.
    """
    validate_orientation_config(config, q_angles_deg)
    ((n, _),) = config.schedule
    tables = []
    with tqdm(total=config.decays * n * len(config.nonlinearities), unit="step",
              desc="kp uniqueness orientations", disable=not progress) as bar:
        for nonlinearity in config.nonlinearities:
            bar.set_postfix_str(nonlinearity)
            batch = orientation_batch(config, nonlinearity, q_angles_deg, torch.device(device))
            train_batch(batch, config, nonlinearity, bar)
            tables.append(evaluate_batch(batch, config, nonlinearity))
    return pd.concat(tables, ignore_index=True)[list(ORIENTATION_COLUMNS)]


def validate_orientation_config(config: UniquenessConfig, q_angles_deg: list[float]) -> None:
    """InputError unless the schedule is one (n ≥ 1, inits ≥ 1) and the angles are finite."""
    if len(config.schedule) != 1 or min(config.schedule[0]) < 1:
        raise InputError(f"the orientation sweep needs one (n, inits) with n, inits ≥ 1, "
                         f"got schedule {config.schedule}")
    if not q_angles_deg or not all(math.isfinite(a) for a in q_angles_deg):
        raise InputError(f"orientations must be finite angles in degrees, got {q_angles_deg}")
    unknown = sorted(set(config.nonlinearities) - set(NONLINEARITIES))
    if unknown:
        raise InputError(f"unknown nonlinearities {unknown}; choose from {list(NONLINEARITIES)}")


def orientation_angles(step: float) -> list[float]:
    """0, step, 2·step, … below 90°; InputError unless 0 < step ≤ 90."""
    if not (math.isfinite(step) and 0 < step <= 90):
        raise InputError(f"--orientations STEP must be in (0, 90] degrees, got {step}")
    return [k * step for k in range(math.ceil(90 / step - 1e-9))]


def make_config(quick: bool, seed: int) -> UniquenessConfig:
    """The paper's schedule (420 trials per ν and Σ), or the quick one."""
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    return UniquenessConfig(schedule=QUICK_SCHEDULE if quick else PAPER_SCHEDULE, seed=seed)


def main(args: argparse.Namespace) -> int:
    """``rdbench kp uniqueness --out DIR [--quick] [--seed S] [--device D] [--force]
    [--orientations [STEP]]``; with ``--orientations`` the orientation sweep runs instead."""
    from analysis.kp.uniqueness_plot import plot_angles, summarise, summary_markdown
    from rdbench.device import resolve_device
    from rdbench.io import check_output_dir

    check_output_dir(args.out, args.force)
    config = make_config(args.quick, getattr(args, "seed", 0))
    if getattr(args, "orientations", None) is not None:
        angles = orientation_angles(args.orientations)
        config = replace(config, schedule=(ORIENTATION_QUICK if args.quick
                                           else ORIENTATION_FULL,))
        return _main_orientations(args, config, angles, resolve_device(args.device))
    device = resolve_device(args.device)
    # Tensors are small (≤ a few MB): intra-op threads only add contention on a shared CPU.
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    trials = run_experiment(config, device)
    seconds = time.perf_counter() - started
    summary = summarise(trials)
    with staged_directory(args.out, force=args.force) as tmp:
        atomic_write_text(tmp / "trials.csv", trials.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(tmp / "summary.csv", summary.to_csv(index=False, float_format="%.4g"))
        atomic_write_text(tmp / "summary.md", summary_markdown(summary, config, seconds, device))
        atomic_write_json(tmp / "config.json", {**asdict(config), "device": str(device),
                                                "seconds": round(seconds, 1)})
        plot_angles(trials, tmp / "angle_vs_elbo")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {Path(args.out)} ({seconds:.0f} s on {device})")
    return 0


def _main_orientations(args: argparse.Namespace, config: UniquenessConfig,
                       angles: list[float], device: torch.device) -> int:
    """Run the orientation sweep; write orientations.csv/.md, config.json and the figure."""
    from analysis.kp.uniqueness_plot import orientation_markdown, plot_orientations

    torch.set_num_threads(1)
    started = time.perf_counter()
    table = orientation_sweep(config, angles, device, progress=True)
    seconds = time.perf_counter() - started
    markdown = orientation_markdown(table, config, seconds, device)
    with staged_directory(args.out, force=args.force) as tmp:
        atomic_write_text(tmp / "orientations.csv", table.to_csv(index=False,
                                                                 float_format="%.6g"))
        atomic_write_text(tmp / "orientations.md", markdown)
        atomic_write_json(tmp / "config.json", {**asdict(config), "q_angles_deg": angles,
                                                "device": str(device),
                                                "seconds": round(seconds, 1)})
        plot_orientations(table, tmp / "angle_vs_orientation")
    print(markdown)
    print(f"wrote {Path(args.out)} ({seconds:.0f} s on {device})")
    return 0
