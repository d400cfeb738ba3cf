"""Command-line registration for analysis: evaluate, report, demo, kp, bench eval.

Argument definitions only; each handler lives in its own module and is imported on use.
"""

from __future__ import annotations

import argparse

from rdbench._lazy import handler

_DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default auto)"
_KP_FORCE_HELP = "replace an earlier kp output in --out (never a directory that is not one)"


def register(commands: argparse._SubParsersAction) -> None:
    _register_evaluate(commands)
    _register_report(commands)
    _register_demo(commands)
    _register_kp(commands)


def register_bench(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser("eval", help="rate-decomposition and evaluation throughput")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the JSON results "
                   "here (an existing file only if it is an earlier `bench eval` result)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N; auto (default) measures the CPU and, when "
                        "present, CUDA")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file that is not a `bench eval` result")
    p.set_defaults(handler=handler("analysis.bench:main"))


def _register_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("evaluate", help="estimate D, R, MI, marginal KL, log p(x) per run")
    p.add_argument("runs_dir", metavar="RUNS_DIR")
    p.add_argument("--iwae-samples", type=int, default=1000, metavar="K",
                   help="importance samples for log p(x) (default 1000, at most 100,000)")
    p.add_argument("--iwae-subset", type=int, default=1000, metavar="N",
                   help="examples per set for log p(x) (default 1000; 0 = all)")
    p.add_argument("--mi-batch", default="512", metavar="B|exact",
                   help="minibatch size of the rate decomposition, 2 to 4,096, or 'exact' "
                        "(default 512)")
    p.add_argument("--nn-subset", type=int, default=5000, metavar="N",
                   help="test images per split for nearest-neighbour distances "
                        "(default 5000; 0 = all)")
    p.add_argument("--max-examples", type=int, default=0, metavar="N",
                   help="evaluate a seeded subset of at most N examples per set "
                        "(default 0 = all)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B",
                   help="images per chunk on the device (default 256, at most 4,096; the "
                        "numbers do not depend on it)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--dataset", metavar="DIR",
                   help="the dataset the runs trained on, if it has moved since (default: the "
                        "path in each run's config.json; its content must be the same)")
    p.add_argument("--checkpoint", nargs="+", choices=("final", "best"), default=["final"],
                   metavar="final|best",
                   help="which weights: final (model.pt, metrics.json; default), best (the "
                        "best validation loss's model_best.pt, metrics_best.json), or both")
    p.add_argument("--force", action="store_true",
                   help="re-evaluate runs that have metrics (and recompute neighbours)")
    p.set_defaults(handler=handler("analysis.evaluate:main"))


def _register_report(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="figures and tables of evaluated runs")
    p.add_argument("runs_dir", metavar="RUNS_DIR")
    p.add_argument("--out", default=None, help="report directory (default RUNS_DIR/report)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier report (never a directory that is not one)")
    p.set_defaults(handler=handler("analysis.report:main"))


def _register_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="the whole pipeline at CPU scale, in minutes")
    p.add_argument("--out", default="results/demo", help="output directory (default results/demo)")
    p.add_argument("--force", action="store_true",
                   help="rerun into a used output directory: remove only what an earlier demo "
                        "wrote (runs/, report/, demo.toml) and reuse a valid data/")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.set_defaults(handler=handler("analysis.demo:main"))


def decoder_std(text: str) -> float | str:
    """``--decoder-std``: 'learned' or a number (UniquenessConfig checks that it is > 0)."""
    return "learned" if text == "learned" else float(text)


def _register_kp(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("kp", help="implicit-regularisation analyses (Kumar & Poole 2020)")
    kp = p.add_subparsers(dest="kp", required=True, metavar="ANALYSIS")
    for name, text in [("objectives", "β-VAE objective vs Taylor approximation vs GRAE"),
                       ("jacobian", "posterior precision vs I + JᵀHJ/β")]:
        q = kp.add_parser(name, help=text)
        q.add_argument("runs_dir", metavar="RUNS_DIR")
        q.add_argument("--out", default=None, help=f"output directory (default RUNS_DIR/kp/{name})")
        q.add_argument("--device", default="auto", help=_DEVICE_HELP)
        q.add_argument("--force", action="store_true", help=_KP_FORCE_HELP)
        q.add_argument("--examples", type=int, default=256, metavar="N",
                       help="held-out test images per run (default 256)")
        if name == "objectives":
            q.add_argument("--samples", type=int, default=100, metavar="K",
                           help="posterior samples for the Monte-Carlo β-VAE objective "
                                "(default 100)")
        q.set_defaults(handler=handler(f"analysis.kp.{name}:main"))
    q = kp.add_parser("uniqueness", help="Appendix C: diagonal vs full posterior covariance")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--quick", action="store_true", help="fewer trials; minutes on a CPU")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("--nonlinearities", nargs="+", metavar="NU", default=None,
                   help="a subset of identity tanh sigmoid elu (default: all four)")
    q.add_argument("--orientations", type=float, nargs="?", const=7.5, default=None,
                   metavar="STEP", help="instead: diagonal-Σ sweep of W's orientation over "
                   "[0°, 90°) every STEP degrees (default 7.5)")
    q.add_argument("--decoder-std", type=decoder_std, nargs="+", default=None,
                   metavar="SIGMA", help="σ of the decoder's Gaussian likelihood: a number "
                   "(default 0.05, the data's noise) or 'learned' (the ELBO-maximising σ, in "
                   "closed form); several values run the experiment once for each and compare")
    q.add_argument("--max-trials", type=int, default=None, metavar="K",
                   help="at most K trials per n (the paper's schedules, fewer trials)")
    q.add_argument("--optimizer", choices=("adam", "gd"), default="adam",
                   help="full-batch Adam (default) or the paper's plain gradient descent, "
                   "which is stable only with a σ well above 0.05 (e.g. learned)")
    q.add_argument("--unamortised", action="store_true", help="per-point posteriors "
                   "N(μ_i, Σ_i) instead of the encoder N(Cx + d, Σ) (their Fig. 6)")
    q.add_argument("--device", default="auto", help=_DEVICE_HELP)
    q.add_argument("--force", action="store_true", help=_KP_FORCE_HELP)
    q.set_defaults(handler=handler("analysis.kp.uniqueness:main"))
