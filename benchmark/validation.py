"""Validation and early stopping of a training group (SPEC §11).

Every ``validate_every`` iterations each live run's own objective is evaluated on the
group's held-out validation images (the same rows for every run of a split, never trained
on; ``imagesets.splits.hold_out``) with fixed noise per run (drawn once from
``derive_seed(seed, "validation")``, so the value moves only with the weights), the model in
eval mode (BatchNorm uses its running statistics) and without gradients. The mean of every
objective output goes into the run's history as ``val_<key>``.

The weights with the lowest validation loss so far are kept, stacked on the device, with
their iteration (a NaN loss is never an improvement). With ``patience = P`` a run that has
gone P validations without improving is stopped: it leaves the alive mask, so from then on
its loss is masked and Adam moves it by exactly 0, as for a diverged run, while its group
trains on unchanged. All of it — best weights, value, iteration, the count of validations
without improvement, the stopping iteration — is part of every checkpoint, so a killed run
resumes with its best so far.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from benchmark.ensemble import Ensemble, ModelStack
from imagesets.tensor import to_float
from rdbench.seeding import derive_seed


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module.eval()`` for the with-block, its training mode restored after."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class EarlyStopping:
    """The validation state of a group of M runs (see the module docstring)."""

    def __init__(self, ens: Ensemble, images: torch.Tensor, seeds: tuple[int, ...],
                 latent_dim: int, chunk: int, patience: int | None, states: list[Any] | None):
        self.ens, self.images, self.chunk, self.patience = ens, images, chunk, patience
        device, n = images.device, len(images)
        noise = [_validation_noise(s, n, latent_dim, device) for s in seeds]
        self.eps = torch.stack([e for e, _ in noise])  # (M, V, d)
        self.u = torch.stack([u for _, u in noise])  # (M, V)
        m = len(seeds)
        self.best_value = torch.full((m,), math.inf, device=device, dtype=torch.float64)
        self.best_iteration = torch.full((m,), -1, device=device, dtype=torch.int64)
        self.bad = torch.zeros(m, device=device, dtype=torch.int64)
        self.stopped = torch.full((m,), -1, device=device, dtype=torch.int64)
        self.best = {k: v.detach().clone() for k, v in _current(ens.stack).items()}
        if states is not None:
            self._restore(states)

    def _restore(self, states: list[Any]) -> None:
        for r, st in enumerate(states):
            self.bad[r] = int(st.bad_validations)
            if st.stopped is not None:
                self.stopped[r] = int(st.stopped)
                self.ens.alive[r] = False
            if st.best is not None:
                self.best_value[r] = float(st.best["value"])
                self.best_iteration[r] = int(st.best["iteration"])
                for k, v in st.best["model"].items():
                    self.best[k][r] = v.to(self.best[k].device)

    def validate(self, iteration: int) -> dict[str, torch.Tensor]:
        """Evaluate every run (dead ones too, for the table), update best and patience;
        returns {``val_<key>``: (M,) means} (NaN for runs no longer alive)."""
        means = self._objective_means()
        loss = means["loss"].double()
        alive = self.ens.alive.clone()
        improved = alive & (loss < self.best_value)  # NaN compares False
        self.best_value = torch.where(improved, loss, self.best_value)
        self.best_iteration = torch.where(improved, iteration, self.best_iteration)
        for k, v in _current(self.ens.stack).items():
            where = improved.view(-1, *([1] * (v.dim() - 1)))
            self.best[k].copy_(torch.where(where, v.detach(), self.best[k]))
        self.bad = torch.where(improved, 0, torch.where(alive, self.bad + 1, self.bad))
        if self.patience is not None:
            stop = alive & (self.bad >= self.patience)
            self.stopped = torch.where(stop, iteration, self.stopped)
            self.ens.alive = alive & ~stop
        nan = torch.full_like(loss, math.nan)
        return {f"val_{k}": torch.where(alive, v.double(), nan) for k, v in means.items()}

    def _objective_means(self) -> dict[str, torch.Tensor]:
        """Mean of every objective output over the validation set, per run: {key: (M,)}."""
        stack, total = self.ens.stack, None
        with torch.no_grad(), eval_mode(stack.meta):
            for start in range(0, len(self.images), self.chunk):
                stop = start + self.chunk
                x = to_float(self.images[start:stop])  # (V', C, H, W), shared by all runs
                out = stack.map(self.ens.loss, x, self.ens.betas, self.eps[:, start:stop],
                                self.u[:, start:stop], in_dims=(None, 0, 0, 0))
                sums = {k: v.double().sum(1) for k, v in out.items()}
                total = sums if total is None else {k: total[k] + sums[k] for k in total}
        return {k: v / len(self.images) for k, v in total.items()}

    def run_fields(self, r: int) -> dict[str, Any]:
        """The RunState fields of run r: best (weights on the CPU), bad count, stopped."""
        it = int(self.best_iteration[r])
        best = None if it < 0 else {
            "iteration": it, "value": float(self.best_value[r]),
            "model": {k: v[r].detach().cpu().clone(memory_format=torch.contiguous_format)
                      for k, v in self.best.items()}}
        stopped = int(self.stopped[r])
        return {"best": best, "bad_validations": int(self.bad[r]),
                "stopped": None if stopped < 0 else stopped}


def _current(stack: ModelStack) -> dict[str, torch.Tensor]:
    """The stack's parameters and buffers (M, ...) in the model's layout, by state-dict name."""
    return {k.removeprefix("model."): v for k, v in stack.state().items()}


def _validation_noise(seed: int, n: int, latent_dim: int, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """eps (V, d) and u (V,) of one run's validation passes (fixed for the whole training)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, "validation"))
    return (torch.randn(n, latent_dim, generator=g, device=device),
            torch.rand(n, generator=g, device=device))
