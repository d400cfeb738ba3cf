"""A grid expanded into runs: one resolved config per trained model, with a stable id.

:func:`expand` takes the validated grid and its loaded datasets and returns every run
(dataset × split × architecture × objective variant × latent size × likelihood × activation ×
β × seed) as the flat dict that becomes the run's ``config.json``. What only the datasets can
tell is checked here, before any work: split names (each dataset's own), training-set sizes
against the batch and the validation set, image shapes, and every model the grid names
(built once on the meta device per structure: unknown options, a user class that does not
import or gives outputs of the wrong shape).

A run's id hashes the fields that change the trained model (:data:`IDENTITY`), plus those of
:data:`OPTIONAL_IDENTITY` that differ from their defaults — so runs of grids written before
those keys existed keep their ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from benchmark.config import GridConfig
from rdbench.io import InputError

# Fields of a run that change the trained model; everything else (device, logging,
# checkpoint cadence, the dataset's location) may differ without changing the run.
IDENTITY = ("dataset_fingerprint", "split", "architecture", "objective", "objective_options",
            "beta", "seed", "iterations", "batch_size", "learning_rate", "latent_dim",
            "precision")
# Fields that entered later: part of the id only when they differ from these defaults.
OPTIONAL_IDENTITY: dict[str, Any] = {
    "likelihood": "bernoulli", "decoder_std": None, "activation": None,
    "architecture_options": {}, "validation": 0, "validate_every": None, "patience": None,
    "split_sha256": None,
}
# What a job's runs share: everything of the identity but β and seed.
GROUP_FIELDS = tuple(k for k in (*IDENTITY, *OPTIONAL_IDENTITY) if k not in ("beta", "seed"))


def run_id(run: dict[str, Any]) -> str:
    """Stable id of a run: a hash of the fields that change the trained model."""
    identity = {k: run[k] for k in IDENTITY}
    identity.update({k: run[k] for k, default in OPTIONAL_IDENTITY.items()
                     if run.get(k, default) != default})
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def objective_variants(grid: GridConfig) -> list[tuple[str, dict[str, Any]]]:
    """(objective, options) pairs of a grid; block-diagonal β-VAEs fan out over block sizes."""
    variants: list[tuple[str, dict[str, Any]]] = []
    for objective in grid.objectives:
        if objective == "beta_vae_block":
            variants += [(objective, {"block_size": b}) for b in grid.block_sizes]
        else:
            variants.append((objective, {}))
    return variants


def likelihood_variants(grid: GridConfig) -> list[tuple[str, float | str | None]]:
    """(likelihood, decoder_std) pairs: every σ for the Gaussian, none for the Bernoulli."""
    return [(kind, std) for kind in grid.likelihood
            for std in (grid.decoder_std if kind == "gaussian" else (None,))]


def architecture_options(grid: GridConfig, architecture: str) -> dict[str, Any]:
    """The options of one architecture: the table's scalars, then its own sub-table."""
    table = grid.architecture_options
    own = table.get(architecture, {})
    return {**{k: v for k, v in table.items() if not isinstance(v, dict)}, **own}


def resolved_model(architecture: str, activation: str | None, options: dict[str, Any]
                   ) -> tuple[str | None, dict[str, Any]]:
    """(activation, options) as a run records them: only what differs from the built-in
    architecture's own defaults (so naming a default does not change a run's id)."""
    from benchmark.architectures import get_architecture, is_user_architecture

    if is_user_architecture(architecture):
        return activation, dict(options)
    arch = get_architecture(architecture)
    return (None if activation in (None, arch.activation) else activation,
            {k: v for k, v in options.items() if arch.options.get(k, object()) != v})


def expand(grid: GridConfig, datasets: Any) -> list[dict[str, Any]]:
    """All runs of a grid as resolved flat configs (the ``config.json`` of each run).

    ``datasets``: the loaded :class:`imagesets.ImageSet` of each of the grid's dataset
    paths ({path: dataset}), or one dataset.
    """
    if not isinstance(datasets, dict):
        datasets = {str(Path(datasets.path)): datasets}
    runs = []
    for data in datasets.values():
        runs += _expand_dataset(grid, data)
    _check_models(grid, runs)
    return runs


def _expand_dataset(grid: GridConfig, data: Any) -> list[dict[str, Any]]:
    sizes = _training_sizes(grid, data)
    runs = []
    for split, arch, (objective, options), latent, (kind, std), activation, beta, seed in \
            itertools.product(grid.splits, grid.architectures, objective_variants(grid),
                              grid.latent_dims, likelihood_variants(grid),
                              grid.activation or (None,), grid.betas, grid.seeds):
        if latent % options.get("block_size", 1):
            continue  # a block size that does not divide this latent size (config.py says)
        act, arch_options = resolved_model(arch, activation, architecture_options(grid, arch))
        run = {
            "name": grid.name, "dataset": str(Path(data.path).resolve()),
            "dataset_fingerprint": data.fingerprint, "dataset_kind": data.kind,
            "image_shape": list(data.image_shape), "split": split, "n_train": sizes[split],
            "architecture": arch, "architecture_options": arch_options, "activation": act,
            "objective": objective, "objective_options": options, "latent_dim": latent,
            "likelihood": kind, "decoder_std": std, "beta": beta, "seed": seed,
            "iterations": grid.iterations, "batch_size": grid.batch_size,
            "learning_rate": grid.learning_rate, "precision": grid.precision,
            "checkpoint_every": grid.checkpoint_every, "log_every": grid.log_every,
            "validation": grid.validation,
            "validate_every": (grid.validate_every or grid.log_every) if grid.validation
            else None,
            "patience": grid.patience, "tensorboard": grid.tensorboard,
            "split_sha256": _user_split_sha256(data, split),
        }
        run["run_id"] = run_id(run)
        runs.append(run)
    return runs


def _training_sizes(grid: GridConfig, data: Any) -> dict[str, int]:
    """Images each split trains on (its train set less the validation set), checked."""
    sizes = {}
    for split in grid.splits:
        n = len(data.split(split).train)  # an unknown split: one line with the valid names
        if grid.validation >= n:
            raise InputError(f"validation = {grid.validation} holds out all of {split}'s "
                             f"{n} training images of {data.path}")
        sizes[split] = n - grid.validation
    small = [f"{split} ({n})" for split, n in sizes.items() if n < grid.batch_size]
    if small:
        raise InputError(f"batch_size {grid.batch_size} exceeds the training set of "
                         f"{', '.join(small)} in {data.path}: a minibatch holds distinct "
                         "examples")
    return sizes


def _user_split_sha256(data: Any, split: str) -> str | None:
    """The sha256 of a split the user added (``rdbench data split``), else None: a user split
    made again with other rows must not reuse the runs of the old one."""
    if data.split_info(split).get("rule") != "user":
        return None
    return data.manifest["added_files"].get(f"splits/{split}.npz")


def model_key(run: dict[str, Any]) -> str:
    """The structure of a run's model, as a string (older runs: the defaults they had)."""
    fields = {**model_fields(run), "architecture": run["architecture"],
              "objective": run["objective"], "latent_dim": run["latent_dim"],
              "objective_options": {k: v for k, v in run.get("objective_options", {}).items()
                                    if k != "dataset_size"}}
    fields["image_shape"] = list(fields["image_shape"])
    return json.dumps(fields, sort_keys=True)


def _check_models(grid: GridConfig, runs: list[dict[str, Any]]) -> None:
    """Build one model of every structure the runs name (a user class on a batch of two),
    so any problem with a model is one line before any work; record user classes' sources."""
    from benchmark.architectures import is_user_architecture
    from benchmark.architectures.user import source_sha256

    built: set[str] = set()
    for run in runs:
        key = model_key(run)
        if key not in built:
            build_run_model(run, probe=True)
            built.add(key)
        if is_user_architecture(run["architecture"]):
            run["architecture_source_sha256"] = source_sha256(run["architecture"])


def model_fields(run: dict[str, Any]) -> dict[str, Any]:
    """The ModelSpec fields of a run beyond architecture and latent size (older runs: the
    defaults they were trained with)."""
    return {"image_shape": tuple(run.get("image_shape", (3, 32, 32))),
            "likelihood": run.get("likelihood", "bernoulli"),
            "decoder_std": run.get("decoder_std"), "activation": run.get("activation"),
            "options": dict(run.get("architecture_options") or {})}


def build_run_model(run: dict[str, Any], probe: bool = False) -> Any:
    """The model of a run, freshly initialised (``probe``: a built-in one on the meta device,
    costing no memory; a user's class is built for real, its methods run on two images)."""
    import contextlib

    import torch

    from benchmark.architectures import is_user_architecture
    from benchmark.objectives import build_objective_model

    meta = probe and not is_user_architecture(run["architecture"])
    with torch.device("meta") if meta else contextlib.nullcontext():
        return build_objective_model(run["objective"], run["architecture"], run["latent_dim"],
                                     run.get("objective_options", {}), **model_fields(run))
