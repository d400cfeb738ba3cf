"""The ensemble of a group: M models' parameters stacked (M, ...), one Adam, two step paths.

Parameters live stacked along a new leading axis and one fused Adam updates them (Adam is
elementwise, so this equals M independent Adams). The forward/backward pass runs either

- ``vmap``: the per-model objective ``torch.func.vmap``-ed over the stacked tensors (linear
  layers become batched matmuls, convolutions grouped convolutions); or
- ``loop``: model after model, each on per-run leaf tensors that alias its slice of the
  stacked parameters, with ``.grad`` aliasing its slice of stacked gradient buffers (autograd
  accumulates into an existing ``.grad`` in place). Used for CNN groups on CPU, where it
  is faster (measured on 2 shared EPYC cores, 1 thread, batch 128, M = 12, model-it/s of
  process CPU time, best of 3: cnn1 21.8 -> 24.7, cnn3 9.7 -> 11.0): one model's
  activations (8 MB per layer for cnn1) stay in cache where vmap streams all M models'
  (100 MB) through memory, plain oneDNN convolutions beat grouped ones (grouped backward is
  slower), and vmap's relayout copies around every convolution disappear. A stacked
  grouped-layout forward, (B, M·C, H, W) with ``groups=M`` and ``baddbmm`` linears, was
  tried and measured no faster than vmap here (the convolutions themselves dominate).

Both paths compute, per run, what that run computes alone (on CPU a CNN group of one takes
the ``loop`` path too), so a run never depends on its group beyond float rounding.

A run whose mean loss becomes non-finite at iteration t is frozen: its loss is masked out,
its gradients and Adam moments are zeroed (Adam then moves it by exactly 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from benchmark.objectives import Objective


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
class Ensemble:
    """Stacked parameters (M, ...), the Adam over them, and the per-run alive mask."""

    params: dict[str, torch.Tensor]  # leaves in storage layout (what Adam updates)
    transposed: frozenset[str]  # names stored as (M, in, out): see _storage_layout
    optimizer: torch.optim.Adam
    bound: _Bound
    betas: torch.Tensor  # (M,)
    alive: torch.Tensor  # (M,) bool
    fail_at: torch.Tensor  # (M,) int64, -1 while alive
    reasons: list[str | None] = field(default_factory=list)
    runs: list[dict[str, torch.Tensor]] | None = None  # loop path: per-run aliasing leaves

    def model_view(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Storage layout -> the model's layout (M, ...) (a view)."""
        return t.transpose(1, 2) if name in self.transposed else t

    def model_params(self) -> dict[str, torch.Tensor]:
        return {k: self.model_view(k, p) for k, p in self.params.items()}

    def per_model(self, params, x, beta, eps, u) -> dict[str, torch.Tensor]:
        prefixed = {f"model.{k}": v for k, v in params.items()}
        return functional_call(self.bound, prefixed, (x, beta, eps, u))


def build_ensemble(
    dicts: list[dict[str, torch.Tensor]],
    moments: list[dict[str, Any]] | None,
    meta: nn.Module,
    objective: Objective,
    options: dict,
    betas: tuple[float, ...],
    reasons: list[str | None],
    lr: float,
    device: torch.device,
    loop: bool,
) -> Ensemble:
    """The ensemble of the runs with state dicts ``dicts`` (and Adam ``moments`` to resume).

    ``meta``: one model of the architecture (on the meta device: only its structure is used).
    ``loop``: run forward/backward model after model (see the module docstring).
    """
    transposed = _storage_layout(dicts[0], 1 if loop else len(dicts))
    params = {  # (M, ...) in storage layout
        k: _to_storage(k, torch.stack([d[k] for d in dicts]), transposed)
        .to(device)
        .requires_grad_()
        for k in dicts[0]
    }
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, fused=True)  # one kernel/tensor
    if moments is not None:
        _load_moments(optimizer, params, moments, device, transposed)
    return Ensemble(
        params=params,
        transposed=transposed,
        optimizer=optimizer,
        bound=_Bound(meta, objective, options),
        betas=torch.tensor(betas, dtype=torch.float32, device=device),
        alive=torch.tensor([r is None for r in reasons], device=device),
        fail_at=torch.full((len(dicts),), -1, device=device),
        reasons=list(reasons),
        runs=_aliasing_leaves(params) if loop else None,
    )


def _aliasing_leaves(params: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per run, leaves viewing its slice of every stacked tensor, ``.grad`` likewise.

    The stacked tensors get persistent gradient buffers (zeroed after every step, never
    replaced), so every backward of run r accumulates straight into slice r.
    """
    for p in params.values():
        p.grad = torch.zeros_like(p)
    runs = []
    for r in range(next(iter(params.values())).shape[0]):
        leaves = {}
        for k, p in params.items():
            leaf = p.detach()[r].requires_grad_()
            leaf.grad = p.grad[r]
            leaves[f"model.{k}"] = leaf
        runs.append(leaves)
    return runs


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


def _load_moments(optimizer, params, moments: list[dict[str, Any]], device, transposed) -> None:
    sd = optimizer.state_dict()
    step = float(moments[0]["step"])
    for i, name in enumerate(params):
        sd["state"][i] = {"step": torch.tensor(step)}
        for key in ("exp_avg", "exp_avg_sq"):
            stacked = torch.stack([m[key][name] for m in moments])  # (M, ...)
            sd["state"][i][key] = _to_storage(name, stacked, transposed).to(device)
    optimizer.load_state_dict(sd)


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy with its own storage (torch.save of a view saves the whole base)."""
    return t.clone(memory_format=torch.contiguous_format)


def per_run_tensors(ens: Ensemble) -> list[tuple[dict, dict, dict]]:
    """Per run: CPU copies of (weights, exp_avg, exp_avg_sq) in the model's layout."""
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
    return [
        tuple({k: _own(v[r]) for k, v in d.items()} for d in (cpu, *moments.values()))
        for r in range(len(ens.reasons))
    ]


def _freeze_dead(ens: Ensemble) -> None:
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


def make_step(ens: Ensemble, autocast: Callable) -> Callable:
    """``step(x (M,B,3,32,32), eps (M,B,d), u (M,B), t) -> (keys, means (M, K))``: one Adam step."""
    if ens.runs is not None:
        return lambda x, eps, u, t: _loop_step(ens, x, eps, u, t, autocast)
    fn = _vmapped(ens, len(ens.reasons))
    return lambda x, eps, u, t: _vmap_step(ens, fn, x, eps, u, t, autocast)


def _vmapped(ens: Ensemble, n_runs: int) -> Callable:
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


def _record_failures(ens: Ensemble, finite: torch.Tensor, t: int) -> None:
    """Mark runs whose loss turned non-finite at iteration t; ``finite`` (M,) includes alive."""
    ens.fail_at.masked_fill_(ens.alive & ~finite, t)
    ens.alive = finite


def _vmap_step(ens: Ensemble, fn: Callable, x, eps, u, t: int, autocast):
    with autocast():
        out = fn(ens.model_params(), x, ens.betas, eps, u)  # {key: (M, B)}
    values = torch.stack([v.detach().float().mean(1) for v in out.values()], 1)  # (M, K)
    loss = out["loss"].float().mean(1)  # (M,)
    finite = torch.isfinite(loss) & ens.alive
    _record_failures(ens, finite, t)
    torch.where(finite, loss, 0.0).sum().backward()
    # The masking passes rewrite every gradient and moment (as many bytes as Adam itself
    # moves), so they run only once a run has died. Reading the mask is one host sync per
    # step: free on CPU; on CUDA it stalls the launch queue briefly, which for mlp3 × 60 on
    # an H100 costs far less than the passes (6,658 -> 9,441 model-it/s; README, GPU
    # benchmark). Small groups were not timed before and after.
    if not bool(ens.alive.all()):
        _freeze_dead(ens)
    ens.optimizer.step()
    ens.optimizer.zero_grad(set_to_none=True)
    return list(out), torch.where(finite[:, None], values, 0.0)


def _loop_step(ens: Ensemble, x, eps, u, t: int, autocast):
    """Forward and backward model after model (a host sync per model: meant for CPU)."""
    rows, finite = [], []
    for r, leaves in enumerate(ens.runs):
        with autocast():
            out = functional_call(ens.bound, leaves, (x[r], ens.betas[r], eps[r], u[r]))
        rows.append(torch.stack([v.detach().float().mean() for v in out.values()]))  # (K,)
        loss = out["loss"].float().mean()
        finite.append(bool(ens.alive[r]) and bool(torch.isfinite(loss)))
        if finite[-1]:  # a dead or diverging run gets no gradient (its buffer stays 0)
            loss.backward()
    ok = torch.tensor(finite, device=ens.alive.device)
    _record_failures(ens, ok, t)
    if not all(finite):
        _freeze_dead(ens)
    ens.optimizer.step()
    for p in ens.params.values():
        p.grad.zero_()  # in place: the runs' leaves alias these buffers
    return list(out), torch.where(ok[:, None], torch.stack(rows), 0.0)
