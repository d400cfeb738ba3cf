"""The vectorised trainer: all runs of a group (β × seed) train as one stacked model.

The M models of a group have identical shapes, so their parameters are stacked along a
new leading axis (M, ...) and the per-model objective is ``torch.func.vmap``-ed over it:
linear layers become batched matmuls, convolutions grouped convolutions. One Adam step
updates the stacked tensors; Adam is elementwise, so this equals M independent Adams.

Randomness is counter-based and per run, so a run never depends on its group:
- initialisation of run r: the global RNG seeded with ``_mix(seed_r, "init")``;
- minibatch indices (with replacement), ``eps`` (B, d) and ``u`` (B,) of iteration t:
  drawn in chunks of ``CHUNK`` iterations from a generator seeded with
  ``_mix(seed_r, "data", t // CHUNK)`` on the training device.
Resuming at iteration t therefore needs nothing but t (and the weights and Adam moments).
Streams are reproducible per device type (CPU and CUDA generators differ).

A run whose mean loss becomes non-finite at iteration t is frozen from then on: its loss
is masked out, its gradients and Adam moments are zeroed (so Adam moves it by exactly 0),
and ``failed = "non-finite loss at iteration t"`` (t counts completed iterations before
the failing step). The other runs go on unaffected.

Speed: the split lives on the device as uint8 and is gathered per step; metrics are
summed on the device and read only at log/checkpoint time; Adam is fused; linear weights
of a vmapped group are stored transposed (contiguous gradients); a group of one skips
vmap; on CUDA TF32 is on and ``precision="bf16"`` autocasts; on CPU glibc is told to
keep freed memory (see :func:`_keep_freed_memory`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from benchmark.models import ARCHITECTURES, build_model
from benchmark.objectives import Objective, get_objective
from rdbench.io import InputError

CHUNK = 100  # iterations of minibatch indices and noise drawn at once per run
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class GroupSpec:
    """One vectorised job: the runs sharing split, architecture and objective."""

    architecture: str
    objective: str
    objective_options: dict
    betas: tuple[float, ...]  # one entry per run
    seeds: tuple[int, ...]  # one entry per run
    iterations: int
    batch_size: int
    learning_rate: float
    log_every: int
    checkpoint_every: int
    latent_dim: int = 10
    precision: str = "fp32"  # "bf16" = autocast on CUDA only

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.architecture!r}")
        if len(self.betas) != len(self.seeds) or not self.betas:
            raise InputError("a group needs one beta per seed and at least one run")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for key in ("iterations", "batch_size", "log_every", "checkpoint_every"):
            value = getattr(self, key)
            if value < (0 if key == "iterations" else 1):
                raise InputError(f"{key} must be positive, got {value}")

    @property
    def n_runs(self) -> int:
        return len(self.seeds)


@dataclass
class RunState:
    """One run's resumable state: plain dicts, tensors, ints and str (``weights_only``-safe).

    ``optimizer = {"step": int, "exp_avg": {name: Tensor}, "exp_avg_sq": {name: Tensor}}``.
    """

    iteration: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "model": self.model,
            "optimizer": self.optimizer,
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        return cls(int(d["iteration"]), d["model"], d["optimizer"], d.get("failed"))


def _mix(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def init_model(spec: GroupSpec, seed: int) -> nn.Module:
    """The initial model of the run with ``seed`` (independent of the global RNG state)."""
    objective = get_objective(spec.objective)
    n_params = objective.posterior_params(spec.latent_dim, spec.objective_options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(seed, "init"))
        return build_model(spec.architecture, latent_dim=spec.latent_dim, posterior_params=n_params)


def draw_chunk(
    seed: int, chunk: int, n: int, batch: int, latent_dim: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Indices (CHUNK, B), eps (CHUNK, B, d), u (CHUNK, B) of iterations chunk·CHUNK + k."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix(seed, "data", chunk))
    idx = torch.randint(n, (CHUNK, batch), generator=g, device=device)
    eps = torch.randn(CHUNK, batch, latent_dim, generator=g, device=device)
    u = torch.rand(CHUNK, batch, generator=g, device=device)
    return idx, eps, u


class _Bound(nn.Module):
    """``forward`` = the objective applied to ``model`` (so functional_call can swap weights)."""

    def __init__(self, model: nn.Module, objective: Objective, options: dict):
        super().__init__()
        self.model = model
        self.objective = objective
        self.options = options

    def forward(self, x, beta, eps, u) -> dict[str, torch.Tensor]:
        return self.objective.loss(self.model, x, beta, {"eps": eps, "u": u}, self.options)


@dataclass
class _Ensemble:
    """Stacked parameters (M, ...), the Adam over them, and the per-run alive mask."""

    params: dict[str, torch.Tensor]  # leaves in storage layout (what Adam updates)
    transposed: frozenset[str]  # names stored as (M, in, out): see _storage_layout
    optimizer: torch.optim.Adam
    bound: _Bound
    betas: torch.Tensor  # (M,)
    alive: torch.Tensor  # (M,) bool
    fail_at: torch.Tensor  # (M,) int64, -1 while alive
    reasons: list[str | None] = field(default_factory=list)

    def model_view(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Storage layout -> the model's layout (M, ...) (a view)."""
        return t.transpose(1, 2) if name in self.transposed else t

    def model_params(self) -> dict[str, torch.Tensor]:
        return {k: self.model_view(k, p) for k, p in self.params.items()}

    def per_model(self, params, x, beta, eps, u) -> dict[str, torch.Tensor]:
        prefixed = {f"model.{k}": v for k, v in params.items()}
        return functional_call(self.bound, prefixed, (x, beta, eps, u))


def _ensemble_fn(ens: _Ensemble, n_runs: int) -> Callable:
    """The objective over the ensemble: (params (M, ...), x (M, B, ...), ...) -> {k: (M, B)}.

    A group of one skips vmap (plain addmm/conv kernels, no batching-rule overhead) and
    works on the views ``p[0]``, so gradients still reach the stacked tensors.
    """
    if n_runs > 1:
        return vmap(ens.per_model, randomness="error")

    def single(params, x, beta, eps, u):
        out = ens.per_model({k: p[0] for k, p in params.items()}, x[0], beta[0], eps[0], u[0])
        return {k: v.unsqueeze(0) for k, v in out.items()}

    return single


def _make_optimizer(params: list[torch.Tensor], lr: float, device: torch.device):
    """Fused Adam (one kernel over each stacked tensor, no temporaries; CPU and CUDA)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def _build_ensemble(
    spec: GroupSpec, device: torch.device, states: list[RunState] | None
) -> _Ensemble:
    if states is None:
        dicts = [init_model(spec, s).state_dict() for s in spec.seeds]
    else:
        dicts = [st.model for st in states]
    transposed = _storage_layout(dicts[0], spec.n_runs)
    params = {  # (M, ...) in storage layout
        k: _to_storage(k, torch.stack([d[k] for d in dicts]), transposed)
        .to(device)
        .requires_grad_()
        for k in dicts[0]
    }
    optimizer = _make_optimizer(list(params.values()), spec.learning_rate, device)
    if states is not None and states[0].iteration > 0:
        _load_moments(optimizer, params, states, device, transposed)
    objective = get_objective(spec.objective)
    meta = init_model(spec, 0).to("meta")
    reasons = [None if states is None else st.failed for st in (states or spec.seeds)]
    alive = torch.tensor([r is None for r in reasons], device=device)
    return _Ensemble(
        params=params,
        transposed=transposed,
        optimizer=optimizer,
        bound=_Bound(meta, objective, dict(spec.objective_options)),
        betas=torch.tensor(spec.betas, dtype=torch.float32, device=device),
        alive=alive,
        fail_at=torch.full((spec.n_runs,), -1, device=device),
        reasons=reasons,
    )


def _storage_layout(state: dict[str, torch.Tensor], n_runs: int) -> frozenset[str]:
    """Linear weights of a vmapped group are stored transposed, (M, in, out).

    vmap computes their gradient as a transposed (M, out, in) view; with this layout it
    arrives contiguous and autograd stores it without a copy (~40 % of an mlp step on CPU).
    """
    if n_runs == 1:
        return frozenset()
    return frozenset(k for k, v in state.items() if v.dim() == 2 and k.endswith("weight"))


def _to_storage(name: str, t: torch.Tensor, transposed: frozenset[str]) -> torch.Tensor:
    """The model's layout (M, ...) -> storage layout (contiguous)."""
    return t.transpose(1, 2).contiguous() if name in transposed else t


def _load_moments(optimizer, params, states: list[RunState], device, transposed) -> None:
    sd = optimizer.state_dict()
    step = float(states[0].optimizer["step"])
    for i, name in enumerate(params):
        sd["state"][i] = {"step": torch.tensor(step)}
        for key in ("exp_avg", "exp_avg_sq"):
            stacked = torch.stack([s.optimizer[key][name] for s in states])  # (M, ...)
            sd["state"][i][key] = _to_storage(name, stacked, transposed).to(device)
    optimizer.load_state_dict(sd)


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy with its own storage (torch.save of a view saves the whole base)."""
    return t.clone(memory_format=torch.contiguous_format)


def _run_states(ens: _Ensemble, iteration: int) -> list[RunState]:
    """Per-run CPU copies of weights and Adam moments (one host sync)."""
    fail_at = ens.fail_at.cpu().tolist()
    for r, t in enumerate(fail_at):
        if t >= 0 and ens.reasons[r] is None:
            ens.reasons[r] = f"non-finite loss at iteration {t}"
    cpu = {k: ens.model_view(k, p.detach().cpu()) for k, p in ens.params.items()}
    moments = {
        key: {
            k: ens.model_view(k, ens.optimizer.state[p][key].detach().cpu())
            if p in ens.optimizer.state
            else torch.zeros_like(cpu[k])
            for k, p in ens.params.items()
        }
        for key in ("exp_avg", "exp_avg_sq")
    }
    out = []
    for r in range(len(fail_at)):
        out.append(
            RunState(
                iteration=iteration,
                model={k: _own(v[r]) for k, v in cpu.items()},
                optimizer={
                    "step": iteration,
                    "exp_avg": {k: _own(v[r]) for k, v in moments["exp_avg"].items()},
                    "exp_avg_sq": {k: _own(v[r]) for k, v in moments["exp_avg_sq"].items()},
                },
                failed=ens.reasons[r],
            )
        )
    return out


def _freeze_dead(ens: _Ensemble) -> None:
    """Zero the gradients (NaN included) and Adam moments of runs that are not alive."""
    dead_runs = ~ens.alive  # (M,)
    for p in ens.params.values():
        dead = dead_runs.view(-1, *([1] * (p.dim() - 1)))  # (M, 1, ...)
        if p.grad is not None:
            p.grad.masked_fill_(dead, 0.0)
        state = ens.optimizer.state.get(p)
        if state:
            state["exp_avg"].masked_fill_(dead, 0.0)
            state["exp_avg_sq"].masked_fill_(dead, 0.0)


def _step(
    ens: _Ensemble, fn: Callable, x, eps, u, t: int, autocast
) -> tuple[list[str], torch.Tensor]:
    """One Adam step for all models; returns the output names and their means (M, K)."""
    with autocast():
        out = fn(ens.model_params(), x, ens.betas, eps, u)  # {key: (M, B)}
    values = torch.stack([v.detach().float().mean(1) for v in out.values()], 1)  # (M, K)
    loss = out["loss"].float().mean(1)  # (M,)
    finite = torch.isfinite(loss) & ens.alive
    ens.fail_at.masked_fill_(ens.alive & ~finite, t)
    ens.alive = finite
    torch.where(finite, loss, 0.0).sum().backward()
    # On CPU reading the mask is free (no async queue), so the masking passes are skipped
    # while every run is alive; on CUDA they always run, to avoid a host sync per step.
    if ens.alive.device.type != "cpu" or not bool(ens.alive.all()):
        _freeze_dead(ens)
    ens.optimizer.step()
    ens.optimizer.zero_grad(set_to_none=True)
    return list(out), torch.where(finite[:, None], values, 0.0)


def _keep_freed_memory() -> None:
    """glibc: serve big blocks from the heap instead of fresh mmaps (no-op elsewhere).

    A stacked group allocates ~100 MB gradients and Adam temporaries every step; with the
    default mmap threshold each is a fresh mapping whose first touch page-faults, which
    halves CPU throughput (measured: mlp1 × 12, 13 -> 26 model-it/s on one core).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 1 GiB
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: keep freed memory
    except (OSError, AttributeError):
        pass


def _setup_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cpu":
        _keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def _images_on_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> (N, 3, 32, 32) uint8 on ``device``."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise InputError(
            f"expected uint8 images (N, 32, 32, 3), got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) == 0:
        raise InputError("the training set is empty")
    return (
        torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()
    )


def _check_states(spec: GroupSpec, states: list[RunState] | None) -> int:
    if states is None:
        return 0
    if len(states) != spec.n_runs:
        raise ValueError(f"{len(states)} states for a group of {spec.n_runs} runs")
    its = {st.iteration for st in states}
    assert len(its) == 1, f"runs of a group must resume at one iteration, got {sorted(its)}"
    return its.pop()


class _Stream:
    """The per-run minibatch/noise streams of a group, one chunk of CHUNK steps at a time."""

    def __init__(self, seeds, n: int, batch: int, latent_dim: int, device: torch.device):
        self.seeds, self.n, self.batch, self.d, self.device = seeds, n, batch, latent_dim, device
        self.chunk = -1

    def at(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Indices (M, B), eps (M, B, d), u (M, B) of iteration t."""
        if t // CHUNK != self.chunk:
            self.chunk = t // CHUNK
            draws = [
                draw_chunk(s, self.chunk, self.n, self.batch, self.d, self.device)
                for s in self.seeds
            ]
            # (M, CHUNK, B), (M, CHUNK, B, d), (M, CHUNK, B)
            self.idx, self.eps, self.u = (torch.stack(a) for a in zip(*draws, strict=True))
        k = t % CHUNK
        return self.idx[:, k], self.eps[:, k], self.u[:, k]


def _rows(acc: torch.Tensor, count: torch.Tensor, keys: list[str]) -> list[dict[str, float]]:
    """Window means per run; NaN for a run with no live step in the window."""
    means = (acc / count[:, None]).cpu().tolist()  # (M, K)
    return [dict(zip(keys, row, strict=True)) for row in means]


def train_group(
    spec: GroupSpec,
    images: np.ndarray,
    *,
    device: str | torch.device,
    states: list[RunState] | None = None,
    on_log: Callable[[int, list[dict[str, float]]], None] | None = None,
    on_checkpoint: Callable[[list[RunState]], None] | None = None,
    progress: bool = True,
) -> list[RunState]:
    """Train every run of ``spec`` on ``images`` (N, 32, 32, 3) uint8, the split's train set.

    ``states`` resumes the runs (all at one iteration). ``on_log(it, rows)`` gets, every
    ``log_every`` iterations (and at the end), one dict per run of the objective's outputs
    averaged over the steps since the last log. ``on_checkpoint(states)`` is called every
    ``checkpoint_every`` iterations and at the end. Returns the final states.
    """
    start = _check_states(spec, states)
    if start >= spec.iterations and states is not None:
        return states
    device = _setup_device(device)
    data = _images_on_device(images, device)  # (N, 3, 32, 32) uint8
    ens = _build_ensemble(spec, device, states)
    stream = _Stream(spec.seeds, len(data), spec.batch_size, spec.latent_dim, device)
    fn = _ensemble_fn(ens, spec.n_runs)
    bf16 = spec.precision == "bf16" and device.type == "cuda"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    keys: list[str] = []
    acc = count = torch.zeros(0, device=device)
    bar = tqdm(
        total=spec.iterations,
        initial=start,
        disable=not progress,
        unit="it",
        desc=f"{spec.architecture}×{spec.n_runs}",
        leave=False,
    )
    for t in range(start, spec.iterations):
        idx, eps, u = stream.at(t)
        x = data[idx].float().div_(255.0)  # (M, B, 3, 32, 32)
        keys, values = _step(ens, fn, x, eps, u, t, autocast)
        if acc.numel() == 0:
            acc, count = torch.zeros_like(values), torch.zeros(spec.n_runs, device=device)
        acc += values
        count += ens.alive
        bar.update()
        it = t + 1
        if on_log is not None and (it % spec.log_every == 0 or it == spec.iterations):
            on_log(it, _rows(acc, count, keys))
            acc.zero_(), count.zero_()
        if on_checkpoint is not None and it % spec.checkpoint_every == 0 and it != spec.iterations:
            on_checkpoint(_run_states(ens, it))
    bar.close()
    final = _run_states(ens, spec.iterations)
    if on_checkpoint is not None:
        on_checkpoint(final)
    return final
