"""``rdbench bench train``'s results as people read them: the paper-grid projection and the
Markdown table of the README and docs/performance.md."""

from __future__ import annotations

from benchmark.bench import BATCH, PAPER_MODEL_ITERATIONS, Case


def projection(rows: list[dict]) -> dict | None:
    """Hours for the paper grid per paper architecture (rows of the ``paper`` cases only:
    3×32×32, Bernoulli), at its largest measured group's speed (None unless there are paper
    rows, all measured at the paper's batch size)."""
    paper = [r for r in rows if r["case"] == "paper"]
    if not paper or any(r["batch"] != BATCH for r in paper):
        return None
    hours = {}
    for arch in dict.fromkeys(r["architecture"] for r in paper):
        best = max((r for r in paper if r["architecture"] == arch), key=lambda r: r["models"])
        hours[arch] = PAPER_MODEL_ITERATIONS / best["vectorised_its"] / 3600
    return {
        "model_iterations_per_architecture": PAPER_MODEL_ITERATIONS,
        "hours": hours,
        "total_hours": sum(hours.values()),
    }


def _its(value: float) -> str:
    """model-it/s for the table: one decimal, three below 1 (kp-mnist on a CPU)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _table_row(r: dict) -> str:
    case = Case(r["case"], r["architecture"], tuple(r["image_shape"]), r["likelihood"],
                r["decoder_std"], r["architecture_options"])
    return (f"| {case.architecture_label()} | {case.input_label()} | "
            f"{case.likelihood_label()} | {r['models']} | {_its(r['vectorised_its'])} | "
            f"{_its(r['loop_its'])} | {r['speedup']:.2f}× | {r['vectorised_tflops']:.3f} | "
            f"{100 * r['vectorised_mfu']:.1f} % | {100 * r['mfu_ceiling']:.0f} % |")


def markdown(result: dict) -> str:
    """The README table of a result."""
    bw = result.get("bandwidth_gbs")
    lines = [
        f"Device: {result['device_name']}; peak dense matmul "
        f"{result['peak_tflops']:.2f} TFLOP/s"
        + (f", copy bandwidth {bw:,.0f} GB/s" if bw else "")
        + f"; batch {result['rows'][0]['batch'] if result['rows'] else BATCH}.",
        "",
        "| arch | input (C×H×W) | likelihood | M | vectorised it/s | loop it/s | speed-up "
        "| vec TFLOP/s | vec MFU | param-traffic MFU ceiling |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *(_table_row(r) for r in result["rows"]),
    ]
    proj = result["projection"]
    if proj is None:
        lines += ["", f"No paper grid projection: it needs the paper rows (3×32×32, "
                      f"Bernoulli) at the paper's batch of {BATCH}."]
    else:
        parts = ", ".join(f"{a} {h:,.0f} h" for a, h in proj["hours"].items())
        lines += [
            "",
            f"Paper grid projection (paper rows only; groups of 60 at the largest measured "
            f"M's speed): {parts}; total {proj['total_hours']:,.0f} h on this device"
            + (" (--quick: narrowed layers, not the paper's networks)."
               if result.get("quick") else "."),
        ]
    return "\n".join(lines)
