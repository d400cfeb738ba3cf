"""``rdbench evaluate RUNS_DIR``: the SPEC §5 metrics of every finished run, resumable.

For each run with status ``done`` that has no ``metrics.json`` made with the settings asked
for (all of them with ``--force``): ``RUNS_DIR/<run_id>/metrics.json`` with, per set (its
split's train and test set), the metrics of :mod:`analysis.metrics` and the settings used.
``--checkpoint best`` evaluates the weights of the run's best validation loss
(``model_best.pt``) into ``metrics_best.json`` instead; ``--checkpoint final best`` both.
Runs that share their dataset, split and model structure are evaluated together.

A run whose metrics were made with other values of the settings that change the numbers
(``analysis.tables.ESTIMATOR_SETTINGS``; older files without them count as other) is
evaluated again, so a runs directory never mixes them silently. Options whose absurd values
would exhaust memory or time are refused beyond stated bounds (``MAX_*``).

Per dataset and split: ``RUNS_DIR/neighbours/<split>.<fingerprint>.npz`` (DESIGN.md; for
runs that record no dataset fingerprint, ``<split>.npz``) with
the ℓ₂ distance (pixels in [0, 1]) of a seeded subset of ``--nn-subset`` test images to the
whole train set, and the ``nn_subset`` and ``dataset_fingerprint`` it was made with
(recomputed when they differ).

Everything evaluate can refuse (options, run files, datasets and their checksums, splits,
objectives, model files) is checked before it writes anything; its first write removes the
temporary files killed writes of an earlier evaluate left.
"""

from __future__ import annotations

import argparse
import math
import reprlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from analysis.metrics import (
    SETS,
    EvalSettings,
    ModelGroup,
    encode_set,
    evaluate_group,
    neighbour_arrays,
    posterior,
    posterior_registry,
)
from benchmark.models import MAX_LATENT_DIM
from rdbench.io import (
    InputError,
    atomic_write,
    atomic_write_json,
    json_or_none,
    remove_temporary_files,
)

__all__ = ["EvalSettings", "ModelGroup", "check_config", "check_fingerprint", "check_model",
           "encode_set", "main", "posterior", "posterior_registry"]

METRICS_FILES = {"final": "metrics.json", "best": "metrics_best.json"}  # --checkpoint
MAX_IWAE_SAMPLES = 100_000  # K: time grows with K × examples
MAX_BATCH_SIZE = 4096  # images per chunk: memory ~ models × chunk × 3072 floats
MAX_MI_BATCH = 4096  # the minibatch estimator holds B × B × d floats; 'exact' is flat


@dataclass
class Selection:
    """The finished runs of a runs directory and what to do with them."""

    done: list[tuple[Path, dict]] = field(default_factory=list)  # every run with status done
    todo: list[tuple[Path, dict]] = field(default_factory=list)  # to evaluate now
    skipped: int = 0  # evaluated already with these settings
    stale: int = 0  # metrics made with other settings (or unreadable): evaluated again
    failed: int = 0  # failed in training
    unfinished: int = 0  # pending or running
    dataset: str | None = None  # --dataset: where every run's dataset is now
    checkpoint: str = "final"  # which weights: model.pt or (best) model_best.pt
    no_best: int = 0  # done, but no model_best.pt: trained without a validation set


def main(args: argparse.Namespace) -> int:
    from rdbench.device import resolve_device

    settings = settings_from_args(args)
    device = resolve_device(args.device)
    runs_dir = Path(args.runs_dir)
    checkpoints = list(dict.fromkeys(getattr(args, "checkpoint", None) or ["final"]))
    selections = [select_runs(runs_dir, settings, force=args.force,
                              dataset=getattr(args, "dataset", None), checkpoint=c)
                  for c in checkpoints]
    datasets, stale_neighbours = check_inputs(runs_dir, selections, settings, args.force)
    _remove_leftovers(runs_dir, selections[0].done)  # the first write: everything is checked
    for path, split, fingerprint in stale_neighbours:
        write_neighbours(runs_dir, datasets[path], split, settings, device, fingerprint)
    for selection in selections:
        groups = _group(selection.todo)
        for key, members in tqdm(groups.items(), desc=f"groups ({selection.checkpoint})",
                                 unit="group", disable=None):
            metrics = evaluate_group(members, datasets[key[0]], settings, device,
                                     checkpoint=selection.checkpoint)
            for (run_dir, _), m in zip(members, metrics, strict=True):
                atomic_write_json(run_dir / METRICS_FILES[selection.checkpoint], m)
        print(_summary(selection, len(groups)))
    return 0


def _summary(s: Selection, n_groups: int) -> str:
    again = (f" (re-evaluated {s.stale} run(s) whose metrics had other settings)" if s.stale
             else "")
    which = "" if s.checkpoint == "final" else " at their best validation checkpoint"
    without = (f", {s.no_best} without model_best.pt (trained without a validation set)"
               if s.checkpoint == "best" else "")
    return (f"evaluated {len(s.todo)} run(s){which} in {n_groups} group(s){again}; skipped "
            f"{s.skipped} already evaluated, {s.failed} failed in training, {s.unfinished} "
            f"not finished{without}")


# --- what to evaluate, checked before anything is written --------------------------------

def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """Validate the estimator options (InputError before any work), each within its bounds."""
    mi = str(getattr(args, "mi_batch", "512"))
    if mi != "exact" and not (mi.isdigit() and 2 <= int(mi) <= MAX_MI_BATCH):
        raise InputError(f"--mi-batch must be an integer from 2 to {MAX_MI_BATCH:,} or 'exact' "
                         f"(the same estimator over the whole set, in flat memory), got {mi!r}")
    s = EvalSettings(iwae_samples=args.iwae_samples, iwae_subset=args.iwae_subset,
                     mi_batch=None if mi == "exact" else int(mi),
                     nn_subset=getattr(args, "nn_subset", 5000),
                     max_examples=getattr(args, "max_examples", 0),
                     batch_size=getattr(args, "batch_size", 256))
    for name, value, low, high in [("--iwae-samples", s.iwae_samples, 1, MAX_IWAE_SAMPLES),
                                   ("--batch-size", s.batch_size, 1, MAX_BATCH_SIZE),
                                   ("--iwae-subset", s.iwae_subset, 0, None),
                                   ("--nn-subset", s.nn_subset, 0, None),
                                   ("--max-examples", s.max_examples, 0, None)]:
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high:,}" if high is not None else f">= {low}"
            raise InputError(f"{name} must be {bound}, got {value}")
    if s.max_examples == 1:
        raise InputError("--max-examples must be 0 (every example) or at least 2 (the rate "
                         "decomposition needs two), got 1")
    if s.mi_batch is None and s.max_examples:
        raise InputError("--mi-batch exact needs every encoding of a set; drop --max-examples")
    return s


def select_runs(runs_dir: Path, settings: EvalSettings, force: bool,
                dataset: str | None = None, checkpoint: str = "final") -> Selection:
    """Every finished run (config checked by :func:`check_config`) and those to evaluate at
    ``checkpoint``: no metrics, metrics with other settings, or all with ``force``.
    ``dataset``: the path that replaces every run's dataset (it moved since training)."""
    from benchmark.runs import MODEL_FILES, find_runs, read_config, read_status

    runs = find_runs(runs_dir)
    if not runs:
        raise InputError(f"no runs in {runs_dir} (directories with a config.json)")
    s = Selection(dataset=str(Path(dataset).expanduser().resolve()) if dataset else None,
                  checkpoint=checkpoint)
    metrics_file = METRICS_FILES[checkpoint]
    for run_dir in runs:
        status = read_status(run_dir)["status"]
        if status != "done":
            s.failed += status == "failed"
            s.unfinished += status != "failed"
            continue
        config = check_config(run_dir, read_config(run_dir))
        if s.dataset:
            config = dict(config, dataset=s.dataset)
        s.done.append((run_dir, config))
        if not (run_dir / MODEL_FILES[checkpoint]).exists() and checkpoint != "final":
            s.no_best += 1
        elif force or not (run_dir / metrics_file).exists():
            s.todo.append((run_dir, config))
        elif _metrics_current(run_dir / metrics_file, settings):
            s.skipped += 1
        else:
            s.stale += 1
            s.todo.append((run_dir, config))
    return s


def _metrics_current(path: Path, settings: EvalSettings) -> bool:
    """A readable metrics.json (both sets) made with settings that give these numbers."""
    metrics = json_or_none(path)
    return (isinstance(metrics, dict) and all(isinstance(metrics.get(s), dict) for s in SETS)
            and settings.gives_the_numbers_of(metrics.get("settings")))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# name: (valid?, what it must be) of the run config fields evaluate and kp read
_CONFIG_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: (lambda v: isinstance(v, str), "a string")
       for k in ("run_id", "dataset", "split", "architecture", "objective")},
    "objective_options": (lambda v: isinstance(v, dict), "an object"),
    "beta": (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v),
             "a finite number"),
    "seed": (_is_int, "an integer"),
    "latent_dim": (lambda v: _is_int(v) and 1 <= v <= MAX_LATENT_DIM,
                   f"an integer from 1 to {MAX_LATENT_DIM:,}"),
    "dataset_fingerprint": (lambda v: v is None or isinstance(v, str), "a string if given"),
}


def check_config(run_dir: Path, config: object) -> dict[str, Any]:
    """A run's ``config.json`` as evaluate and kp need it: an object whose fields of
    ``_CONFIG_FIELDS`` are there and valid. A damaged one (valid JSON of another shape) is
    one line here, never a traceback later."""
    where = f"{run_dir / 'config.json'} is damaged"
    if not isinstance(config, dict):
        raise InputError(f"{where}: not a JSON object; restore it or delete the run")
    for name, (valid, what) in _CONFIG_FIELDS.items():
        if not valid(config.get(name)):
            got = "missing" if name not in config else reprlib.repr(config[name])
            raise InputError(f"{where}: {name!r} must be {what}, got {got}; restore it or "
                             "delete the run")
    return config


def check_inputs(runs_dir: Path, selections: list[Selection], settings: EvalSettings,
                 force: bool) -> tuple[dict[str, Any], list[tuple[str, str, str | None]]]:
    """Everything evaluate can refuse, before it writes: the neighbours directory, every
    dataset it needs (verified), fingerprints, splits and their sizes, objectives and model
    files, for every checkpoint asked for. Returns (dataset path -> dataset, the (dataset,
    split, the runs' recorded fingerprint) whose neighbours to write: those of the runs to
    evaluate with ``force``, else the ones not current)."""
    neighbours = runs_dir / "neighbours"
    if neighbours.exists() and not neighbours.is_dir():
        raise InputError(f"{neighbours} is not a directory (evaluate writes the nearest-"
                         "neighbour distances there); move it away")
    done, moved = selections[0].done, selections[0].dataset
    by_dataset = {(c["dataset"], c["split"]): c.get("dataset_fingerprint") for _, c in done}
    needed = {(c["dataset"], c["split"]) for s in selections for _, c in s.todo}
    stale = sorted((*key, fingerprint) for key, fingerprint in by_dataset.items()
                   if (force and key in needed)
                   or not _neighbours_current(neighbours, key[1], fingerprint, settings))
    to_check = needed | {(path, split) for path, split, _ in stale}
    datasets: dict[str, Any] = {}
    for path in sorted({p for p, _ in to_check} | {moved} - {None}):
        datasets[path] = _load_dataset(path)  # --dataset even with nothing left to do
    for path, split in sorted(to_check):
        _check_split(datasets[path], path, split, settings)
    for run_dir, config in done:
        if config["dataset"] in datasets:
            check_fingerprint(run_dir, config, datasets[config["dataset"]])
    for selection in selections:
        for run_dir, config in selection.todo:
            _check_objective(run_dir, config)
            check_model(run_dir, selection.checkpoint)
    return datasets, stale


def _load_dataset(path: str) -> Any:
    import imagesets

    return imagesets.load_verified(path)


def _check_split(data: Any, path: str, split: str, settings: EvalSettings) -> None:
    """The split exists and each of its sets has the two examples the estimators need."""
    for name, rows in zip(SETS, data.split(split), strict=True):
        n = len(rows) if not settings.max_examples else min(len(rows), settings.max_examples)
        if n < 2:
            raise InputError(f"split {split} of {path}: its {name} set has {len(rows)} "
                             "example(s); evaluation needs at least 2")


def check_fingerprint(run_dir: Path, config: dict, data: Any) -> None:
    """The run's ``dataset_fingerprint`` (when it has one) is the dataset's."""
    if config.get("dataset_fingerprint", data.fingerprint) != data.fingerprint:
        raise InputError(f"run {run_dir.name}: dataset {config['dataset']} changed since "
                         "training (its fingerprint is not the run's)")


def _check_objective(run_dir: Path, config: dict) -> None:
    from benchmark.objectives import get_objective

    objective = get_objective(config["objective"])
    try:
        params = objective.posterior_params(config["latent_dim"], config["objective_options"])
    except (TypeError, ValueError) as e:  # an option of the wrong type, e.g. block_size "2"
        raise InputError(f"run {run_dir.name}: its objective_options do not fit objective "
                         f"{config['objective']!r} ({e})".splitlines()[0]) from None
    if params != config["latent_dim"] and config["objective"] not in posterior_registry():
        raise InputError(f"run {run_dir.name}: objective {config['objective']!r} has no "
                         "mean-field encoder and registers no posterior")


def check_model(run_dir: Path, checkpoint: str = "final") -> None:
    """``model.pt`` (``model_best.pt``) loads, weights only, into the run's model: one line if
    not (:func:`benchmark.runs.load_model` never repeats torch's advice to load it with
    ``weights_only=False``, which would run code from the file)."""
    from benchmark.runs import load_model

    try:
        load_model(run_dir, checkpoint=checkpoint)
    except InputError:
        raise
    except Exception as e:  # the config's options cannot build a model
        raise InputError(f"run {run_dir.name}: cannot build its model ({e})".splitlines()[0]
                         ) from None


def _group(todo: list[tuple[Path, dict]]) -> dict[tuple, list[tuple[Path, dict]]]:
    """Runs evaluated together: one dataset, one split and its rows trained on (validation),
    one model structure (they stack)."""
    from benchmark.grid import model_key

    groups: dict[tuple, list] = defaultdict(list)
    for run_dir, c in todo:
        groups[(c["dataset"], c["split"], int(c.get("validation") or 0), model_key(c))].append(
            (run_dir, c))
    return dict(groups)


# --- leftovers ---------------------------------------------------------------------------

def _remove_leftovers(runs_dir: Path, done: list[tuple[Path, dict]]) -> None:
    """Remove the temporary files killed writes of an earlier evaluate left: of
    ``metrics.json`` in the run directories and of the :func:`neighbours_name` files in
    ``neighbours/`` (:func:`rdbench.io.remove_temporary_files`: only rdbench's signed names
    whose lock is free, so never a live write of another evaluate, nor a user's look-alike)."""
    for run_dir, _ in done:
        for name in METRICS_FILES.values():
            remove_temporary_files(run_dir, name)
    for name in sorted({neighbours_name(c.get("dataset_fingerprint"), c["split"])
                        for _, c in done}):
        remove_temporary_files(runs_dir / "neighbours", name)


# --- nearest neighbours ------------------------------------------------------------------

def neighbours_name(fingerprint: str | None, split: str) -> str:
    """The one name of a split's neighbours file for runs whose config records
    ``fingerprint`` (looked up, written and cleaned up under it): ``<split>.<fingerprint>.npz``,
    one per dataset and split (several datasets may have splits of one name); ``<split>.npz``
    for runs recorded without a fingerprint (older versions)."""
    return f"{split}.{fingerprint}.npz" if fingerprint else f"{split}.npz"


def _neighbours_current(directory: Path, split: str, fingerprint: str | None,
                        settings: EvalSettings) -> bool:
    """Whether the split's file was made with this ``--nn-subset`` on the runs' dataset (on
    the dataset at their path, for runs that record no fingerprint: nothing to compare)."""
    try:
        with np.load(directory / neighbours_name(fingerprint, split),
                     allow_pickle=False) as f:
            return (int(f["nn_subset"]) == settings.nn_subset
                    and fingerprint in (None, str(f["dataset_fingerprint"])))
    except Exception:  # absent, older (no settings), damaged: not current
        return False


def write_neighbours(runs_dir: Path, data: Any, split: str, settings: EvalSettings,
                     device: torch.device, fingerprint: str | None) -> Path:
    """``RUNS_DIR/neighbours/`` + :func:`neighbours_name` of the runs' recorded
    ``fingerprint`` (:func:`analysis.metrics.neighbour_arrays`, made on ``data``)."""
    arrays = neighbour_arrays(data, split, settings, device)
    path = atomic_write(runs_dir / "neighbours" / neighbours_name(fingerprint, split),
                        lambda f: np.savez(f, **arrays))
    legacy = runs_dir / "neighbours" / f"{split}.npz"  # an earlier version's name: replaced
    if legacy != path and legacy.is_file() and not legacy.is_symlink():
        legacy.unlink()
    return path
