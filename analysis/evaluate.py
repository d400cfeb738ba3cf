"""``rdbench evaluate RUNS_DIR``: the SPEC §5 metrics of every finished run, resumable.

For each run with status ``done`` and no ``metrics.json`` (all of them with ``--force``),
on its split's train set and test set, per example in nats, averaged over the set:

- ``distortion`` D = −log p(x|z) with ONE posterior sample z ~ q(z|x) per example (seeded
  by run, set), i.e. a single-sample Monte-Carlo estimate of E_q[−log p(x|z)];
- ``rate`` R = KL(q(z|x) ‖ p(z)) in closed form; ``elbo`` = −(D + R);
- ``mutual_information``, ``marginal_kl`` (and ``rate_mc``, their exact sum) from
  :func:`analysis.estimators.rate_decomposition` on all the set's encodings
  (``--mi-batch B`` or ``exact``);
- ``log_px`` from :func:`analysis.estimators.importance_log_px` (K = ``--iwae-samples``) on a
  seeded subset of ``--iwae-subset`` examples (0 = all; ``log_px_n`` says how many, and
  ``log_px_elbo`` is the ELBO on exactly those examples, the like-for-like lower bound).

``--max-examples N`` evaluates a seeded subset of at most N examples per set instead of all
of it (``n`` = examples used, ``set_size`` = the whole set). The minibatch estimator then
keeps N = ``set_size`` in its weights, so q(z) is still the whole set's aggregate posterior
and Î saturates at log ``set_size`` (the exact estimator needs the whole set).

Runs that share (dataset, split, architecture, objective, options) are evaluated together:
their weights are stacked (``torch.func.stack_module_state``) and encode/decode run as one
``vmap`` over the models, data in chunks of ``--batch-size`` on the device. Noise is drawn per
run from its own seeded generator, so a run's metrics do not depend on its group; it is drawn
per set (D) or per sample index (log p(x)), so they do not depend on ``--batch-size`` either.

The posterior of a model is read through its objective (:func:`posterior`): mean-field
``(mu, logvar)`` from ``model.encode`` unless ``benchmark.implicit.POSTERIORS`` or
``benchmark.ablations.POSTERIORS`` registers ``fn(model, x, beta, options) -> (mu,
scale_tril)`` for it (GRAE / AE implied posteriors, block-diagonal β-VAE).

Per split, once: ``RUNS_DIR/neighbours/<split>.npz`` (DESIGN.md) with the ℓ₂ distance
(pixels in [0, 1]) of a seeded subset of ``--nn-subset`` test images to the whole train set.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from analysis import estimators as est
from rdbench.io import InputError, atomic_write, atomic_write_json
from rdbench.seeding import derive_seed

SETS = ("train", "test")


@dataclass(frozen=True)
class EvalSettings:
    """Estimator settings, written into every ``metrics.json``."""

    iwae_samples: int = 1000
    iwae_subset: int = 1000  # 0 = the whole set
    mi_batch: int | None = 512  # None = exact
    nn_subset: int = 5000  # 0 = the whole test set
    max_examples: int = 0  # 0 = the whole set; else a seeded subset per set
    batch_size: int = 256

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["mi_batch"] = "exact" if self.mi_batch is None else self.mi_batch
        out["distortion"] = "one posterior sample per example, set average"
        out["seeds"] = "per run and set: blake2b(run_id, set, purpose)"
        out["rate"] = "closed form KL(q(z|x) || N(0, I)), set average"
        return out


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    runs_dir = Path(args.runs_dir)
    todo, skipped, unfinished = select_runs(runs_dir, force=args.force)
    datasets: dict[str, Any] = {}
    if getattr(args, "dataset", None):  # moved since training: the fingerprint still checks
        import tetrominoes

        moved = str(Path(args.dataset).expanduser().resolve())
        datasets[moved] = tetrominoes.load_verified(moved)  # even with nothing left to do
        todo = [(run_dir, dict(config, dataset=moved)) for run_dir, config in todo]
    _check_inputs(todo, datasets)
    from rdbench.device import resolve_device

    device = resolve_device(args.device)
    for (path, split) in sorted({(c["dataset"], c["split"]) for _, c in todo}):
        ensure_neighbours(runs_dir, datasets[path], split, settings, device, force=args.force)
    groups = _group(todo)
    done = 0
    for key, members in tqdm(groups.items(), desc="groups", unit="group", disable=None):
        metrics = evaluate_group(members, datasets[key[0]], settings, device)
        for (run_dir, _), m in zip(members, metrics, strict=True):
            atomic_write_json(run_dir / "metrics.json", m)
        done += len(members)
    print(f"evaluated {done} run(s) in {len(groups)} group(s); skipped {skipped} already "
          f"evaluated, {unfinished['failed']} failed in training, {unfinished['other']} "
          "not finished")
    return 0


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """Validate the estimator options (InputError before any work)."""
    mi = str(getattr(args, "mi_batch", "512"))
    if mi != "exact" and not (mi.isdigit() and int(mi) >= 2):
        raise InputError(f"--mi-batch must be an integer >= 2 or 'exact', got {mi!r}")
    s = EvalSettings(iwae_samples=args.iwae_samples, iwae_subset=args.iwae_subset,
                     mi_batch=None if mi == "exact" else int(mi),
                     nn_subset=getattr(args, "nn_subset", 5000),
                     max_examples=getattr(args, "max_examples", 0),
                     batch_size=getattr(args, "batch_size", 256))
    for name, value, low in [("--iwae-samples", s.iwae_samples, 1), ("--batch-size",
                             s.batch_size, 1), ("--iwae-subset", s.iwae_subset, 0),
                             ("--nn-subset", s.nn_subset, 0),
                             ("--max-examples", s.max_examples, 0)]:
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    if s.mi_batch is None and s.max_examples:
        raise InputError("--mi-batch exact needs every encoding of a set; drop --max-examples")
    return s


def select_runs(runs_dir: Path, force: bool
                ) -> tuple[list[tuple[Path, dict]], int, dict[str, int]]:
    """(runs to evaluate with their configs, # skipped as evaluated, # not done: failed
    in training and other)."""
    from benchmark.runs import find_runs, read_config, read_status

    runs = find_runs(runs_dir)
    if not runs:
        raise InputError(f"no runs in {runs_dir} (directories with a config.json)")
    todo, skipped, unfinished = [], 0, {"failed": 0, "other": 0}
    for run_dir in runs:
        status = read_status(run_dir)["status"]
        if status != "done":
            unfinished["failed" if status == "failed" else "other"] += 1
        elif (run_dir / "metrics.json").exists() and not force:
            skipped += 1
        else:
            todo.append((run_dir, read_config(run_dir)))
    return todo, skipped, unfinished


def _check_inputs(todo: list[tuple[Path, dict]], datasets: dict[str, Any]) -> None:
    """Load every dataset once into ``datasets`` (path -> dataset; some may be loaded
    already); check splits, fingerprints, model files and objectives."""
    import tetrominoes
    from benchmark.objectives import get_objective

    for run_dir, config in todo:
        path = config["dataset"]
        if path not in datasets:
            datasets[path] = tetrominoes.load_verified(path)
        data = datasets[path]
        if config.get("dataset_fingerprint", data.fingerprint) != data.fingerprint:
            raise InputError(f"run {run_dir.name}: dataset {path} changed since training")
        data.split(config["split"])
        objective = get_objective(config["objective"])
        options = config.get("objective_options", {})
        if (objective.posterior_params(config["latent_dim"], options) != config["latent_dim"]
                and config["objective"] not in posterior_registry()):
            raise InputError(f"run {run_dir.name}: objective {config['objective']!r} has no "
                             "mean-field encoder and registers no posterior")
        if not (run_dir / "model.pt").exists():
            raise InputError(f"run {run_dir.name} is done but has no model.pt")


def _group(todo: list[tuple[Path, dict]]) -> dict[tuple, list[tuple[Path, dict]]]:
    groups: dict[tuple, list] = defaultdict(list)
    for run_dir, c in todo:
        key = (c["dataset"], c["split"], c["architecture"], c["objective"],
               json.dumps(c.get("objective_options", {}), sort_keys=True), c["latent_dim"])
        groups[key].append((run_dir, c))
    return dict(groups)


# --- posteriors --------------------------------------------------------------------------

Posterior = tuple[Tensor, Tensor | None, Tensor | None]  # mu, logvar or None, scale_tril or None


def posterior_registry() -> dict[str, Callable]:
    """objective name -> fn(model, x, beta, options) -> (mu, scale_tril) [or (mu, lv, L)]."""
    from benchmark import ablations, implicit

    return {**getattr(ablations, "POSTERIORS", {}), **getattr(implicit, "POSTERIORS", {})}


def posterior(run_config: dict, model: nn.Module, x: Tensor) -> Posterior:
    """q(z|x) of a model as its objective defines it: x (B,3,32,32) -> (mu, logvar, scale_tril)."""
    fn = posterior_registry().get(run_config["objective"])
    if fn is None:
        mu, logvar = model.encode(x)
        if logvar.shape != mu.shape:
            raise InputError(f"objective {run_config['objective']!r} has no mean-field encoder "
                             "and registers no posterior")
        return mu, logvar, None
    out = fn(model, x, run_config.get("beta"), run_config.get("objective_options", {}))
    return (out[0], None, out[1]) if len(out) == 2 else tuple(out)


class _Method(nn.Module):
    """``forward`` = ``module.<method>`` so functional_call can swap stacked weights in."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.m, self.method = module, method

    def forward(self, arg: Tensor) -> Any:
        return getattr(self.m, self.method)(arg)


class ModelGroup:
    """The models of one group: vmapped encode/decode over stacked weights (M models)."""

    def __init__(self, models: list[nn.Module], configs: list[dict]):
        self.configs, self.models = configs, models
        params, buffers = stack_module_state(models)
        self.state = {f"m.{k}": v for k, v in {**params, **buffers}.items()}
        base = copy.deepcopy(models[0]).to("meta")
        self._encode, self._decode = _Method(base, "encode"), _Method(base, "decode")
        self.custom = configs[0]["objective"] in posterior_registry()

    @classmethod
    def load(cls, run_dirs: list[Path], configs: list[dict], device: torch.device) -> ModelGroup:
        from benchmark.runs import load_model

        return cls([load_model(d, device=device) for d in run_dirs], configs)

    def posterior(self, x: Tensor) -> Posterior:
        """x (C, 3, 32, 32) -> mu (M, C, d), logvar (M, C, d) | None, scale_tril | None."""
        if self.custom:  # implied posteriors need Jacobians: one model at a time
            outs = [posterior(c, m, x) for c, m in zip(self.configs, self.models, strict=True)]
            return tuple(None if o[0] is None else torch.stack(o) for o in zip(*outs, strict=True))
        mu, logvar = vmap(lambda p, a: functional_call(self._encode, p, (a,)),
                          in_dims=(0, None))(self.state, x)
        return mu, logvar, None

    def decode(self, z: Tensor) -> Tensor:
        """z (M, C, d) -> logits (M, C, 3, 32, 32)."""
        return vmap(lambda p, a: functional_call(self._decode, p, (a,)))(self.state, z)


# --- evaluation --------------------------------------------------------------------------

def evaluate_group(members: list[tuple[Path, dict]], data: Any, settings: EvalSettings,
                   device: torch.device) -> list[dict]:
    """metrics.json contents for every run of one group (same split and architecture)."""
    configs = [c for _, c in members]
    group = ModelGroup.load([d for d, _ in members], configs, device)
    split = data.split(configs[0]["split"])
    out: list[dict] = [{"settings": settings.to_json()} for _ in members]
    for name, rows in zip(SETS, split, strict=True):
        for m, metrics in enumerate(evaluate_set(group, data.images, rows, name, settings)):
            out[m][name] = metrics
    return out


def evaluate_set(group: ModelGroup, images: np.ndarray, rows: np.ndarray, set_name: str,
                 settings: EvalSettings) -> list[dict[str, float]]:
    """Per model of the group, the set averages of SPEC §5 on ``images[rows]``."""
    set_size, split = len(rows), group.configs[0]["split"]
    rows = rows[_subset(len(rows), settings.max_examples, (split, set_name, "examples"))]
    if len(rows) < 2:
        raise InputError(f"set {set_name} has {len(rows)} example(s); need at least 2")
    ids = [c["run_id"] for c in group.configs]
    enc = encode_set(group, images, rows, [_generator(i, set_name, "z") for i in ids], settings)
    subset = _subset(len(rows), settings.iwae_subset, (split, set_name))
    x_sub = _as_uint8(images[rows[subset]], _device(group))  # (S, 3, 32, 32) uint8
    results = []
    for m, run_id in enumerate(ids):
        post = tuple(None if t is None else t[m].to(_device(group)) for t in enc["posterior"])
        decomposition = est.rate_decomposition(
            *post[:2], scale_tril=post[2], batch_size=settings.mi_batch,
            generator=_generator(run_id, set_name, "mi"), dataset_size=set_size)
        log_px = _log_px(group, m, x_sub, post, subset, settings, _generator(run_id, set_name,
                                                                              "iwae"))
        d, r = enc["distortion"][m].mean().item(), enc["rate"][m].mean().item()
        elbo_sub = -(enc["distortion"][m][subset] + enc["rate"][m][subset]).mean().item()
        results.append({"n": len(rows), "set_size": set_size, "distortion": d, "rate": r,
                        "elbo": -(d + r),
                        "mutual_information": decomposition["mutual_information"],
                        "marginal_kl": decomposition["marginal_kl"],
                        "rate_mc": decomposition["rate"], "log_px": log_px,
                        "log_px_n": len(subset), "log_px_elbo": elbo_sub})
    return results


def encode_set(group: ModelGroup, images: np.ndarray, rows: np.ndarray,
               generators: list[torch.Generator], settings: EvalSettings) -> dict[str, Any]:
    """Chunked pass over the set: posteriors (M, N, ...) on the CPU, D and R (M, N)."""
    parts: dict[str, list] = defaultdict(list)
    noise = None  # (M, N, d), drawn for the whole set at once: D does not depend on batch_size
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), settings.batch_size), desc="encode", leave=False,
                          disable=None):
            x = _as_float(images[rows[start:start + settings.batch_size]], _device(group))
            mu, logvar, tril = group.posterior(x)  # (M, C, d) ...
            if noise is None:
                noise = torch.stack([torch.randn((len(rows), *mu.shape[2:]), generator=g)
                                     for g in generators])
            eps = noise[:, start:start + mu.shape[1]].to(mu.device, mu.dtype)  # (M, C, d)
            z = (mu + (0.5 * logvar).exp() * eps if tril is None
                 else mu + (tril @ eps.unsqueeze(-1)).squeeze(-1))
            logits = group.decode(z).float()  # (M, C, 3, 32, 32)
            parts["distortion"].append(_bernoulli_nll(logits, x).cpu())
            parts["rate"].append((est.gaussian_kl_to_standard(mu, logvar) if tril is None
                                  else est.kl_tril_to_standard(mu, tril)).float().cpu())
            for name, t in (("mu", mu), ("logvar", logvar), ("tril", tril)):
                parts[name].append(None if t is None else t.float().cpu())
    cat = {k: None if v[0] is None else torch.cat(v, 1) for k, v in parts.items()}
    return {"distortion": cat["distortion"], "rate": cat["rate"],
            "posterior": (cat["mu"], cat["logvar"], cat["tril"])}


def _log_px(group: ModelGroup, m: int, x: Tensor, post: tuple, subset: np.ndarray,
            settings: EvalSettings, generator: torch.Generator) -> float:
    """Mean importance-sampled log p(x) of model m on the subset (its stored posteriors)."""
    device, model = _device(group), group.models[m]
    index = torch.from_numpy(subset).to(device)
    mu, logvar, tril = (None if t is None else t[index] for t in post)

    def log_likelihood(xc: Tensor, z: Tensor) -> Tensor:  # xc (b, ...) uint8, z (k, b, d)
        logits = model.decode(z.reshape(-1, z.shape[-1]).float()).float()
        return -_bernoulli_nll(logits.reshape(*z.shape[:2], *xc.shape[1:]), xc / 255.0)

    with torch.no_grad():
        values = est.importance_log_px(x, mu, logvar, log_likelihood, scale_tril=tril,
                                       num_samples=settings.iwae_samples,
                                       chunk_size=max(settings.batch_size, 1) * 16,
                                       generator=generator)
    return values.mean().item()


def _bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """−log p(x|logits) = Σ softplus(l) − x·l over the 3·32·32 values: (..., 3, 32, 32) -> (...)."""
    return (nn.functional.softplus(logits) - x * logits).flatten(-3).sum(-1)


# --- nearest neighbours ------------------------------------------------------------------

def ensure_neighbours(runs_dir: Path, data: Any, split_name: str, settings: EvalSettings,
                      device: torch.device, force: bool = False) -> Path:
    """``RUNS_DIR/neighbours/<split>.npz``: test, distance, nearest, hard (DESIGN.md)."""
    path = runs_dir / "neighbours" / f"{split_name}.npz"
    if path.exists() and not force:
        return path
    train, test = data.split(split_name)
    test = np.sort(test[_subset(len(test), settings.nn_subset, (split_name, "neighbours"))])
    print(f"nearest neighbours: {len(test)} test images of {split_name} to {len(train)} train",
          flush=True)
    dist, idx = est.nearest_neighbour_distances(data.images[test], data.images[train],
                                                device=device)
    distance = (dist / 255.0).numpy().astype(np.float32)
    order = np.argsort(distance, kind="stable")
    hard = test[order[int(round(0.9 * (len(test) - 1)))]]
    arrays = {"test": test.astype(np.int64), "distance": distance,
              "nearest": train[idx.numpy()].astype(np.int64), "hard": np.int64(hard)}
    return atomic_write(path, lambda f: np.savez(f, **arrays))


# --- helpers -----------------------------------------------------------------------------

def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def _subset(n: int, size: int, key: tuple) -> np.ndarray:
    """Sorted positions of a seeded subset of ``size`` of range(n) (0 or ≥ n: all)."""
    if size == 0 or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(derive_seed(*key)).choice(n, size=size, replace=False))


def _as_uint8(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (C, 32, 32, 3) -> uint8 (C, 3, 32, 32) on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)


def _as_float(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (C, 32, 32, 3) -> float (C, 3, 32, 32) in [0, 1] on ``device``."""
    return _as_uint8(images, device) / 255.0


def _device(group: ModelGroup) -> torch.device:
    return next(group.models[0].parameters()).device
