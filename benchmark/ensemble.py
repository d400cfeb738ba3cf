"""The one ensemble engine: M models of one structure as stacked tensors, called as one.

Training (:mod:`benchmark.trainer`) and evaluation (:mod:`analysis.evaluate`) both hold a
group of runs as a :class:`ModelStack` — parameters and buffers stacked along a new leading
axis (M, ...) — and apply per-model functions ``fn(model, *args)`` to it with
:meth:`ModelStack.map`, which either

- ``vmap``s ``fn`` over the stacked tensors (``torch.func``: linear layers become batched
  matmuls, convolutions grouped convolutions); or
- ``loop``s model after model, each on per-run leaf tensors that alias its slice of the
  stacked parameters and buffers, with ``.grad`` aliasing its slice of stacked gradient
  buffers (autograd accumulates into an existing ``.grad`` in place). Used for models with
  convolutions on CPU, where it is faster (measured on 2 shared EPYC cores, 1 thread, batch
  128, M = 12, model-it/s of process CPU time, best of 3: cnn1 21.8 -> 24.7, cnn3 9.7 -> 11.0):
  one model's activations stay in cache where vmap streams all M models' through memory,
  plain oneDNN convolutions beat grouped ones, and vmap's relayout copies disappear.

A group of one skips vmap (plain kernels, no batching-rule overhead). Both paths compute, per
run, what that run computes alone, so a run never depends on its group beyond float rounding.
Buffers (BatchNorm running statistics) are stacked like parameters: each model normalises
with its own batch statistics and updates its own running ones.

Training adds (:class:`Ensemble`) one fused Adam over the stacked parameters (Adam is
elementwise, so this equals M independent Adams) and a per-run alive mask: a run whose mean
loss becomes non-finite at iteration t, or that the trainer stops early, is frozen — its loss
masked out, its gradients and Adam moments zeroed (Adam then moves it by exactly 0), its
buffers kept as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap


class _Apply(nn.Module):
    """``forward(fn, *args) = fn(model, *args)``, so functional_call can swap the weights."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args: Any) -> Any:
        return fn(self.model, *args)


class ModelStack:
    """The state dicts ``states`` of M models shaped like ``meta`` (a model on the meta device:
    only its structure and train/eval mode are used), stacked on ``device``.

    ``loop``: run model after model (see the module docstring); ``trainable``: parameters
    are leaves that require grad (linear weights of a vmapped group stored transposed);
    ``vmap_one``: vmap a group of one too, so that a model's outputs are bit for bit those it
    has in any group (evaluation: metrics independent of the group; training skips vmap for
    one model, which is faster).
    """

    def __init__(self, meta: nn.Module, states: Sequence[dict[str, torch.Tensor]],
                 device: torch.device, *, loop: bool = False, trainable: bool = False,
                 vmap_one: bool = False):
        self.n = len(states)
        self.loop = loop
        self.vmap_one = vmap_one  # a group of one vmapped too: the same kernels as M > 1
        self.apply_module = _Apply(meta)
        names = {k for k, _ in meta.named_parameters()}
        self.transposed = _storage_layout(states[0], names, 1 if loop or not trainable
                                          else self.n)
        self.params = {k: _to_storage(k, torch.stack([s[k] for s in states]), self.transposed)
                       .to(device).requires_grad_(trainable)
                       for k in states[0] if k in names}
        self.buffers = {k: torch.stack([s[k] for s in states]).to(device)
                        for k in states[0] if k not in names}
        self.runs = _aliasing_leaves(self.params, self.buffers, trainable) if loop else None

    @property
    def meta(self) -> nn.Module:
        return self.apply_module.model

    def model_view(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Storage layout -> the model's layout (M, ...) (a view)."""
        return t.transpose(1, 2) if name in self.transposed else t

    def state(self) -> dict[str, torch.Tensor]:
        """Every stacked tensor (M, ...) in the model's layout, prefixed for functional_call."""
        tensors = {**{k: self.model_view(k, p) for k, p in self.params.items()}, **self.buffers}
        return {f"model.{k}": v for k, v in tensors.items()}

    def map(self, fn: Callable, *args: Any, in_dims: Sequence[int | None] | None = None) -> Any:
        """``fn(model_m, *args_m)`` for every model m, outputs stacked (M, ...).

        ``in_dims``: per argument, 0 when it is stacked per model (its first axis is M), None
        when all models share it (default: all shared). Outputs must be tensors or
        dicts/tuples of tensors.
        """
        in_dims = tuple(in_dims) if in_dims is not None else (None,) * len(args)
        if self.loop:
            outs = [functional_call(self.apply_module, leaves, (fn, *_pick(args, in_dims, r)))
                    for r, leaves in enumerate(self.runs)]
            return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)
        state = self.state()
        if self.n == 1 and not self.vmap_one:  # plain kernels, on views (gradients reach)
            one = {k: v[0] for k, v in state.items()}
            out = functional_call(self.apply_module, one, (fn, *_pick(args, in_dims, 0)))
            return torch.utils._pytree.tree_map(lambda x: x.unsqueeze(0), out)

        def call(stacked: dict, *a: Any) -> Any:
            return functional_call(self.apply_module, stacked, (fn, *a))

        return vmap(call, in_dims=(0, *in_dims), randomness="error")(state, *args)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Per run, CPU copies (own, contiguous storage) of every tensor in the model's layout."""
        cpu = {**{k: self.model_view(k, p.detach().cpu()) for k, p in self.params.items()},
               **{k: b.cpu() for k, b in self.buffers.items()}}
        return [{k: _own(v[r]) for k, v in cpu.items()} for r in range(self.n)]


def _pick(args: Sequence[Any], in_dims: Sequence[int | None], r: int) -> list[Any]:
    return [a[r] if d == 0 else a for a, d in zip(args, in_dims, strict=True)]


def _aliasing_leaves(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                     trainable: bool) -> list[dict[str, torch.Tensor]]:
    """Per run, leaves viewing its slice of every stacked tensor (``.grad`` likewise).

    The stacked parameters get persistent gradient buffers (zeroed after every step, never
    replaced), so every backward of run r accumulates straight into slice r; a run's buffers
    are views too, so BatchNorm's in-place running-statistics updates land in the stack.
    """
    if trainable:
        for p in params.values():
            p.grad = torch.zeros_like(p)
    runs = []
    for r in range(next(iter({**params, **buffers}.values())).shape[0]):
        leaves = {}
        for k, p in params.items():
            leaf = p.detach()[r].requires_grad_(trainable)
            if trainable:
                leaf.grad = p.grad[r]
            leaves[f"model.{k}"] = leaf
        leaves.update({f"model.{k}": b[r] for k, b in buffers.items()})
        runs.append(leaves)
    return runs


def _storage_layout(state: dict[str, torch.Tensor], names: set[str], n_runs: int
                    ) -> frozenset[str]:
    """Linear weights of a vmapped trainable group are stored transposed, (M, in, out).

    vmap computes their gradient as a transposed (M, out, in) view; with this layout it
    arrives contiguous and autograd stores it without a copy (~40 % of an mlp step on CPU).
    """
    if n_runs == 1:
        return frozenset()
    return frozenset(k for k, v in state.items()
                     if k in names and v.dim() == 2 and k.endswith("weight"))


def _to_storage(name: str, t: torch.Tensor, transposed: frozenset[str]) -> torch.Tensor:
    """The model's layout (M, ...) -> storage layout (contiguous)."""
    return t.transpose(1, 2).contiguous() if name in transposed else t


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy with its own storage (torch.save of a view saves the whole base)."""
    return t.clone(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- training
@dataclass
class Ensemble:
    """A trainable :class:`ModelStack`, the Adam over it, and the per-run alive mask."""

    stack: ModelStack
    optimizer: torch.optim.Adam
    loss: Callable  # (model, x, beta, eps, u) -> dict of per-example tensors (B,)
    betas: torch.Tensor  # (M,)
    alive: torch.Tensor  # (M,) bool
    fail_at: torch.Tensor  # (M,) int64, -1 while alive
    reasons: list[str | None] = field(default_factory=list)


def build_ensemble(dicts: list[dict[str, torch.Tensor]], moments: list[dict[str, Any]] | None,
                   meta: nn.Module, loss: Callable, betas: tuple[float, ...],
                   reasons: list[str | None], lr: float, device: torch.device, loop: bool
                   ) -> Ensemble:
    """The ensemble of the runs with state dicts ``dicts`` (and Adam ``moments`` to resume).

    ``meta``: one model of the architecture on the meta device, in training mode.
    ``loss(model, x, beta, eps, u)``: the objective of one model on its minibatch.
    """
    stack = ModelStack(meta, dicts, device, loop=loop, trainable=True)
    optimizer = torch.optim.Adam(list(stack.params.values()), lr=lr, fused=True)
    if moments is not None:
        _load_moments(optimizer, stack, moments, device)
    return Ensemble(stack=stack, optimizer=optimizer, loss=loss,
                    betas=torch.tensor(betas, dtype=torch.float32, device=device),
                    alive=torch.tensor([r is None for r in reasons], device=device),
                    fail_at=torch.full((len(dicts),), -1, device=device),
                    reasons=list(reasons))


def _load_moments(optimizer, stack: ModelStack, moments: list[dict[str, Any]], device) -> None:
    sd = optimizer.state_dict()
    step = float(moments[0]["step"])
    for i, name in enumerate(stack.params):
        sd["state"][i] = {"step": torch.tensor(step)}
        for key in ("exp_avg", "exp_avg_sq"):
            stacked = torch.stack([m[key][name] for m in moments])  # (M, ...)
            sd["state"][i][key] = _to_storage(name, stacked, stack.transposed).to(device)
    optimizer.load_state_dict(sd)


def per_run_tensors(ens: Ensemble) -> list[tuple[dict, dict, dict]]:
    """Per run: CPU copies of (weights and buffers, exp_avg, exp_avg_sq), model layout."""
    stack = ens.stack
    moments = {
        key: {k: stack.model_view(k, ens.optimizer.state[p][key].detach().cpu())
              if p in ens.optimizer.state else torch.zeros_like(p.detach().cpu())
              for k, p in stack.params.items()}
        for key in ("exp_avg", "exp_avg_sq")
    }
    per_moment = [[{k: _own(v[r]) for k, v in m.items()} for r in range(stack.n)]
                  for m in moments.values()]
    return [(weights, per_moment[0][r], per_moment[1][r])
            for r, weights in enumerate(stack.state_dicts())]


def _freeze_dead(ens: Ensemble, buffers_before: dict[str, torch.Tensor] | None) -> None:
    """Zero the gradients (NaN included) and Adam moments of runs that are not alive, and put
    their buffers back as they were before the step."""
    dead_runs = ~ens.alive  # (M,)
    for p in ens.stack.params.values():
        dead = dead_runs.view(-1, *([1] * (p.dim() - 1)))  # (M, 1, ...)
        if p.grad is not None:
            p.grad.masked_fill_(dead, 0.0)
        state = ens.optimizer.state.get(p)
        if state:
            state["exp_avg"].masked_fill_(dead, 0.0)
            state["exp_avg_sq"].masked_fill_(dead, 0.0)
    for k, before in (buffers_before or {}).items():
        b = ens.stack.buffers[k]
        dead = dead_runs.view(-1, *([1] * (b.dim() - 1)))
        b.copy_(torch.where(dead, before, b))


def _record_failures(ens: Ensemble, finite: torch.Tensor, t: int) -> None:
    """Mark runs whose loss turned non-finite at iteration t; ``finite`` (M,) includes alive."""
    ens.fail_at.masked_fill_(ens.alive & ~finite, t)
    ens.alive = finite


def make_step(ens: Ensemble, autocast: Callable) -> Callable:
    """``step(x (M,B,C,H,W), eps (M,B,d), u (M,B), t) -> (keys, means (M, K))``: one Adam
    step of every live run."""
    if ens.stack.loop:
        return lambda x, eps, u, t: _loop_step(ens, x, eps, u, t, autocast)
    return lambda x, eps, u, t: _vmap_step(ens, x, eps, u, t, autocast)


def _buffers_if_any_dead(ens: Ensemble) -> dict[str, torch.Tensor] | None:
    """Copies of the stacked buffers when some run is not alive (to restore its own after the
    step: a frozen run's BatchNorm statistics must not drift), else None (no copy)."""
    if not ens.stack.buffers or bool(ens.alive.all()):
        return None
    return {k: b.clone() for k, b in ens.stack.buffers.items()}


def _vmap_step(ens: Ensemble, x, eps, u, t: int, autocast):
    before = _buffers_if_any_dead(ens)
    with autocast():
        out = ens.stack.map(ens.loss, x, ens.betas, eps, u, in_dims=(0, 0, 0, 0))  # {k: (M, B)}
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
        _freeze_dead(ens, before)
    ens.optimizer.step()
    ens.optimizer.zero_grad(set_to_none=True)
    return list(out), torch.where(finite[:, None], values, 0.0)


def _loop_step(ens: Ensemble, x, eps, u, t: int, autocast):
    """Forward and backward model after model (a host sync per model: meant for CPU)."""
    before = _buffers_if_any_dead(ens)
    rows, finite = [], []
    for r, leaves in enumerate(ens.stack.runs):
        with autocast():
            out = functional_call(ens.stack.apply_module, leaves,
                                  (ens.loss, x[r], ens.betas[r], eps[r], u[r]))
        rows.append(torch.stack([v.detach().float().mean() for v in out.values()]))  # (K,)
        loss = out["loss"].float().mean()
        finite.append(bool(ens.alive[r]) and bool(torch.isfinite(loss)))
        if finite[-1]:  # a dead or diverging run gets no gradient (its buffer stays 0)
            loss.backward()
    ok = torch.tensor(finite, device=ens.alive.device)
    _record_failures(ens, ok, t)
    if not all(finite):
        _freeze_dead(ens, before)
    ens.optimizer.step()
    for p in ens.stack.params.values():
        p.grad.zero_()  # in place: the runs' leaves alias these buffers
    return list(out), torch.where(ok[:, None], torch.stack(rows), 0.0)
