"""``rdbench bench train``: throughput of the vectorised trainer vs a plain per-model loop.

For every architecture and group size M, both train the same M β-VAEs (batch 128, Adam,
same steps) on random uint8 images held on the device:
- ``vectorised``: :func:`benchmark.trainer.train_group` (stacked weights, one Adam);
- ``loop``: M ordinary modules, M ``torch.optim.Adam``, one model after the other.
Throughput is model-iterations per second, timed after a warm-up. Model FLOPs per
model-iteration = 3 (forward + backward) × 2 × forward MACs × batch, counted analytically
(:func:`benchmark.models.forward_macs`); MFU = achieved FLOP/s / measured dense matmul peak
(fp32, TF32 allowed on CUDA as in the trainer). The paper grid projection (SPEC §4: 12 β ×
5 seeds × 257,000 iterations × 19 splits per architecture) assumes groups of 60 at the
throughput of the largest measured group.

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
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rdbench import _lazy
from rdbench.io import InputError, check_bench_output, report_bench_result

if TYPE_CHECKING:  # torch is imported only when the benchmark runs (fast ``rdbench --help``)
    import numpy as np
    import torch

ARCHITECTURES = ("mlp1", "mlp3", "cnn1", "cnn3")  # == benchmark.models.ARCHITECTURES

BATCH = 128  # the paper's; --batch changes it for one benchmark run
BENCH_IMAGES = 4096  # random uint8 images the bench trains on
PARAM_PASSES = 10  # 4-byte passes over each parameter per step (see the module docstring)
PAPER_MODEL_ITERATIONS = 12 * 5 * 257_000 * 19  # per architecture: β × seeds × its × splits


def register_bench_train(benches: argparse._SubParsersAction) -> None:
    """Add ``rdbench bench train`` (called by ``benchmark.cli.register_bench``)."""
    p = benches.add_parser("train", help="vectorised trainer vs per-model loop (SPEC §8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--architectures",
        nargs="+",
        default=list(ARCHITECTURES),
        metavar="ARCH",
        help=f"subset of {' '.join(ARCHITECTURES)}",
    )
    p.add_argument(
        "--models",
        nargs="+",
        type=int,
        default=None,
        metavar="M",
        help="group sizes (default 1 4 12 on CPU, 1 4 12 60 on CUDA)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--batch", type=int, default=BATCH, help=f"minibatch size (default {BATCH})")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                   help="write the results as JSON here (an existing file only if it is an "
                        "earlier `bench train` result)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file that is not a `bench train` result")
    p.add_argument("--quick", action="store_true", help="few steps, small groups (smoke run)")
    p.set_defaults(handler=_lazy.handler("benchmark.bench:main"))


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo (with the thread count)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def _betas(m: int) -> tuple[float, ...]:
    """m β values spread geometrically over [0.01, 3] (the paper's range, roughly)."""
    return tuple(0.01 * 300 ** (i / max(m - 1, 1)) for i in range(m))


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """Measured dense fp32 matmul FLOP/s (2 n³ per product; TF32 on CUDA as in training)."""
    import torch

    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    return 2 * n**3 / _best_seconds(lambda: a @ b, device, repeats)


def copy_bandwidth(device: torch.device, n_bytes: int | None = None, repeats: int = 5) -> float:
    """Measured bytes/s of a device-to-device copy (bytes read + bytes written)."""
    import torch

    n_bytes = n_bytes or (2 << 30 if device.type == "cuda" else 256 << 20)
    src = torch.empty(n_bytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * n_bytes / _best_seconds(lambda: dst.copy_(src), device, repeats)


def _best_seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``work`` (after one warm-up), synced."""
    work()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        work()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def mfu_ceiling(flops: float, n_bytes: float, peak: float, bandwidth: float) -> float:
    """Roofline bound on the MFU of work of ``flops`` that must move ``n_bytes``."""
    return flops / max(flops / peak, n_bytes / bandwidth) / peak


def time_vectorised(
    arch: str,
    m: int,
    steps: int,
    warmup: int,
    images: np.ndarray,
    device: torch.device,
    batch: int = BATCH,
) -> float:
    """Seconds for ``steps`` iterations of a group of m models, after ``warmup`` iterations."""
    from benchmark.trainer import GroupSpec, train_group

    marks: list[float] = []

    def mark(it: int, rows: list) -> None:  # on_log syncs (metrics to host)
        marks.append(time.perf_counter())

    spec = GroupSpec(
        arch,
        "beta_vae",
        {},
        _betas(m),
        tuple(range(m)),
        warmup + steps,
        batch,
        1e-3,
        log_every=warmup,
        checkpoint_every=warmup + steps,
    )
    train_group(spec, images, device=device, on_log=mark, progress=False)
    return marks[-1] - marks[0]


def time_loop(
    arch: str,
    m: int,
    steps: int,
    warmup: int,
    images: np.ndarray,
    device: torch.device,
    batch: int = BATCH,
) -> float:
    """Seconds for ``steps`` iterations of m plain models trained one after the other."""
    import torch

    from benchmark.objectives import beta_vae
    from benchmark.trainer import GroupSpec, init_model

    spec = GroupSpec(arch, "beta_vae", {}, (1.0,), (0,), 1, batch, 1e-3, 1, 1)
    nets = [init_model(spec, s).to(device) for s in range(m)]
    opts = [torch.optim.Adam(net.parameters(), lr=1e-3) for net in nets]
    betas = [torch.tensor(b, device=device) for b in _betas(m)]
    data = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        for net, opt, beta in zip(nets, opts, betas, strict=True):
            x = data[torch.randint(len(data), (batch,), device=device)].float() / 255
            noise = {
                "eps": torch.randn(batch, 10, device=device),
                "u": torch.rand(batch, device=device),
            }
            beta_vae.loss(net, x, beta, noise, {})["loss"].mean().backward()
            opt.step()
            opt.zero_grad()
    _sync(device)
    return time.perf_counter() - t0


def _defaults(args: argparse.Namespace, device: torch.device) -> tuple[list[int], int, int, int]:
    """Group sizes, timed steps, warm-up steps and repeats for this device and mode."""
    gpu = device.type == "cuda"
    sizes = args.models or ([1, 4] if args.quick else [1, 4, 12, 60] if gpu else [1, 4, 12])
    steps = args.steps or (2 if args.quick else 50 if gpu else 6)
    warmup = 1 if args.quick else 10 if gpu else 2
    # a shared CPU is noisy (the same step varies by ±20 %): best of 5 interleaved runs
    repeats = 1 if args.quick else 2 if gpu else 5
    return sizes, steps, warmup, repeats


def _validate(args: argparse.Namespace) -> None:
    unknown = [a for a in args.architectures if a not in ARCHITECTURES]
    if unknown:
        raise InputError(f"unknown architecture {unknown[0]!r}; valid: {' '.join(ARCHITECTURES)}")
    if args.models is not None and min(args.models) < 1:
        raise InputError("--models: group sizes must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise InputError("--steps must be >= 1")
    if not 1 <= args.batch <= BENCH_IMAGES:
        raise InputError(f"--batch must be between 1 and {BENCH_IMAGES} (the bench's images; "
                         f"minibatches are distinct examples), got {args.batch}")


def measure(
    arch: str,
    m: int,
    steps: int,
    warmup: int,
    images: np.ndarray,
    device: torch.device,
    repeats: int = 1,
    batch: int = BATCH,
) -> dict:
    """One row of raw figures: model-iterations/s of both trainers (best of ``repeats``,
    interleaved), FLOPs and parameter bytes per model-iteration (ratios: :func:`add_ratios`)."""
    from benchmark.models import build_model, count_parameters, forward_macs

    flops = 6 * forward_macs(arch) * batch  # per model-iteration
    param_bytes = PARAM_PASSES * 4 * count_parameters(build_model(arch))
    vec = loop = 0.0
    for _ in range(repeats):  # interleaved so that a noisy neighbour hits both alike
        t_vec = time_vectorised(arch, m, steps, warmup, images, device, batch)
        vec = max(vec, m * steps / t_vec)
        loop = max(loop, m * steps / time_loop(arch, m, steps, warmup, images, device, batch))
    return {
        "architecture": arch,
        "models": m,
        "steps": steps,
        "batch": batch,
        "repeats": repeats,
        "vectorised_its": vec,
        "loop_its": loop,
        "speedup": vec / loop,
        "flops_per_model_it": flops,
        "param_bytes_per_model_it": param_bytes,
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


def projection(rows: list[dict]) -> dict | None:
    """Hours for the paper grid per architecture, at the largest measured group's speed
    (None unless measured at the paper's batch size)."""
    if any(r["batch"] != BATCH for r in rows):
        return None
    hours = {}
    for arch in dict.fromkeys(r["architecture"] for r in rows):
        best = max((r for r in rows if r["architecture"] == arch), key=lambda r: r["models"])
        hours[arch] = PAPER_MODEL_ITERATIONS / best["vectorised_its"] / 3600
    return {
        "model_iterations_per_architecture": PAPER_MODEL_ITERATIONS,
        "hours": hours,
        "total_hours": sum(hours.values()),
    }


def markdown(result: dict) -> str:
    """The README table of a result."""
    bw = result.get("bandwidth_gbs")
    lines = [
        f"Device: {result['device_name']}; peak dense matmul "
        f"{result['peak_tflops']:.2f} TFLOP/s"
        + (f", copy bandwidth {bw:,.0f} GB/s" if bw else "")
        + f"; batch {result['rows'][0]['batch'] if result['rows'] else BATCH}.",
        "",
        "| arch | M | vectorised it/s | loop it/s | speed-up | vec TFLOP/s | vec MFU "
        "| param-traffic MFU ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['architecture']} | {r['models']} | {r['vectorised_its']:.1f} | "
            f"{r['loop_its']:.1f} | {r['speedup']:.2f}× | "
            f"{r['vectorised_tflops']:.3f} | {100 * r['vectorised_mfu']:.1f} % | "
            f"{100 * r['mfu_ceiling']:.0f} % |"
        )
    proj = result["projection"]
    if proj is None:
        lines += ["", f"No paper grid projection: it needs the paper's batch of {BATCH}."]
    else:
        parts = ", ".join(f"{a} {h:,.0f} h" for a, h in proj["hours"].items())
        lines += [
            "",
            f"Paper grid projection (groups of 60 at the largest measured M's speed): "
            f"{parts}; total {proj['total_hours']:,.0f} h on this device.",
        ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from benchmark.trainer import _setup_device
    from rdbench.device import resolve_device

    _validate(args)
    device = _setup_device(resolve_device(args.device))
    out = check_bench_output(args.out, args.force, "train")
    sizes, steps, warmup, repeats = _defaults(args, device)
    images = np.random.default_rng(0).integers(0, 256, (BENCH_IMAGES, 32, 32, 3),
                                               dtype=np.uint8)
    peak = matmul_peak(device)
    bandwidth = copy_bandwidth(device)
    batch = args.batch
    rows = []
    for arch in args.architectures:
        for m in sizes:
            rows.append(measure(arch, m, steps, warmup, images, device, repeats, batch))
            r = rows[-1]
            print(
                f"{arch} M={m}: vectorised {r['vectorised_its']:.1f} it/s, "
                f"loop {r['loop_its']:.1f} it/s ({r['speedup']:.2f}×)",
                flush=True,
            )
    # a noisy neighbour can only make a ceiling look lower: take the best of two readings
    peak = max(peak, matmul_peak(device))
    bandwidth = max(bandwidth, copy_bandwidth(device))
    result = {
        "bench": "train",
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
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
