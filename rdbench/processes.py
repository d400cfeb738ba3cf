"""Worker processes that end with the process that started them.

A pool worker busy with a task does not notice that its parent died (``kill -9`` of
``rdbench``): it would go on training or rendering for hours, holding cores, memory and a
GPU, and writing files no one will read. :func:`exit_with_parent`, called in the worker
(a pool's ``initializer``, or the first task it runs), starts a daemon thread that ends the
worker once it is orphaned, which shows as a change of its parent pid (the kernel hands
orphans to init or a subreaper). Polling ``os.getppid`` works for every start method on
POSIX; ``prctl(PR_SET_PDEATHSIG)`` is Linux-only and fires when the *thread* that started
the worker exits (loky may start workers from its manager thread).
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5  # how soon an orphaned worker notices
ORPHANED = 1  # exit status of a worker ended by its parent's death
_watched: int | None = None  # the parent this process watches already


def exit_with_parent(parent: int, poll: float = POLL_SECONDS) -> None:
    """End this process (``os._exit``) within ``poll`` seconds of ``parent``'s death.

    For a worker whose parent is ``parent`` (the pool's owner passes its ``os.getpid()``).
    Called again it does nothing; in ``parent`` itself, or in a process that is not its
    child while it lives, there is no death to watch for and it does nothing either.
    """
    global _watched
    if _watched == parent or os.getpid() == parent:
        return
    if os.getppid() != parent and _alive(parent):  # not its child: nothing to follow
        return
    _watched = parent
    threading.Thread(target=_watch, args=(parent, poll), daemon=True,
                     name="rdbench-exit-with-parent").start()


def _watch(parent: int, poll: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll)
    os._exit(ORPHANED)  # at once: no cleanup handler may wait for the dead parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
