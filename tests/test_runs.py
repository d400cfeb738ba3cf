"""Runs on disk (``benchmark.runs``): links skipped, foreign files and failed writes one line."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from benchmark import runs as runs_io
from benchmark.trainer import RunState
from rdbench.io import InputError


def _run(runs_dir: Path, run_id: str, **config) -> Path:
    """A run directory with a config.json of a tiny mlp1 β-VAE (no model trained)."""
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    config = {"run_id": run_id, "objective": "beta_vae", "architecture": "mlp1",
              "latent_dim": 2, "objective_options": {}, **config}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


class _Foreign:
    """A class a weights-only load refuses (torch then advises weights_only=False)."""


def _message(call, *args) -> str:
    with pytest.raises(InputError) as err:
        call(*args)
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message, message
    return message


def test_find_runs_skips_linked_runs_with_one_warning_each(tmp_path, capsys):
    runs = tmp_path / "runs"
    real = _run(runs, "a")
    elsewhere = _run(tmp_path / "elsewhere", "b")
    (runs / "b").symlink_to(elsewhere, target_is_directory=True)  # a linked run directory
    linked_config = runs / "c"
    linked_config.mkdir()
    (linked_config / "config.json").symlink_to(elsewhere / "config.json")
    assert runs_io.find_runs(runs) == [real]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"rdbench: warning: skipped {runs / 'b'}: a symbolic link (runs are read "
                   "only from inside the runs directory)",
                   f"rdbench: warning: skipped {linked_config / 'config.json'}: a symbolic "
                   "link (runs are read only from inside the runs directory)"]
    assert runs_io.find_runs(runs) == [real]  # read again (report reads twice): said once
    assert capsys.readouterr().err == ""


def test_a_foreign_model_file_is_one_line_without_torchs_advice(tmp_path):
    run_dir = _run(tmp_path, "r")
    model = run_dir / "model.pt"
    torch.save(_Foreign(), model)
    assert _message(runs_io.load_model, run_dir) == (
        f"unreadable model {model} (Unsupported global: GLOBAL {__name__}._Foreign was not "
        "an allowed global by default)")
    model.write_bytes(b"\x80\x04 not a torch file")
    assert _message(runs_io.load_model, run_dir) == (
        f"unreadable model {model} (not a file written by torch.save)")
    torch.save({"encoder.weight": torch.zeros(3)}, model)  # a state dict of another model
    assert _message(runs_io.load_model, run_dir).startswith(
        f"unreadable model {model} (Error(s) in loading state_dict for VAE: ")
    model.unlink()
    model.mkdir()
    assert _message(runs_io.load_model, run_dir) == f"unreadable model {model} (Is a directory)"


@pytest.mark.parametrize(("payload", "reason"), [
    (_Foreign(), "Unsupported global"),
    ([1, 2, 3], "not a checkpoint"),
    ({"iteration": "4", "model": {}, "optimizer": {}}, "not a checkpoint"),
    ({"model.weight": torch.zeros(2)}, "not a checkpoint"),  # a state dict, not a checkpoint
    ({"iteration": 4, "model": {}, "optimizer": {}, "group": "ab"}, "not a checkpoint"),
    (b"garbage", "not a file written by torch.save")])
def test_a_foreign_checkpoint_is_one_line_wherever_it_is_read(tmp_path, payload, reason):
    run_dir = _run(tmp_path, "r")
    path = run_dir / "checkpoint.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    for read in (runs_io.checkpoints, runs_io.load_checkpoint):
        message = _message(read, run_dir)
        assert message.startswith(f"unreadable checkpoint {path} ({reason}"), message


def test_a_real_checkpoint_reads_back(tmp_path):
    run_dir = _run(tmp_path, "r")
    state = RunState(8, {"w": torch.ones(2)}, {"step": 8, "exp_avg": {}, "exp_avg_sq": {}})
    runs_io.save_checkpoint(run_dir, state, [], group=("r",))
    assert runs_io.checkpoints(run_dir) == ({0: run_dir / "checkpoint.pt",
                                             8: run_dir / "checkpoint.pt"}, ("r",))
    assert runs_io.load_checkpoint(run_dir).iteration == 8


def _failing(errno_: int | None, short: bool):
    """An atomic_torch_save that fails as the OS would (``errno_``), directly or as torch
    reports a write that stopped short: a RuntimeError raised while handling the OSError."""
    def stopped() -> RuntimeError:
        return RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")

    def save(path, obj):
        if errno_ is None:
            raise stopped()
        try:
            raise OSError(errno_, os.strerror(errno_))
        except OSError:
            if short:
                raise stopped()  # noqa: B904 (as torch does: the OSError is its context)
            raise
    return save


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_write_names_the_file_and_keeps_a_full_disk_for_the_cli(tmp_path, monkeypatch,
                                                                         short):
    """A full disk, quota or read-only file system stays an OSError naming the file (the
    CLI's one line, exit 1); any other failure is one line naming the run and the file."""
    run_dir = _run(tmp_path, "r")
    state = RunState(4, {"w": torch.ones(2)}, {"step": 4, "exp_avg": {}, "exp_avg_sq": {}})
    for write, name in ((runs_io.save_checkpoint, "checkpoint.pt"),
                        (runs_io.finish_run, "model.pt")):
        for errno_ in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            monkeypatch.setattr(runs_io, "atomic_torch_save", _failing(errno_, short))
            with pytest.raises(OSError) as err:
                write(run_dir, state, [])
            assert (err.value.errno, err.value.filename) == (errno_, str(run_dir / name))
        for errno_, reason in ((errno.EFBIG, "File too large"),
                               (errno.EACCES, "Permission denied")):
            monkeypatch.setattr(runs_io, "atomic_torch_save", _failing(errno_, short))
            with pytest.raises(runs_io.RunWriteError) as err:
                write(run_dir, state, [])
            assert str(err.value) == f"cannot write {run_dir / name} (run r): {reason}"
            assert isinstance(err.value, InputError)  # one line from the CLI
    monkeypatch.setattr(runs_io, "atomic_torch_save", _failing(None, short=True))
    with pytest.raises(RuntimeError):  # not a failed write: a bug, reported as one
        runs_io.save_checkpoint(run_dir, state, [])


def test_an_unreadable_status_or_history_is_one_line(tmp_path):
    run_dir = _run(tmp_path, "r")
    for name, read in (("status.json", runs_io.read_status), ("history.csv", runs_io.read_history)):
        (run_dir / name).mkdir()
        assert _message(read, run_dir).startswith(f"unreadable {run_dir / name} (Is a directory)")
