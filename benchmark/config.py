"""Training grids: the TOML schema of SPEC §4, validated once, expanded into runs.

A grid is a flat TOML file. Every key is checked before anything starts: an unknown key,
split, architecture or objective, a β ≤ 0 or a missing dataset is one clear
:class:`~rdbench.io.InputError`. :func:`expand` turns a grid into runs (split ×
architecture × objective × β × seed), each a flat dict whose identity (the fields that
change the trained model) hashes to a stable ``run_id``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.models import MAX_LATENT_DIM
from rdbench.io import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRECISIONS = ("fp32", "bf16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Fields of a run that change the trained model; everything else (device, logging,
# checkpoint cadence, the dataset's location) may differ without changing the run.
_IDENTITY = ("dataset_fingerprint", "split", "architecture", "objective", "objective_options",
             "beta", "seed", "iterations", "batch_size", "learning_rate", "latent_dim",
             "precision")

_FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny: smallest normal
_FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max
_INT64_MAX = 2**63 - 1
# A grid name names RUNS_DIR/grids/<name>.json and the atomic write's temporary
# .<name>.json.<12 hex>.tmp beside it: file names hold at most 255 bytes (NAME_MAX).
MAX_NAME = 200


@dataclass(frozen=True)
class GridConfig:
    """One training grid (SPEC §4). Defaults are the paper's settings."""

    dataset: str
    splits: tuple[str, ...]
    architectures: tuple[str, ...]
    betas: tuple[float, ...]
    name: str = "grid"
    objectives: tuple[str, ...] = ("beta_vae",)
    seeds: tuple[int, ...] = (0,)
    iterations: int = 257_000
    batch_size: int = 128
    learning_rate: float = 1e-3
    checkpoint_every: int = 5000
    log_every: int = 1000
    device: str = "auto"
    latent_dim: int = 10
    precision: str = "fp32"
    block_sizes: tuple[int, ...] = (2,)  # for `beta_vae_block`: one run per block size
    max_group_size: int = 64  # models trained at once in one job (memory bound)


_REQUIRED = ("dataset", "splits", "architectures", "betas")
_TUPLES = {"splits": str, "architectures": str, "objectives": str, "betas": float,
           "seeds": int, "block_sizes": int}
_FLOAT32 = "a normal float32 number: the trainer computes in float32, where a smaller value " \
           "is 0 or subnormal and a larger one inf"
_INT64 = "run files and tables store it as an int64"
# Numeric keys: (smallest, largest, why that range), checked on the value as written (a
# list key: every entry). Adding a numeric key to the grid is one line here.
_BOUNDS: dict[str, tuple[float, float, str]] = {
    "betas": (_FLOAT32_TINY, _FLOAT32_MAX, _FLOAT32),
    "learning_rate": (_FLOAT32_TINY, _FLOAT32_MAX, _FLOAT32),
    "seeds": (0, _INT64_MAX, _INT64),
    "iterations": (1, _INT64_MAX, _INT64),
    "checkpoint_every": (1, _INT64_MAX, _INT64),
    "log_every": (1, _INT64_MAX, _INT64),
    "batch_size": (1, 65_536, "a larger minibatch would not fit in a GPU's memory"),
    "latent_dim": (1, MAX_LATENT_DIM, "the largest latent space a model is built with"),
    "block_sizes": (1, MAX_LATENT_DIM, "a block divides latent_dim"),
    "max_group_size": (1, 65_536, "models trained at once, each with its own weights"),
}


def load_grid(path: str | Path, **overrides: Any) -> GridConfig:
    """Read and validate a grid TOML file; ``overrides`` (e.g. ``device``) win over the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"config file {path} is not valid TOML: {e}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return parse_grid(raw, source=str(path))


def _read_text(path: Path) -> str:
    """The UTF-8 text of a regular file; anything else is one line. A FIFO or a device is
    refused before it is opened: reading it could wait forever or never end."""
    try:
        if path.is_dir():
            raise InputError(f"config {path} is a directory; give a grid .toml file")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"config {path} is not a regular file (a FIFO or a device?); "
                             "give a grid .toml file")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"config file {path} is not UTF-8 text ({e.reason} at byte "
                         f"{e.start}); TOML files are UTF-8") from None
    except OSError as e:  # permission denied, an I/O error, a name too long...
        raise InputError(f"cannot read config file {path}: {e.strerror or e}") from None


def parse_grid(raw: dict[str, Any], source: str = "config") -> GridConfig:
    """Validate a grid given as a dict (the parsed TOML)."""
    valid = [f.name for f in dataclasses.fields(GridConfig)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(valid)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise InputError(f"{source}: missing required key(s) {', '.join(missing)}")
    values = {k: _coerce(k, v, source) for k, v in raw.items()}
    grid = GridConfig(**values)
    _validate(grid, source)
    return grid


def _coerce(key: str, value: Any, source: str) -> Any:
    types = {f.name: f.type for f in dataclasses.fields(GridConfig)}
    if key in _TUPLES:
        items = value if isinstance(value, list) else [value]
        want = _TUPLES[key]
        for item in items:
            if not _is_a(item, want):
                raise InputError(f"{source}: {key} must be a list of {want.__name__}, "
                                 f"got {item!r}")
        if not items:
            raise InputError(f"{source}: {key} must not be empty")
        if len(set(items)) != len(items):
            raise InputError(f"{source}: {key} has duplicate entries: {items}")
        _check_bounds(key, items, source)
        return tuple(want(i) for i in items)
    want = {"int": int, "float": float, "str": str}[types[key]]
    if not _is_a(value, want):
        raise InputError(f"{source}: {key} must be {want.__name__}, got {value!r}")
    _check_bounds(key, [value], source)
    return want(value)


def _is_a(value: Any, want: type) -> bool:
    """Whether a TOML value is of type ``want`` (an int counts as a float; a bool as neither)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if want is float else want)


def _check_bounds(key: str, values: list[Any], source: str) -> None:
    """Every value of a numeric key within its ``_BOUNDS`` (NaN is not), compared as written:
    an int too large for a float is refused, not an OverflowError."""
    if key not in _BOUNDS:
        return
    low, high, why = _BOUNDS[key]
    bad = [v for v in values if not low <= v <= high]
    if bad:
        what = "an integer" if isinstance(low, int) else "a number"
        raise InputError(f"{source}: {key} must be {what} from {_show(low)} to {_show(high)} "
                         f"({why}), got {bad[0]!r}")


def _show(bound: float) -> str:
    return f"{bound:.8g}" if isinstance(bound, float) else f"{bound:,}"


def _validate(grid: GridConfig, source: str) -> None:
    import tetrominoes
    from benchmark.models import ARCHITECTURES
    from benchmark.objectives import objective_names

    _check_names(source, "split", grid.splits, tetrominoes.SPLIT_NAMES)
    _check_names(source, "architecture", grid.architectures, ARCHITECTURES)
    _check_names(source, "objective", grid.objectives, objective_names())
    if not _NAME.match(grid.name):
        raise InputError(f"{source}: name must be letters, digits, '.', '_' or '-' (it names "
                         f"files and the default runs directory), got {grid.name!r}")
    if len(grid.name) > MAX_NAME:
        raise InputError(f"{source}: name is {len(grid.name)} characters long, at most "
                         f"{MAX_NAME} (it names the file RUNS_DIR/grids/<name>.json, and a "
                         "file name holds at most 255 bytes)")
    if grid.checkpoint_every % grid.log_every:
        raise InputError(f"{source}: checkpoint_every ({grid.checkpoint_every}) must be a "
                         f"multiple of log_every ({grid.log_every}), so that a resumed "
                         "history.csv equals an uninterrupted one")
    if grid.precision not in PRECISIONS:
        raise InputError(f"{source}: precision must be one of {', '.join(PRECISIONS)}")
    parse_devices(grid.device)
    if "beta_vae_block" in grid.objectives:
        bad = [b for b in grid.block_sizes if grid.latent_dim % b]
        if bad:
            raise InputError(f"{source}: block_sizes must divide latent_dim="
                             f"{grid.latent_dim}, got {bad}")


def _check_names(source: str, what: str, given: tuple[str, ...], valid: tuple[str, ...]) -> None:
    for name in given:
        if name not in valid:
            raise InputError(f"{source}: unknown {what} {name!r}; valid: {', '.join(valid)}")


def parse_devices(spec: str) -> list[str]:
    """``"auto"``, ``"cpu"``, ``"cuda:1"`` or a comma list ``"cuda:0,cuda:1"`` → device names."""
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices or not all(_DEVICE.match(d) for d in devices):
        raise InputError(f"invalid device {spec!r}; use auto, cpu, cuda, cuda:N or a comma list")
    return devices


def objective_variants(grid: GridConfig) -> list[tuple[str, dict[str, Any]]]:
    """(objective, options) pairs of a grid; block-diagonal β-VAEs fan out over block sizes."""
    variants: list[tuple[str, dict[str, Any]]] = []
    for objective in grid.objectives:
        if objective == "beta_vae_block":
            variants += [(objective, {"block_size": b}) for b in grid.block_sizes]
        else:
            variants.append((objective, {}))
    return variants


def run_id(run: dict[str, Any]) -> str:
    """Stable id of a run: a hash of the fields that change the trained model."""
    identity = {k: run[k] for k in _IDENTITY}
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand(grid: GridConfig, dataset: Any) -> list[dict[str, Any]]:
    """All runs of a grid as resolved flat configs (the ``config.json`` of each run).

    ``dataset`` is the loaded :class:`tetrominoes.Tetrominoes` (for its path, fingerprint
    and split sizes).
    """
    sizes = {split: int(len(dataset.split(split).train)) for split in grid.splits}
    small = [f"{split} ({n})" for split, n in sizes.items() if n < grid.batch_size]
    if small:
        raise InputError(f"batch_size {grid.batch_size} exceeds the training set of "
                         f"{', '.join(small)}: a minibatch holds distinct examples")
    runs = []
    for split, arch, (objective, options), beta, seed in itertools.product(
            grid.splits, grid.architectures, objective_variants(grid), grid.betas, grid.seeds):
        run = {
            "name": grid.name, "dataset": str(Path(dataset.path).resolve()),
            "dataset_fingerprint": dataset.fingerprint, "split": split,
            "n_train": sizes[split], "architecture": arch,
            "objective": objective, "objective_options": options, "beta": beta, "seed": seed,
            "iterations": grid.iterations, "batch_size": grid.batch_size,
            "learning_rate": grid.learning_rate, "latent_dim": grid.latent_dim,
            "precision": grid.precision, "checkpoint_every": grid.checkpoint_every,
            "log_every": grid.log_every,
        }
        run["run_id"] = run_id(run)
        runs.append(run)
    return runs
