"""Kumar & Poole (2020), Appendix C: data, model, exact ELBO and Procrustes angle.

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

Unamortised VI (``analysis.kp.unamortised``) replaces the encoder by free per-point
posteriors N(μ_i, Σ_i); ``elbo_per_point`` is its ELBO, sharing the quadrature kernel.

The rotation angle between true latents z and posterior means μ is the orthogonal
Procrustes rotation argmin_O ‖Z − O M‖_F against whitened Z (the polar factor of the
least-squares map M ≈ G Z, exact for anisotropically scaled rotations), reduced modulo signed
permutations of the latent axes to (−45°, 45°].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch.nn.functional import elu

NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda u: u,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": elu,
}
PARAMS = ("A", "b", "C", "d", "log_diag", "off")  # learned parameters of one trial


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


def generating_W(generator: torch.Generator, Q: torch.Tensor | None = None) -> torch.Tensor:
    """W = Q diag(2, 1) (orthogonal columns of norm 2 and 1); Q drawn from ``generator``
    unless given. The first draw of a trial's generator, so ``make_data`` sees the same W.

    Q is Haar-orthogonal, so half the time a reflection R(α)·diag(1, −1) rather than the
    SPEC's rotation R(α). The data are the same in distribution (z₂ ↦ −z₂ leaves N(0, I)
    unchanged, and W z = R(α) diag(2, 1) (z₁, −z₂)) and the angle is taken modulo
    reflections, so this changes no result; it is kept so published numbers reproduce."""
    Q = random_orthogonal(generator) if Q is None else Q
    return Q * torch.tensor([2.0, 1.0], dtype=torch.float64)


def make_data(nonlinearity: str, n_points: int, noise_std: float, generator: torch.Generator,
              Q: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (z, x), both (n_points, 2) float64: x = ν(W z) + ε, W = Q diag(2, 1).

    Q is Haar-random (drawn first from ``generator``) unless given; with a given Q the
    generator draws only z and ε, so one generator state gives the same z and ε for any Q.
    """
    W = generating_W(generator, Q)
    z = torch.randn(n_points, 2, generator=generator, dtype=torch.float64)
    eps = noise_std * torch.randn(n_points, 2, generator=generator, dtype=torch.float64)
    return z, NONLINEARITIES[nonlinearity](z @ W.T) + eps


def seeded_generator(key: list[int]) -> torch.Generator:
    """A CPU generator seeded from a list of non-negative ints (numpy's SeedSequence)."""
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def trial_generator(seed: int, nonlinearity: str, n: int, trial: int) -> torch.Generator:
    """The generator of one trial; diagonal and full trials share it (paired design)."""
    return seeded_generator([seed, list(NONLINEARITIES).index(nonlinearity), n, trial])


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
    """KL(N(μ, Σ) ‖ N(0, I₂)) = ½(tr Σ + ‖μ‖² − 2 − log det Σ), its mean over μ when
    ``mean_sq`` is E‖μ‖²; shape (T,) or, for per-point Σ_i, (T, N)."""
    return 0.5 * (torch.diagonal(Sigma, dim1=-2, dim2=-1).sum(-1) + mean_sq - 2 - logdet)


def elbo_linear(params: dict, fixed: dict, mean: torch.Tensor, second: torch.Tensor,
                decoder_std: float | None) -> torch.Tensor:
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
    loglik = gaussian_loglik(err, decoder_std)
    Cx = (C @ mean[..., None])[..., 0]
    mean_sq = _trace(C @ second @ C.mT) + 2 * (d * Cx).sum(-1) + (d * d).sum(-1)
    return loglik - _kl(Sigma, logdet, mean_sq)


def _trace(m: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)


def elbo_quadrature(params: dict, fixed: dict, x: torch.Tensor, nonlinearity: str,
                    decoder_std: float | None, nodes: int) -> torch.Tensor:
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
    loglik = _expected_loglik(m, s, y, nonlinearity, decoder_std, nodes)
    mean, second = x.mean(1), xt @ x / x.shape[1]
    mean_sq = (_trace(C @ second @ C.mT) + 2 * (d * (C @ mean[..., None])[..., 0]).sum(-1)
               + (d * d).sum(-1))
    return loglik - _kl(Sigma, logdet, mean_sq)


def elbo_per_point(A: torch.Tensor, b: torch.Tensor, mu: torch.Tensor, Sigma: torch.Tensor,
                   logdet: torch.Tensor, x: torch.Tensor, nonlinearity: str,
                   decoder_std: float | None, nodes: int) -> torch.Tensor:
    """ELBO per point, (T,), of per-point posteriors q_i = N(μ_i, Σ_i) (unamortised VI).

    A (T, 2, 2), b (T, 2); μ (T, N, 2), Σ (T, N, 2, 2), log det Σ (T, N); x (T, N, 2). With
    m_ij = a_jᵀμ_i and s_ij² = a_jᵀΣ_i a_j, E‖x_i − b − ν(A z)‖² is Σ_j (y_ij − m_ij)² + s_ij²
    for ν = identity and the same Gauss–Hermite quadrature as ``elbo_quadrature`` otherwise;
    the KL term is averaged over the points' own N(μ_i, Σ_i). Like ``elbo_quadrature`` it
    works with the points innermost: Σ is fastest as a (T, 2, 2, N) tensor's permuted view.
    """
    T, N = mu.shape[:2]
    m = A @ mu.mT                                                      # (T, 2, N)
    S = Sigma.permute(0, 2, 3, 1).reshape(T, 2, 2 * N)                 # (T, k, l·N)
    s2 = ((A @ S).view(T, 2, 2, N) * A[..., None]).sum(2)              # a_jᵀΣ_i a_j, (T, 2, N)
    y = x.mT.contiguous() - b[..., None]                               # (T, 2, N)
    if nonlinearity == "identity":
        loglik = gaussian_loglik(((y - m).square() + s2).sum(1).mean(-1), decoder_std)
    else:
        s = s2.clamp_min(1e-30).sqrt()
        loglik = _expected_loglik(m, s, y, nonlinearity, decoder_std, nodes)
    return loglik - _kl(Sigma, logdet, mu.square().sum(-1)).mean(-1)


def _expected_loglik(m: torch.Tensor, s: torch.Tensor, y: torch.Tensor, nonlinearity: str,
                     decoder_std: float | None, nodes: int) -> torch.Tensor:
    """Mean over points of E_q log N(y; ν(u), σ²I), (T,); m, y (T, 2, N), s (T, 2) or (T, 2, N)."""
    err = _ExpectedSquaredError.apply(m, s, y, nonlinearity, nodes)    # (T, 2, N)
    return gaussian_loglik(err.sum(1).mean(-1), decoder_std)


def gaussian_loglik(err: torch.Tensor, decoder_std: float | None) -> torch.Tensor:
    """E_q log N(x; decoder mean, σ²I₂) per point from ``err``, the expected squared error
    summed over the two dimensions and averaged over points, (T,).

    ``decoder_std`` None is a learned decoder variance, in closed form: the σ² that maximises
    the ELBO, err / 2 (one σ per trial, as in the σ-VAE of Rybkin et al. 2021); the term is
    then −1 − log(π·err). Training with it is training σ jointly, profiled out each step.
    """
    if decoder_std is None:
        return -1 - torch.log(math.pi * err.clamp_min(torch.finfo(err.dtype).tiny))
    return -err / (2 * decoder_std**2) - math.log(2 * math.pi * decoder_std**2)


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

    m, y: (T, 2, N); s: (T, 2) (one Σ for all points) or (T, 2, N) (one Σ_i per point). The
    gradients are computed with the forward pass from the
    same nodes (∂/∂u_k = 2 w_k r_k ν'(u_k), r_k = ν(u_k) − y, u_k = m + √2 s t_k), which
    avoids keeping autograd's intermediates; the (K, T, 2, N) work is done in place and the
    weighted sums over the K nodes are vector–matrix products.
    """

    @staticmethod
    def forward(ctx, m, s, y, nonlinearity: str, nodes: int):  # noqa: ANN001, ANN205
        tau, w = (torch.as_tensor(v, dtype=m.dtype, device=m.device)
                  for v in _gauss_hermite(nodes))                      # (K,) each
        ctx.shared_s = s.dim() < m.dim()
        u = m + tau[:, None, None, None] * (s[..., None] if ctx.shared_s else s)  # (K, T, 2, N)
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
        grad_s = grad * grad_s
        return (grad * grad_m, grad_s.sum(-1) if ctx.shared_s else grad_s, grad * grad_y,
                None, None)


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
