"""Training grids: the TOML schema of SPEC §4, §10 and §11, validated once.

A grid is a TOML file. Every key is checked before anything starts: an unknown key,
architecture, objective, likelihood or activation, a β that is not a normal float32 number,
a missing dataset is one clear :class:`~rdbench.io.InputError`. What needs the datasets
(split names, training-set sizes, image shapes, the user's model classes) is checked by
:func:`benchmark.grid.expand`, which turns a grid into runs.
"""

from __future__ import annotations

import dataclasses
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.models import MAX_LATENT_DIM
from rdbench.io import InputError

PRECISIONS = ("fp32", "bf16")
# What rdbench.device.resolve_device takes: torch's device index is an int8 (cuda:128 wraps
# to cuda:-128), and it refuses a leading zero; mps and other device types are unsupported.
_DEVICE = re.compile(r"auto|cpu|cuda(:(0|[1-9][0-9]{0,2}))?", re.ASCII)
_MAX_CUDA_INDEX = 127
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny: smallest normal
_FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max
_INT64_MAX = 2**63 - 1
# A grid name names RUNS_DIR/grids/<name>.json and the atomic write's temporary
# .<name>.json.<12 hex>.tmp beside it: file names hold at most 255 bytes (NAME_MAX).
MAX_NAME = 200


@dataclass(frozen=True)
class GridConfig:
    """One training grid (SPEC §4, §10, §11). Defaults are the paper's settings.

    ``dataset`` (one directory) or ``datasets`` (several: a sweep axis, e.g. Bozkurt et al.'s
    Fig. 7); ``latent_dims``, ``likelihood``, ``decoder_std`` and ``activation`` are axes too
    (a TOML list, or one value). ``architecture_options``: a table of options for every
    architecture, with sub-tables ``[architecture_options.NAME]`` for one of them.
    """

    dataset: str | None = None
    datasets: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()  # required (as are architectures and betas): parse_grid
    architectures: tuple[str, ...] = ()
    betas: tuple[float, ...] = ()
    name: str = "grid"
    objectives: tuple[str, ...] = ("beta_vae",)
    seeds: tuple[int, ...] = (0,)
    iterations: int = 257_000
    batch_size: int = 128
    learning_rate: float = 1e-3
    checkpoint_every: int = 5000
    log_every: int = 1000
    device: str = "auto"
    latent_dim: int | None = None  # the earlier single-value key: latent_dims = [latent_dim]
    latent_dims: tuple[int, ...] = (10,)
    likelihood: tuple[str, ...] = ("bernoulli",)
    decoder_std: tuple[float | str, ...] = ()  # the gaussian likelihood's σ values, or "learned"
    activation: tuple[str, ...] = ()  # empty: each architecture's own (relu; elu for kp-*)
    architecture_options: dict = dataclasses.field(default_factory=dict)
    precision: str = "fp32"
    block_sizes: tuple[int, ...] = (2,)  # for `beta_vae_block`: one run per block size
    max_group_size: int = 64  # models trained at once in one job (memory bound)
    validation: int = 0  # images held out of each split's training set (0: none)
    validate_every: int | None = None  # iterations between validations (default log_every)
    patience: int | None = None  # stop a run after this many validations without improving
    tensorboard: bool = False  # also write each run's history as TensorBoard scalars

    @property
    def dataset_paths(self) -> tuple[str, ...]:
        return self.datasets or ((self.dataset,) if self.dataset else ())


_REQUIRED = ("splits", "architectures", "betas")
_TUPLES = {"splits": str, "architectures": str, "objectives": str, "betas": float,
           "seeds": int, "block_sizes": int, "datasets": str, "latent_dims": int,
           "likelihood": str, "activation": str}
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
    "latent_dims": (1, MAX_LATENT_DIM, "the largest latent space a model is built with"),
    "validation": (0, _INT64_MAX, _INT64),
    "validate_every": (1, _INT64_MAX, _INT64),
    "patience": (1, _INT64_MAX, _INT64),
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
    if ("dataset" in raw) == ("datasets" in raw):
        missing.append("dataset" if "datasets" not in raw else "dataset or datasets, not both")
    if missing:
        raise InputError(f"{source}: missing required key(s) {', '.join(missing)}")
    if "latent_dim" in raw and "latent_dims" in raw:
        raise InputError(f"{source}: give latent_dims (a list) or latent_dim, not both")
    values = {k: _coerce(k, v, source) for k, v in raw.items()}
    if "latent_dim" in values:
        values["latent_dims"] = (values["latent_dim"],)
    grid = GridConfig(**values)
    _validate(grid, source)
    return grid


def _coerce(key: str, value: Any, source: str) -> Any:
    if key in _SPECIAL:
        return _SPECIAL[key](value, source)
    types = {f.name: f.type.split(" |")[0] for f in dataclasses.fields(GridConfig)}
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
    want = {"int": int, "float": float, "str": str, "bool": bool}[types[key]]
    if not _is_a(value, want):
        raise InputError(f"{source}: {key} must be {want.__name__}, got {value!r}")
    _check_bounds(key, [value], source)
    return want(value)


def _decoder_stds(value: Any, source: str) -> tuple[float | str, ...]:
    """``decoder_std``: σ > 0 or "learned", one or a list (checked against the likelihood)."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item != "learned" and not (_is_a(item, float) and 1e-6 <= item <= 1e6):
            raise InputError(f"{source}: decoder_std must be a number from 1e-06 to 1e+06 or "
                             f"\"learned\" (one, or a list), got {item!r}")
    if not items or len(set(items)) != len(items):
        raise InputError(f"{source}: decoder_std must be a non-empty list without repeats")
    return tuple(i if i == "learned" else float(i) for i in items)


def _options_table(value: Any, source: str) -> dict:
    """``[architecture_options]``: scalar options for every architecture, and sub-tables of
    options for one (``[architecture_options.mlp1]``); lists and tables inside are refused."""
    if not isinstance(value, dict):
        raise InputError(f"{source}: architecture_options must be a table, got {value!r}")
    for key, item in value.items():
        inner = item.items() if isinstance(item, dict) else [(key, item)]
        for name, v in inner:
            if isinstance(v, (dict, list)) or v is None:
                raise InputError(f"{source}: architecture_options.{key}: option {name!r} must "
                                 f"be a number, a string or true/false, got {v!r}")
    return dict(value)


_SPECIAL = {"decoder_std": _decoder_stds, "architecture_options": _options_table}


def _is_a(value: Any, want: type) -> bool:
    """Whether a TOML value is of type ``want`` (an int counts as a float; a bool is only a
    bool)."""
    if isinstance(value, bool):
        return want is bool
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
    from benchmark.architectures import ACTIVATIONS, is_user_architecture
    from benchmark.likelihoods import LIKELIHOODS
    from benchmark.models import ARCHITECTURES
    from benchmark.objectives import objective_names

    builtin = tuple(a for a in grid.architectures if not is_user_architecture(a))
    _check_names(source, "architecture", builtin, ARCHITECTURES)
    _check_names(source, "objective", grid.objectives, objective_names())
    _check_names(source, "likelihood", grid.likelihood, LIKELIHOODS)
    _check_names(source, "activation", grid.activation, tuple(ACTIVATIONS))
    if grid.activation and len(builtin) < len(grid.architectures):
        raise InputError(f"{source}: activation applies to the built-in architectures; give "
                         "your model's own through [architecture_options]")
    if ("gaussian" in grid.likelihood) != bool(grid.decoder_std):
        raise InputError(f"{source}: likelihood \"gaussian\" needs decoder_std (σ, or "
                         "\"learned\"), and decoder_std needs likelihood \"gaussian\"")
    _validate_validation(grid, source)
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
        bad = [b for b in grid.block_sizes if all(d % b for d in grid.latent_dims)]
        if bad:
            raise InputError(f"{source}: block size {bad[0]} divides none of the latent sizes "
                             f"{list(grid.latent_dims)} (a block-diagonal posterior runs only "
                             "where its block size divides the latent size)")


def _validate_validation(grid: GridConfig, source: str) -> None:
    """validation / validate_every / patience / tensorboard (SPEC §11)."""
    if grid.validation == 0 and (grid.patience is not None or grid.validate_every is not None):
        raise InputError(f"{source}: validate_every and patience need a validation set "
                         "(validation = N images held out of each training set)")
    every = grid.validate_every or grid.log_every
    if grid.validation and every % grid.log_every:
        raise InputError(f"{source}: validate_every ({every}) must be a multiple of log_every "
                         f"({grid.log_every}), so that every validation is a row of history.csv")
    if grid.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise InputError(f"{source}: tensorboard = true needs the tensorboard package "
                             "(pip install 'rdbench[tensorboard]')") from None


def _check_names(source: str, what: str, given: tuple[str, ...], valid: tuple[str, ...]) -> None:
    for name in given:
        if name not in valid:
            raise InputError(f"{source}: unknown {what} {name!r}; valid: {', '.join(valid)}")


def parse_devices(spec: str) -> list[str]:
    """``"auto"``, ``"cpu"``, ``"cuda:1"`` or a comma list ``"cuda:0,cuda:1"`` → device names."""
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices or not all(_valid_device(d) for d in devices):
        raise InputError(f"invalid device {spec!r}; use auto, cpu, cuda, cuda:N "
                         f"(N from 0 to {_MAX_CUDA_INDEX}) or a comma list")
    return devices


def _valid_device(name: str) -> bool:
    match = _DEVICE.fullmatch(name)
    return match is not None and int(match.group(2) or 0) <= _MAX_CUDA_INDEX
