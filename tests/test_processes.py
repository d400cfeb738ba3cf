"""Worker processes end with their parent: kill -9 of `rdbench train --workers 2` or of
`rdbench data generate` leaves no worker computing on (``rdbench.processes``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": the name may hold spaces
    return fields[0], int(fields[1])


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] == pid:
            found.add(int(entry.name))
    return found


def _running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still alive (a zombie has exited: it only waits to be reaped)."""
    return {p for p in pids if (stat := _stat(p)) is not None and stat[0] not in "ZX"}


def _kill_parent_then_watch_children(command: list[str], n_children: int, ready,
                                     timeout: float = 10.0) -> set[int]:
    """Start ``command``, wait until it has ``n_children`` children and ``ready()`` holds,
    kill -9 it; returns the children still running ``timeout`` seconds later (killed
    then, so a failing test leaves nothing behind)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.time() + 120
        while (len(children) < n_children or not ready()) and time.time() < deadline:
            assert proc.poll() is None, "the command ended before it could be killed"
            children |= _children(proc.pid)
            time.sleep(0.05)
        assert len(children) >= n_children and ready(), "the workers never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + timeout
        while _running(children) and time.time() < deadline:
            time.sleep(0.1)
        return _running(children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _running(children):  # ours: started by the command this test started
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_train_workers_stop_when_rdbench_is_killed(tiny_dataset, tmp_path):
    grid = {"name": "long", "dataset": str(tiny_dataset), "splits": ["random"],
            "architectures": ["mlp1", "cnn1"], "betas": [1.0], "seeds": [0],
            "iterations": 100_000, "batch_size": 8, "checkpoint_every": 10,
            "log_every": 10, "device": "cpu"}
    config = tmp_path / "g.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in grid.items()))
    out = tmp_path / "runs"
    left = _kill_parent_then_watch_children(
        [sys.executable, "-m", "rdbench", "train", str(config), "--out", str(out),
         "--workers", "2"], n_children=2,
        ready=lambda: len(list(out.glob("*/checkpoint.pt"))) == 2)  # both jobs training
    assert not left


@pytest.mark.slow
def test_generate_workers_stop_when_rdbench_is_killed(tmp_path):
    out = tmp_path / "data"
    started = time.time()
    left = _kill_parent_then_watch_children(
        [sys.executable, "-m", "rdbench", "data", "generate", "--out", str(out),
         "--workers", "2"], n_children=2,
        ready=lambda: time.time() > started + 2)  # rendering the full dataset (~20 s)
    assert not left


def test_exit_with_parent_leaves_a_process_that_is_not_the_orphan_of_parent():
    """In the parent itself (jobs run in process) or under a live non-parent, the watch
    must not end the process: it only ends a child whose parent died."""
    code = ("import os, time; from rdbench.processes import exit_with_parent as watch; "
            "watch(os.getpid(), poll=0.01); watch(1, poll=0.01); time.sleep(0.5); "
            "print('alive')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "alive\n"), done.stderr
