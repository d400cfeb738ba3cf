"""The vectorised trainer: all runs of a group (β × seed) train as one stacked model.

The M models of a group have identical shapes, so their parameters are stacked along a
new leading axis (M, ...) and one fused Adam step updates the stacked tensors (Adam is
elementwise, so this equals M independent Adams). The forward/backward pass
(:mod:`benchmark.ensemble`) ``torch.func.vmap``-s the per-model objective over the stack
(linear layers become batched matmuls, convolutions grouped convolutions), except for CNN
groups on CPU, which run model after model on views of the stack (faster there: cache
locality and plain oneDNN convolutions; see ``benchmark/ensemble.py``).

Randomness is counter-based and per run, so a run never depends on its group:
- initialisation of run r: the global RNG seeded with ``derive_seed(seed_r, "init")``;
- minibatch indices (B distinct examples, uniform), ``eps`` (B, d) and ``u`` (B,) of
  iteration t: drawn in chunks of ``CHUNK`` iterations from a generator seeded with
  ``derive_seed(seed_r, "data", t // CHUNK)`` on the training device.
Resuming at iteration t therefore needs nothing but t (and the weights and Adam moments).
Streams are reproducible per device type (CPU and CUDA generators differ).

A run whose mean loss becomes non-finite at iteration t is frozen from then on: its loss
is masked out, its gradients and Adam moments are zeroed (so Adam moves it by exactly 0),
and ``failed = "non-finite loss at iteration t"`` (t counts completed iterations before
the failing step). The other runs go on unaffected.

Speed: the split lives on the device as uint8 and is gathered per step; metrics are
summed on the device and read only at log/checkpoint time; Adam is fused; linear weights
of a vmapped group are stored transposed (contiguous gradients); a group of one skips
vmap; CNNs on CPU loop over the models (above); on CUDA TF32 is on and
``precision="bf16"`` autocasts; on CPU glibc is told to keep freed memory
(see :func:`_keep_freed_memory`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.ensemble import Ensemble, build_ensemble, make_step, per_run_tensors
from benchmark.models import IMAGE_SHAPE, has_convolutions
from benchmark.objectives import build_objective_model, get_objective
from benchmark.validation import EarlyStopping
from imagesets.tensor import channels_first, to_float
from rdbench.io import InputError
from rdbench.seeding import derive_seed

CHUNK = 100  # iterations of minibatch indices and noise drawn at once per run
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class GroupSpec:
    """One vectorised job: the runs sharing split, model structure, objective and settings."""

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
    image_shape: tuple[int, int, int] = IMAGE_SHAPE  # (C, H, W)
    likelihood: str = "bernoulli"
    decoder_std: float | str | None = None
    activation: str | None = None
    architecture_options: dict = field(default_factory=dict)
    validate_every: int = 0  # iterations between validations (0: no validation set)
    patience: int | None = None  # stop a run after this many validations without improving

    def __post_init__(self) -> None:
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

    def model_fields(self) -> dict[str, Any]:
        """The :class:`~benchmark.models.ModelSpec` fields beyond architecture and latent size."""
        return {"image_shape": tuple(self.image_shape), "likelihood": self.likelihood,
                "decoder_std": self.decoder_std, "activation": self.activation,
                "options": dict(self.architecture_options)}


@dataclass
class RunState:
    """One run's resumable state: plain dicts, tensors, ints and str (``weights_only``-safe).

    ``optimizer = {"step": int, "exp_avg": {name: Tensor}, "exp_avg_sq": {name: Tensor}}``;
    with a validation set, ``best = {"iteration": int, "value": float, "model": {name:
    Tensor}}`` (the weights with the lowest validation loss so far, None before the first
    validation), ``bad_validations`` (validations since it improved) and ``stopped`` (the
    iteration early stopping ended it, else None).
    """

    iteration: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    failed: str | None = None
    best: dict[str, Any] | None = None
    bad_validations: int = 0
    stopped: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "model": self.model,
            "optimizer": self.optimizer,
            "failed": self.failed,
            "best": self.best,
            "bad_validations": self.bad_validations,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        return cls(int(d["iteration"]), d["model"], d["optimizer"], d.get("failed"),
                   d.get("best"), int(d.get("bad_validations", 0)), d.get("stopped"))


def init_model(spec: GroupSpec, seed: int) -> nn.Module:
    """The initial model of the run with ``seed`` (independent of the global RNG state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return build_objective_model(spec.objective, spec.architecture, spec.latent_dim,
                                     spec.objective_options, **spec.model_fields())


def draw_chunk(
    seed: int, chunk: int, n: int, batch: int, latent_dim: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Indices (CHUNK, B), eps (CHUNK, B, d), u (CHUNK, B) of iterations chunk·CHUNK + k."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, "data", chunk))
    idx = distinct_rows(torch.randint(n, (CHUNK, batch), generator=g, device=device), n, g)
    eps = torch.randn(CHUNK, batch, latent_dim, generator=g, device=device)
    u = torch.rand(CHUNK, batch, generator=g, device=device)
    return idx, eps, u


def distinct_rows(idx: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of ``idx`` (C, B) made duplicate-free: uniform random B-subsets of range(n).

    Every repeat within a row (each copy after the first) is redrawn uniformly from range(n)
    until none is left. The procedure treats every label alike, so each row ends a uniformly
    random B-subset, in random order (for B > n/2, B entries of a random permutation
    instead). The minibatch estimators of SPEC §5, used by the
    ablation objectives, assume B distinct examples: with repeats their Î is biased low, by
    0.06 nats at N = 8,192, B = 128. Expected redraws per row are about B²/2n.
    """
    if idx.shape[1] > n:
        raise ValueError(f"cannot draw {idx.shape[1]} distinct examples from {n}")
    if 2 * idx.shape[1] > n:  # redraws would be many: take B of a random permutation
        keys = torch.rand(idx.shape[0], n, generator=generator, device=idx.device)
        return keys.argsort(1)[:, : idx.shape[1]]
    while True:
        ordered, where = idx.sort(dim=1, stable=True)
        later = torch.zeros_like(idx, dtype=torch.bool)
        later[:, 1:] = ordered[:, 1:] == ordered[:, :-1]  # (C, B), in sorted order
        count = int(later.sum())
        if count == 0:
            return idx
        repeat = torch.zeros_like(later).scatter_(1, where, later)  # back to row order
        idx[repeat] = torch.randint(n, (count,), generator=generator, device=idx.device)


def _uses_loop(meta: nn.Module, device: torch.device) -> bool:
    """Models with convolutions on CPU run model after model over the stacked storage
    (faster there: see benchmark/ensemble.py)."""
    return device.type == "cpu" and has_convolutions(meta)


def _build_ensemble(
    spec: GroupSpec, device: torch.device, states: list[RunState] | None
) -> Ensemble:
    if states is None:
        dicts = [init_model(spec, s).state_dict() for s in spec.seeds]
    else:
        dicts = [st.model for st in states]
    resume = states is not None and states[0].iteration > 0
    meta = init_model(spec, 0).to("meta").train()
    objective, options = get_objective(spec.objective), dict(spec.objective_options)

    def loss(model, x, beta, eps, u):
        return objective.loss(model, x, beta, {"eps": eps, "u": u}, options)

    return build_ensemble(
        dicts,
        [st.optimizer for st in states] if resume else None,
        meta=meta,
        loss=loss,
        betas=spec.betas,
        reasons=[None if states is None else st.failed for st in (states or spec.seeds)],
        lr=spec.learning_rate,
        device=device,
        loop=_uses_loop(meta, device),
    )


def _run_states(ens: Ensemble, iteration: int, stopping: EarlyStopping | None
                ) -> list[RunState]:
    """Per-run CPU copies of weights, Adam moments and validation state (one host sync)."""
    for r, t in enumerate(ens.fail_at.cpu().tolist()):
        if t >= 0 and ens.reasons[r] is None:
            ens.reasons[r] = f"non-finite loss at iteration {t}"
    return [
        RunState(
            iteration=iteration,
            model=model,
            optimizer={"step": iteration, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
            failed=ens.reasons[r],
            **(stopping.run_fields(r) if stopping is not None else {}),
        )
        for r, (model, exp_avg, exp_avg_sq) in enumerate(per_run_tensors(ens))
    ]


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


@contextmanager
def _backend_flags_restored() -> Iterator[None]:
    """PyTorch's process-wide TF32 and cuDNN flags put back as they were on exit.

    Training turns them on for CUDA (:func:`_setup_device`); without this, whatever runs
    next in the process (``rdbench demo`` evaluates right after training) would inherit them.
    """
    flags = [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
             (torch.backends.cudnn, "benchmark")]
    saved = [getattr(obj, name) for obj, name in flags]
    flushing = flushes_denormals()
    try:
        yield
    finally:
        for (obj, name), value in zip(flags, saved, strict=True):
            setattr(obj, name, value)
        torch.set_flush_denormal(flushing)


def flushes_denormals() -> bool:
    """Whether the CPU now treats float32 subnormals as zero (``torch.set_flush_denormal``
    has no getter: a subnormal times one is zero only when it does)."""
    return bool((torch.tensor(1e-39, dtype=torch.float32) * 1.0).item() == 0.0)


def _setup_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cpu":
        _keep_freed_memory()
        # Adam's first moment of a weight whose gradient stays zero (an input pixel that is
        # always 0, a dead unit) decays by β₁ each step into float32's subnormal range, where
        # x86 arithmetic is many times slower: a 20,000-step mlp1 group slowed from 4 to under
        # 2 it/s as a quarter of one moment went subnormal. Flushed, they are exactly the
        # zeros they are about to become; the weights are unchanged (the update of a
        # subnormal moment is far below a float32 step of any weight).
        torch.set_flush_denormal(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def _images_on_device(images: np.ndarray, image_shape: tuple[int, int, int],
                      device: torch.device) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) uint8 on ``device``."""
    c, h, w = image_shape
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, c):
        raise InputError(f"expected uint8 images (N, {h}, {w}, {c}), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if len(images) == 0:
        raise InputError("the training set is empty")
    return channels_first(images, device)


def _check_states(spec: GroupSpec, states: list[RunState] | None) -> int:
    if states is None:
        return 0
    if len(states) != spec.n_runs:
        raise ValueError(f"{len(states)} states for a group of {spec.n_runs} runs")
    its = {st.iteration for st in states}
    if len(its) != 1:
        raise ValueError(f"runs of a group must resume at one iteration, got {sorted(its)}")
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


def _rows(acc: torch.Tensor, count: torch.Tensor, keys: list[str],
          checks: dict[str, torch.Tensor] | None, stopping: EarlyStopping | None
          ) -> list[dict[str, float]]:
    """Window means per run (NaN for a run with no live step in the window), then the
    validation means of this iteration (every row has the columns once there is a
    validation set: NaN where the row's iteration had no validation)."""
    means = (acc / count[:, None]).cpu().tolist()  # (M, K)
    rows = [dict(zip(keys, row, strict=True)) for row in means]
    if stopping is not None:
        checks = checks or {f"val_{k}": torch.full((len(rows),), math.nan) for k in keys}
        for key, values in checks.items():
            for row, v in zip(rows, values.cpu().tolist(), strict=True):
                row[key] = v
    return rows


def train_group(
    spec: GroupSpec,
    images: np.ndarray,
    *,
    device: str | torch.device,
    states: list[RunState] | None = None,
    validation: np.ndarray | None = None,
    on_log: Callable[[int, list[dict[str, float]]], None] | None = None,
    on_checkpoint: Callable[[list[RunState]], None] | None = None,
    progress: bool = True,
) -> list[RunState]:
    """Train every run of ``spec`` on ``images`` (N, H, W, C) uint8, the split's train set.

    ``states`` resumes the runs (all at one iteration). ``validation`` (V, H, W, C) uint8:
    held-out images, evaluated every ``spec.validate_every`` iterations and at the end
    (:mod:`benchmark.validation`: best weights, early stopping). ``on_log(it, rows)`` gets,
    every ``log_every`` iterations (and at the end), one dict per run of the objective's
    outputs averaged over the steps since the last log (and ``val_<key>``, NaN where the row
    has no validation). ``on_checkpoint(states)`` is called every ``checkpoint_every``
    iterations and at the end. Returns the final states. On CUDA, TF32 and cuDNN autotuning
    are on while it trains, on the CPU the flushing of subnormals, and as they were
    afterwards.
    """
    with _backend_flags_restored():
        return _train_group(spec, images, device, states, validation, on_log, on_checkpoint,
                            progress)


def _early_stopping(spec: GroupSpec, ens: Ensemble, validation: np.ndarray | None,
                    states: list[RunState] | None, device: torch.device
                    ) -> EarlyStopping | None:
    if validation is None or not len(validation):
        return None
    if spec.validate_every < 1:
        raise InputError("a validation set needs validate_every >= 1")
    images = _images_on_device(validation, spec.image_shape, device)
    return EarlyStopping(ens, images, spec.seeds, spec.latent_dim, spec.batch_size,
                         spec.patience, states)


def _train_group(spec, images, device, states, validation, on_log, on_checkpoint, progress):
    start = _check_states(spec, states)
    if start >= spec.iterations and states is not None:
        return states
    device = _setup_device(device)
    data = _images_on_device(images, spec.image_shape, device)  # (N, C, H, W) uint8
    ens = _build_ensemble(spec, device, states)
    stopping = _early_stopping(spec, ens, validation, states, device)
    stream = _Stream(spec.seeds, len(data), spec.batch_size, spec.latent_dim, device)
    bf16 = spec.precision == "bf16" and device.type == "cuda"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    step = make_step(ens, autocast)
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
        x = to_float(data[idx])  # (M, B, C, H, W)
        keys, values = step(x, eps, u, t)
        if acc.numel() == 0:
            acc, count = torch.zeros_like(values), torch.zeros(spec.n_runs, device=device)
        acc += values
        count += ens.alive
        bar.update()
        it = t + 1
        last = it == spec.iterations
        checks = (stopping.validate(it) if stopping is not None
                  and (it % spec.validate_every == 0 or last) else None)
        if on_log is not None and (it % spec.log_every == 0 or last):
            on_log(it, _rows(acc, count, keys, checks, stopping))
            acc.zero_(), count.zero_()
        if on_checkpoint is not None and it % spec.checkpoint_every == 0 and not last:
            on_checkpoint(_run_states(ens, it, stopping))
    bar.close()
    final = _run_states(ens, spec.iterations, stopping)
    if on_checkpoint is not None:
        on_checkpoint(final)
    return final
