"""``rdbench bench train``: throughput of the vectorised trainer vs a plain per-model loop.

The bench times *cases*: a case is a network on an input shape with a likelihood
(:class:`Case`: architecture, image shape (C, H, W), likelihood, decoder σ, architecture
options). The case sets (``--cases``):
- ``paper``: the paper's four networks on 3×32×32 Tetrominoes, Bernoulli (the paper grid
  projection and the README's table come from these rows only);
- ``shapes``: ``mlp1`` and ``cnn1`` on 1×28×28 (MNIST) and 3×64×64 (3dShapes, CelebA);
- ``likelihoods``: ``kp-mnist`` on 1×28×28 with a Gaussian decoder of learned σ (Kumar &
  Poole's network, full width: 12 M parameters) and ``mlp1`` with σ = 0.1 on 3×32×32.
Each case trains on random uint8 images of its shape, held on the device.

For every case and group size M, both train the same M β-VAEs (batch 128, Adam, same
steps), built by :func:`benchmark.trainer.init_model` from one :class:`GroupSpec`:
- ``vectorised``: :func:`benchmark.trainer.train_group` (stacked weights, one Adam);
- ``loop``: M ordinary modules, M ``torch.optim.Adam``, one model after the other, each
  step the spec's objective (its distortion through ``model.likelihood``).
Throughput is model-iterations per second, timed after a warm-up. On the CPU a case of more
than ``HEAVY_FLOPS`` per model-iteration (``kp-mnist``) is timed at groups of 1 and 4 over 2
steps (best of 2), the others at 1, 4 and 12 over 6 steps (best of 5).

Model FLOPs per model-iteration = 3 (forward + backward) × 2 × forward MACs × batch, counted
analytically layer by layer (:func:`benchmark.models.describe`, which
:func:`~benchmark.models.forward_macs` sums; BatchNorm, activations and the likelihood
count 0); MFU = achieved FLOP/s / measured dense matmul peak (fp32, TF32 allowed on CUDA as
in the trainer). The paper grid projection (SPEC §4: 12 β × 5 seeds × 257,000 iterations ×
19 splits per architecture) assumes groups of 60 at the throughput of the largest measured
group of each paper row.

``mfu_ceiling`` is a roofline bound on the MFU from parameter traffic alone: every step
must move each parameter's bytes ``PARAM_PASSES`` times (forward read, input-gradient read,
gradient write, and fused Adam's 4 reads + 3 writes of weight, gradient and two moments), so
a model-iteration takes at least max(FLOPs / peak, bytes / bandwidth), with the bandwidth
measured by a device-to-device copy. Activation traffic is left out, so for the CNNs, whose
activations dominate, the bound is loose. At batch 128 Adam's traffic bounds the MLPs well
below the matmul peak whatever the kernels do; ``--batch`` shows the MFU where it does not
(without a paper-grid projection, which needs batch 128).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.hardware import copy_bandwidth, matmul_peak, mfu_ceiling
from rdbench import _lazy
from rdbench.device import device_name, synchronize
from rdbench.io import InputError, check_bench_output, report_bench_result

if TYPE_CHECKING:  # torch is imported only when the benchmark runs (fast ``rdbench --help``)
    import numpy as np
    import torch

    from benchmark.trainer import GroupSpec

BATCH = 128  # the paper's; --batch changes it for one benchmark run
BENCH_IMAGES = 4096  # random uint8 images the bench trains on, per case
PARAM_PASSES = 10  # 4-byte passes over each parameter per step (see the module docstring)
PAPER_MODEL_ITERATIONS = 12 * 5 * 257_000 * 19  # per architecture: β × seeds × its × splits
PAPER_SHAPE = (3, 32, 32)  # Tetrominoes (C, H, W)
HEAVY_FLOPS = 50e9  # per model-iteration: above it a CPU times few models and steps
# --quick narrows every network through its [architecture_options]
QUICK_OPTIONS = {"hidden": 32, "channels": 8, "width": 0.05}


@dataclass(frozen=True)
class Case:
    """One network to time: architecture, input (C, H, W), likelihood, σ, options."""

    kind: str  # the case set: "paper", "shapes" or "likelihoods"
    architecture: str
    image_shape: tuple[int, int, int] = PAPER_SHAPE
    likelihood: str = "bernoulli"
    decoder_std: float | str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # [architecture_options]

    def input_label(self) -> str:
        return "×".join(map(str, self.image_shape))

    def likelihood_label(self) -> str:
        if self.likelihood != "gaussian":
            return self.likelihood
        return "gaussian σ learned" if self.decoder_std == "learned" \
            else f"gaussian σ={self.decoder_std:g}"

    def architecture_label(self) -> str:
        return " ".join([self.architecture, *(f"{k}={v:g}" for k, v in self.options.items())])


CASES = (
    Case("paper", "mlp1"),
    Case("paper", "mlp3"),
    Case("paper", "cnn1"),
    Case("paper", "cnn3"),
    Case("shapes", "mlp1", (1, 28, 28)),
    Case("shapes", "cnn1", (1, 28, 28)),
    Case("shapes", "mlp1", (3, 64, 64)),
    Case("shapes", "cnn1", (3, 64, 64)),
    Case("likelihoods", "kp-mnist", (1, 28, 28), "gaussian", "learned"),
    Case("likelihoods", "mlp1", PAPER_SHAPE, "gaussian", 0.1),
)
CASE_SETS = ("paper", "shapes", "likelihoods", "all")
ARCHITECTURES = tuple(dict.fromkeys(c.architecture for c in CASES))


def register_bench_train(benches: argparse._SubParsersAction) -> None:
    """Add ``rdbench bench train`` (called by ``benchmark.cli.register_bench``)."""
    p = benches.add_parser("train", help="vectorised trainer vs per-model loop (SPEC §8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--cases", nargs="+", default=["all"], choices=CASE_SETS, metavar="SET",
                   help="case sets to time: paper (4 networks on 3×32×32, Bernoulli), shapes "
                        "(mlp1, cnn1 on 1×28×28 and 3×64×64), likelihoods (kp-mnist and mlp1 "
                        "with Gaussian decoders), all (default)")
    p.add_argument(
        "--architectures",
        nargs="+",
        default=None,
        metavar="ARCH",
        help=f"only the cases of these networks ({' '.join(ARCHITECTURES)})",
    )
    p.add_argument(
        "--models",
        nargs="+",
        type=int,
        default=None,
        metavar="M",
        help="group sizes (default 1 4 12 on CPU, 1 4 on CPU above 50 GFLOP per "
             "model-iteration, 1 4 12 60 on CUDA)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--batch", type=int, default=BATCH, help=f"minibatch size (default {BATCH})")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                   help="write the results as JSON here (an existing file only if it is an "
                        "earlier `bench train` result)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file that is not a `bench train` result")
    p.add_argument("--quick", action="store_true",
                   help="narrow layers, few steps, small groups (smoke run)")
    p.set_defaults(handler=_lazy.handler("benchmark.bench:main"))


def _betas(m: int) -> tuple[float, ...]:
    """m β values spread geometrically over [0.01, 3] (the paper's range, roughly)."""
    return tuple(0.01 * 300 ** (i / max(m - 1, 1)) for i in range(m))


# ---------------------------------------------------------------- the two trainers
def group_spec(case: Case, m: int, iterations: int, batch: int = BATCH,
               log_every: int = 1) -> GroupSpec:
    """The group of m β-VAEs of ``case`` that both trainers train (β spread, seeds 0..m-1)."""
    from benchmark.trainer import GroupSpec

    return GroupSpec(case.architecture, "beta_vae", {}, _betas(m), tuple(range(m)), iterations,
                     batch, 1e-3, log_every=log_every, checkpoint_every=iterations,
                     image_shape=case.image_shape, likelihood=case.likelihood,
                     decoder_std=case.decoder_std, architecture_options=dict(case.options))


def case_images(case: Case, n: int = BENCH_IMAGES, seed: int = 0) -> np.ndarray:
    """n random uint8 images (n, H, W, C) of the case's shape."""
    import numpy as np

    c, h, w = case.image_shape
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def time_vectorised(case: Case, m: int, steps: int, warmup: int, images: np.ndarray,
                    device: torch.device, batch: int = BATCH) -> float:
    """Seconds for ``steps`` iterations of a group of m models, after ``warmup`` iterations."""
    from benchmark.trainer import train_group

    marks: list[float] = []

    def mark(it: int, rows: list) -> None:  # on_log syncs (metrics to host)
        marks.append(time.perf_counter())

    spec = group_spec(case, m, warmup + steps, batch, log_every=warmup)
    train_group(spec, images, device=device, on_log=mark, progress=False)
    return marks[-1] - marks[0]


def time_loop(case: Case, m: int, steps: int, warmup: int, images: np.ndarray,
              device: torch.device, batch: int = BATCH) -> float:
    """Seconds for ``steps`` iterations of the same m models trained one after the other,
    each an ordinary module with its own ``torch.optim.Adam``."""
    import torch

    from benchmark.objectives import get_objective
    from benchmark.trainer import init_model
    from imagesets.tensor import channels_first, to_float

    spec = group_spec(case, m, warmup + steps, batch)
    loss = get_objective(spec.objective).loss
    nets = [init_model(spec, s).to(device) for s in spec.seeds]
    opts = [torch.optim.Adam(net.parameters(), lr=spec.learning_rate) for net in nets]
    betas = [torch.tensor(b, device=device) for b in spec.betas]
    data = channels_first(images, device)  # (N, C, H, W) uint8
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            t0 = time.perf_counter()
        for net, opt, beta in zip(nets, opts, betas, strict=True):
            x = to_float(data[torch.randint(len(data), (batch,), device=device)])
            noise = {"eps": torch.randn(batch, spec.latent_dim, device=device),
                     "u": torch.rand(batch, device=device)}
            loss(net, x, beta, noise, spec.objective_options)["loss"].mean().backward()
            opt.step()
            opt.zero_grad()
    synchronize(device)
    return time.perf_counter() - t0


def case_costs(case: Case) -> tuple[int, int]:
    """(forward MACs per example, parameters) of one model of ``case``, its options and
    likelihood included (what :func:`benchmark.models.forward_macs` counts, per layer)."""
    from benchmark.models import count_parameters, describe
    from benchmark.trainer import init_model

    model = init_model(group_spec(case, 1, 1), 0)
    return sum(r["macs"] for r in describe(model, case.image_shape)), count_parameters(model)


# ---------------------------------------------------------------- what to time
def select_cases(args: argparse.Namespace) -> list[Case]:
    """The cases of ``--cases`` of the ``--architectures`` (narrowed under ``--quick``)."""
    from benchmark.architectures import get_architecture

    sets = set(CASE_SETS[:-1]) if "all" in args.cases else set(args.cases)
    chosen = [c for c in CASES if c.kind in sets
              and (args.architectures is None or c.architecture in args.architectures)]
    if not args.quick:
        return chosen
    narrowed = []
    for c in chosen:
        accepted = get_architecture(c.architecture).options
        options = {k: v for k, v in QUICK_OPTIONS.items() if k in accepted}
        narrowed.append(Case(c.kind, c.architecture, c.image_shape, c.likelihood,
                             c.decoder_std, {**options, **c.options}))
    return narrowed


def _plan(args: argparse.Namespace, device: torch.device, flops: float
          ) -> tuple[list[int], int, int, int]:
    """Group sizes, timed steps, warm-up steps and repeats of a case of ``flops`` per
    model-iteration on this device, in this mode."""
    gpu = device.type == "cuda"
    few = args.quick or (not gpu and flops > HEAVY_FLOPS)
    sizes = args.models or ([1, 2] if args.quick else [1, 4] if few
                            else [1, 4, 12, 60] if gpu else [1, 4, 12])
    steps = args.steps or (2 if few else 50 if gpu else 6)
    warmup = 1 if few else 10 if gpu else 2
    # a shared CPU is noisy (the same step varies by ±20 %): best of 5 interleaved runs
    repeats = 1 if args.quick else 2 if gpu or few else 5
    return sizes, steps, warmup, repeats


def _validate(args: argparse.Namespace) -> None:
    archs = args.architectures or []
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        raise InputError(f"unknown architecture {unknown[0]!r}; the bench times "
                         f"{' '.join(ARCHITECTURES)}")
    bad = [s for s in args.cases if s not in CASE_SETS]
    if bad:
        raise InputError(f"unknown case set {bad[0]!r}; valid: {' '.join(CASE_SETS)}")
    if not select_cases(args):
        raise InputError(f"no case of --cases {' '.join(args.cases)} uses "
                         f"{' or '.join(archs)}: see `rdbench bench train --help`")
    if args.models is not None and min(args.models) < 1:
        raise InputError("--models: group sizes must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise InputError("--steps must be >= 1")
    if not 1 <= args.batch <= BENCH_IMAGES:
        raise InputError(f"--batch must be between 1 and {BENCH_IMAGES} (the bench's images; "
                         f"minibatches are distinct examples), got {args.batch}")


# ---------------------------------------------------------------- rows and the table
def case_fields(case: Case) -> dict[str, Any]:
    """The JSON columns that say which case a row measures."""
    return {"case": case.kind, "architecture": case.architecture,
            "image_shape": list(case.image_shape), "likelihood": case.likelihood,
            "decoder_std": case.decoder_std, "architecture_options": dict(case.options)}


def measure(case: Case, m: int, steps: int, warmup: int, images: np.ndarray,
            device: torch.device, repeats: int = 1, batch: int = BATCH) -> dict:
    """One row of raw figures: model-iterations/s of both trainers (best of ``repeats``,
    interleaved), FLOPs and parameter bytes per model-iteration (ratios: :func:`add_ratios`)."""
    macs, n_params = case_costs(case)
    vec = loop = 0.0
    for _ in range(repeats):  # interleaved so that a noisy neighbour hits both alike
        t_vec = time_vectorised(case, m, steps, warmup, images, device, batch)
        vec = max(vec, m * steps / t_vec)
        loop = max(loop, m * steps / time_loop(case, m, steps, warmup, images, device, batch))
    return {
        **case_fields(case),
        "models": m,
        "steps": steps,
        "batch": batch,
        "repeats": repeats,
        "vectorised_its": vec,
        "loop_its": loop,
        "speedup": vec / loop,
        "parameters": n_params,
        "flops_per_model_it": 6 * macs * batch,
        "param_bytes_per_model_it": PARAM_PASSES * 4 * n_params,
    }


def add_ratios(row: dict, peak: float, bandwidth: float) -> dict:
    """``row`` with TFLOP/s, MFU and the parameter-traffic MFU ceiling (peak in FLOP/s,
    bandwidth in bytes/s)."""
    flops = row["flops_per_model_it"]
    return {
        **row,
        "vectorised_tflops": row["vectorised_its"] * flops / 1e12,
        "loop_tflops": row["loop_its"] * flops / 1e12,
        "vectorised_mfu": row["vectorised_its"] * flops / peak,
        "loop_mfu": row["loop_its"] * flops / peak,
        "mfu_ceiling": mfu_ceiling(flops, row["param_bytes_per_model_it"], peak, bandwidth),
    }


def _measure_case(case: Case, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every group size's row of one case, printed as it is measured."""
    images = case_images(case)
    sizes, steps, warmup, repeats = _plan(args, device, 6 * case_costs(case)[0] * args.batch)
    rows = []
    for m in sizes:
        rows.append(measure(case, m, steps, warmup, images, device, repeats, args.batch))
        r = rows[-1]
        print(f"{case.architecture_label()} {case.input_label()} {case.likelihood_label()} "
              f"M={m}: vectorised {r['vectorised_its']:.1f} it/s, loop {r['loop_its']:.1f} "
              f"it/s ({r['speedup']:.2f}×)", flush=True)
    return rows


def main(args: argparse.Namespace) -> int:
    import torch

    from benchmark.bench_table import markdown, projection
    from benchmark.trainer import _setup_device
    from rdbench.device import resolve_device

    _validate(args)
    device = _setup_device(resolve_device(args.device))
    out = check_bench_output(args.out, args.force, "train")
    peak = matmul_peak(device)
    bandwidth = copy_bandwidth(device)
    rows = [row for case in select_cases(args) for row in _measure_case(case, args, device)]
    # a noisy neighbour can only make a ceiling look lower: take the best of two readings
    peak = max(peak, matmul_peak(device))
    bandwidth = max(bandwidth, copy_bandwidth(device))
    result = {
        "bench": "train",
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": bool(args.quick),
        "peak_tflops": peak / 1e12,
        "bandwidth_gbs": bandwidth / 1e9,
        "rows": [add_ratios(r, peak, bandwidth) for r in rows],
        "projection": projection(rows),
    }
    report_bench_result(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench")
    register_bench_train(parser.add_subparsers(dest="bench", required=True))
    namespace = parser.parse_args()
    raise SystemExit(main(namespace))
