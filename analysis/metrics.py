"""The SPEC §5 metrics of a group of models on one set, as ``rdbench evaluate`` computes them.

Per example in nats, averaged over the set:

- ``distortion`` D = −log p(x|z) with ONE posterior sample z ~ q(z|x) per example (seeded
  by run, set), i.e. a single-sample Monte-Carlo estimate of E_q[−log p(x|z)];
- ``rate`` R = KL(q(z|x) ‖ p(z)) in closed form; ``elbo`` = −(D + R);
- ``mutual_information``, ``marginal_kl`` (and ``rate_mc``, their exact sum) from
  :func:`analysis.estimators.rate_decomposition` on all the set's encodings
  (``mi_batch`` B or exact);
- ``log_px`` from :func:`analysis.estimators.importance_log_px` (K = ``iwae_samples``) on a
  seeded subset of ``iwae_subset`` examples (0 = all; ``log_px_n`` says how many, and
  ``log_px_elbo`` is the ELBO on exactly those examples, the like-for-like lower bound).

``max_examples`` N evaluates a seeded subset of at most N examples per set instead of all of
it (``n`` = examples used, ``set_size`` = the whole set). The minibatch estimator then keeps
N = ``set_size`` in its weights, so q(z) is still the whole set's aggregate posterior and Î
saturates at log ``set_size`` (the exact estimator needs the whole set).

The runs of a group share their dataset, split and model structure: they are stacked on the
engine training uses (``benchmark.ensemble.ModelStack``) and encode/decode run as one
``vmap`` over the models (model after model for convolutions on a CPU), data in chunks of
``batch_size`` on the device; D is each model's own likelihood's −log p(x|z). Noise is drawn
per run from its own seeded generator, so a run's metrics do not depend on its group; it is
drawn in fixed blocks of rows (D) or per sample index (log p(x)), so they do not depend on
``batch_size`` either. Memory is flat in the set's size: the per-set outputs (M, N, d) are
allocated once and filled in place, and images are read from the (memory-mapped) dataset a
chunk of rows at a time.

The posterior of a model is read through its objective (:func:`posterior`): mean-field
``(mu, logvar)`` from ``model.encode`` unless ``benchmark.implicit.POSTERIORS`` or
``benchmark.ablations.POSTERIORS`` registers ``fn(model, x, beta, options) -> (mu,
scale_tril)`` for it (GRAE / AE implied posteriors, block-diagonal β-VAE).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from analysis import estimators as est
from analysis.tables import ESTIMATOR_SETTINGS
from imagesets.splits import validation_rows
from imagesets.tensor import channels_first, model_input, to_float
from rdbench.io import InputError
from rdbench.seeding import derive_seed

SETS = ("train", "test")
NOISE_BLOCK = 4096  # rows of posterior noise drawn at a time (fixed: D ignores batch_size)
NN_CHUNK = 2048  # test images (and train images) per step of the nearest-neighbour search


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
        out["train_set"] = TRAIN_SET
        return out

    def gives_the_numbers_of(self, recorded: object) -> bool:
        """Whether metrics made with ``recorded`` (a metrics.json's ``settings``) are the
        numbers these settings give: every field of ``ESTIMATOR_SETTINGS`` agrees."""
        wanted = self.to_json()
        return isinstance(recorded, dict) and all(
            k in recorded and recorded[k] == wanted[k] for k in (*ESTIMATOR_SETTINGS,
                                                                 "train_set"))


# --- posteriors --------------------------------------------------------------------------

Posterior = tuple[Tensor, Tensor | None, Tensor | None]  # mu, logvar or None, scale_tril or None


def posterior_registry() -> dict[str, Callable]:
    """objective name -> fn(model, x, beta, options) -> (mu, scale_tril) [or (mu, lv, L)]."""
    from benchmark import ablations, implicit

    return {**getattr(ablations, "POSTERIORS", {}), **getattr(implicit, "POSTERIORS", {})}


def posterior(run_config: dict, model: nn.Module, x: Tensor) -> Posterior:
    """q(z|x) of a model as its objective defines it: x (B, C, H, W) -> (mu, logvar, scale_tril)."""
    fn = posterior_registry().get(run_config["objective"])
    if fn is None:
        mu, logvar = model.encode(x)
        if logvar.shape != mu.shape:
            raise InputError(f"objective {run_config['objective']!r} has no mean-field encoder "
                             "and registers no posterior")
        return mu, logvar, None
    out = fn(model, x, run_config.get("beta"), run_config.get("objective_options", {}))
    return (out[0], None, out[1]) if len(out) == 2 else tuple(out)


class ModelGroup:
    """The models of one group (one structure) on the engine training uses
    (:class:`benchmark.ensemble.ModelStack`): posteriors and the likelihood's −log p(x|z)
    for all M models at once (vmapped, or model after model for convolutions on a CPU)."""

    def __init__(self, models: list[nn.Module], configs: list[dict]):
        from benchmark.ensemble import ModelStack
        from benchmark.models import has_convolutions

        self.configs, self.models = configs, models
        self.device = next(models[0].parameters()).device
        meta = copy.deepcopy(models[0]).to("meta").eval()
        self.stack = ModelStack(meta, [m.state_dict() for m in models], self.device,
                                loop=self.device.type == "cpu" and has_convolutions(meta),
                                vmap_one=True)
        self.betas = torch.tensor([float(c["beta"]) for c in configs], device=self.device)
        self.objective = configs[0]["objective"]
        self.options = configs[0].get("objective_options", {})
        self.latent_dim = models[0].latent_dim

    @classmethod
    def load(cls, run_dirs: list[Path], configs: list[dict], device: torch.device,
             checkpoint: str = "final") -> ModelGroup:
        from benchmark.runs import load_model

        return cls([load_model(d, device=device, checkpoint=checkpoint) for d in run_dirs],
                   configs)

    def posterior(self, x: Tensor) -> Posterior:
        """x (C, ...) -> mu (M, C, d), logvar (M, C, d) | None, scale_tril (M, C, d, d) | None."""
        template = {"objective": self.objective, "objective_options": self.options}

        def one(model: nn.Module, images: Tensor, beta: Tensor) -> dict[str, Tensor]:
            mu, logvar, tril = posterior({**template, "beta": beta}, model, images)
            return {k: v for k, v in (("mu", mu), ("logvar", logvar), ("tril", tril))
                    if v is not None}

        out = self.stack.map(one, x, self.betas, in_dims=(None, 0))
        return out["mu"], out.get("logvar"), out.get("tril")

    def distortion(self, z: Tensor, x: Tensor) -> Tensor:
        """−log p(x|z) of each model, its own likelihood: z (M, C, d), x (C, ...) -> (M, C)."""
        def one(model: nn.Module, latents: Tensor, images: Tensor) -> Tensor:
            return model.likelihood.nll(model.decode(latents), images)

        return self.stack.map(one, z, x, in_dims=(0, None))


# --- evaluation --------------------------------------------------------------------------

# What the "train" set is: earlier versions took a split's whole training set, including the
# validation images a run held out and never trained on; their metrics are evaluated again.
TRAIN_SET = "the split's training rows the run trained on (its validation rows left out)"


def evaluate_group(members: list[tuple[Path, dict]], data: Any, settings: EvalSettings,
                   device: torch.device, checkpoint: str = "final") -> list[dict]:
    """metrics.json contents for every run of one group (one split, one model structure),
    at ``checkpoint`` (``final``: model.pt, ``best``: model_best.pt)."""
    configs = [c for _, c in members]
    group = ModelGroup.load([d for d, _ in members], configs, device, checkpoint)
    split_name, validation = configs[0]["split"], int(configs[0].get("validation") or 0)
    split = data.split(split_name)
    trained = validation_rows(split.train, split_name, validation)[0]  # not the held-out rows
    out: list[dict] = [{"settings": settings.to_json(), "checkpoint": checkpoint}
                       for _ in members]
    for name, rows in zip(SETS, (trained, split.test), strict=True):
        for m, metrics in enumerate(evaluate_set(group, data.images, rows, name, settings)):
            out[m][name] = metrics
    return out


def evaluate_set(group: ModelGroup, images: np.ndarray, rows: np.ndarray, set_name: str,
                 settings: EvalSettings) -> list[dict[str, float]]:
    """Per model of the group, the set averages of SPEC §5 on ``images[rows]``."""
    set_size, split = len(rows), group.configs[0]["split"]
    rows = rows[_subset(len(rows), settings.max_examples, (split, set_name, "examples"))]
    ids = [c["run_id"] for c in group.configs]
    enc = encode_set(group, images, rows, [_generator(i, set_name, "z") for i in ids], settings)
    subset = _subset(len(rows), settings.iwae_subset, (split, set_name))
    x_sub = _RowImages(images, rows[subset], group.device)  # read a chunk at a time
    results = []
    for m, run_id in enumerate(ids):
        post = tuple(None if t is None else t[m].to(group.device) for t in enc["posterior"])
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
    """Chunked pass over the set: posteriors (M, N, ...) on the CPU, D and R (M, N).

    The outputs are allocated once and filled in place, and nothing else outlives a chunk:
    per-chunk results kept in lists (joined at the end) left small blocks between the large
    short-lived ones, and glibc's heap grew with the set (21.5 GB for 6 mlp1 runs on
    cv-8192). The posterior noise of rows [b, b + NOISE_BLOCK) is drawn from each run's
    generator into one buffer, block after block, and chunks never straddle two blocks, so
    every row gets the same noise whatever ``--batch-size``.
    """
    n, d = len(rows), group.latent_dim
    noise = torch.empty(len(generators), min(n, NOISE_BLOCK), d)  # (M, block, d)
    out: dict[str, Tensor | None] = {}
    with torch.no_grad():
        for block in tqdm(range(0, n, NOISE_BLOCK), desc="encode", leave=False, disable=None):
            size = min(NOISE_BLOCK, n - block)
            for m, g in enumerate(generators):
                torch.randn((size, d), generator=g, out=noise[m, :size])
            for start in range(block, block + size, settings.batch_size):
                stop = min(start + settings.batch_size, block + size)
                x = model_input(images[rows[start:stop]], group.device)
                _encode_chunk(group, x, noise[:, start - block:stop - block], out, start, n)
    return {"distortion": out["distortion"], "rate": out["rate"],
            "posterior": (out["mu"], out["logvar"], out["tril"])}


def _encode_chunk(group: ModelGroup, x: Tensor, noise: Tensor, out: dict[str, Tensor | None],
                  start: int, n: int) -> None:
    """Encode, sample, decode one chunk x (C, ...) and write rows [start, start + C)
    of the outputs (allocated at the first chunk: (M, n, ...) float32 on the CPU)."""
    mu, logvar, tril = group.posterior(x)  # (M, C, d) ...
    z = est.reparameterise(noise.to(mu.device, mu.dtype), mu, logvar, tril)  # (M, C, d)
    rate = (est.gaussian_kl_to_standard(mu, logvar) if tril is None
            else est.kl_tril_to_standard(mu, tril))
    values = {"distortion": group.distortion(z, x).float(), "rate": rate, "mu": mu,
              "logvar": logvar, "tril": tril}
    if not out:
        out.update({k: None if v is None else torch.empty(v.shape[0], n, *v.shape[2:])
                    for k, v in values.items()})
    for k, v in values.items():
        if v is not None:
            out[k][:, start:start + len(x)] = v  # copied to the CPU, as float32


class _RowImages:
    """``images[rows]`` as uint8 (C, channels, H, W) tensors on ``device``, read only for
    the positions sliced: fancy indexing a memmap copies, so the whole subset never is."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, device: torch.device):
        self.images, self.rows, self.device = images, rows, device

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: slice) -> Tensor:
        return channels_first(self.images[self.rows[positions]], self.device)


def _log_px(group: ModelGroup, m: int, x: _RowImages, post: tuple, subset: np.ndarray,
            settings: EvalSettings, generator: torch.Generator) -> float:
    """Mean importance-sampled log p(x) of model m on the subset (its stored posteriors)."""
    device, model = group.device, group.models[m]
    index = torch.from_numpy(subset).to(device)
    mu, logvar, tril = (None if t is None else t[index] for t in post)

    def log_likelihood(xc: Tensor, z: Tensor) -> Tensor:  # xc (b, ...) uint8, z (k, b, d)
        out = model.decode(z.reshape(-1, z.shape[-1]).float())  # (k·b, ...)
        out = out.reshape(*z.shape[:2], *xc.shape[1:])  # (k, b, ...)
        return -model.likelihood.nll(out, to_float(xc), event_dims=xc.dim() - 1)

    with torch.no_grad():
        values = est.importance_log_px(x, mu, logvar, log_likelihood, scale_tril=tril,
                                       num_samples=settings.iwae_samples,
                                       chunk_size=max(settings.batch_size, 1) * 16,
                                       generator=generator)
    return values.mean().item()


# --- nearest neighbours ------------------------------------------------------------------

def neighbour_arrays(data: Any, split_name: str, settings: EvalSettings,
                     device: torch.device) -> dict[str, np.ndarray]:
    """``neighbours/<split>.<fingerprint>.npz`` (DESIGN.md): test, distance, nearest, hard, the
    ``nn_subset`` and ``dataset_fingerprint`` they were made with. Both sets are read from
    the dataset ``NN_CHUNK`` rows at a time, never copied whole."""
    train, test = data.split(split_name)
    test = np.sort(test[_subset(len(test), settings.nn_subset, (split_name, "neighbours"))])
    print(f"nearest neighbours: {len(test)} test images of {split_name} to {len(train)} train",
          flush=True)
    dist, idx = est.nearest_neighbour_distances(data.images, data.images, test_rows=test,
                                                train_rows=train, chunk_size=NN_CHUNK,
                                                device=device)
    distance = (dist / 255.0).numpy().astype(np.float32)
    order = np.argsort(distance, kind="stable")
    hard = test[order[int(round(0.9 * (len(test) - 1)))]]
    return {"test": test.astype(np.int64), "distance": distance,
            "nearest": idx.numpy().astype(np.int64), "hard": np.int64(hard),
            "nn_subset": np.int64(settings.nn_subset),
            "dataset_fingerprint": np.str_(data.fingerprint)}


# --- helpers -----------------------------------------------------------------------------

def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def _subset(n: int, size: int, key: tuple) -> np.ndarray:
    """Sorted positions of a seeded subset of ``size`` of range(n) (0 or ≥ n: all)."""
    if size == 0 or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(derive_seed(*key)).choice(n, size=size, replace=False))
