"""``rdbench data import KIND --download``: the official files, fetched and checked by pooch.

Each :class:`~imagesets.importers.RemoteFile` of the kind's importer is retrieved from
``(--mirror or the publisher's base URL) + '/' + its path`` into the cache (``--cache``,
else ``$RDBENCH_CACHE``, else ``~/.cache/rdbench``; one sub-folder per kind) and verified
against its **pinned sha256**; the folder is then read as ``--from``. pooch downloads into a
temporary file and moves it into the cache only when its hash matches, so a damaged or
changed file is never kept; a file already in the cache with the right hash is not fetched
again. A checksum mismatch, an HTTP error or an unreachable host is one line (exit 2), and
nothing is written to ``--out`` (the output is only checked, not created, before this).

Kinds whose files have no stable public URL with a confirmed sha256 (CelebA lives on Google
Drive) have no ``files``: asking to download them is one line saying where to get them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from rdbench.io import InputError

if TYPE_CHECKING:  # (the importers call fetch: no import cycle at run time)
    from imagesets.importers import Importer, RemoteFile

CACHE_ENV = "RDBENCH_CACHE"
TIMEOUT_S = 60  # seconds without an answer before a download is given up


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$RDBENCH_CACHE``, else ``~/.cache/rdbench``."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rdbench"
    return Path(chosen).expanduser().resolve()


def check_base(url: str) -> str:
    """A base URL without its trailing slash; one line unless it is http(s) with a host."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"--mirror must be an http:// or https:// address, got {url!r}")
    return url.rstrip("/")


def fetch(importer: Importer, mirror: str | None = None,
          cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download (or find in the cache) every official file of ``importer``, each checked
    against its pinned sha256; returns the cache folder that holds them."""
    if not importer.files or not (mirror or importer.base_url):
        where = f" from {importer.homepage}" if importer.homepage else ""
        raise InputError(f"kind {importer.kind} has no --download (no stable public URL with "
                         f"a pinned sha256): get {importer.expects}{where} and give --from PATH")
    base = check_base(mirror or importer.base_url)
    folder = cache_root(cache_dir) / importer.kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the download cache {folder}: {e.strerror or e}"
                         ) from None
    for remote in importer.files:
        retrieve(f"{base}/{remote.url_path}", remote, folder, progress and sys.stderr.isatty())
    return folder


def retrieve(url: str, remote: RemoteFile, folder: Path, progress: bool) -> Path:
    """``url`` as ``folder/remote.name``, its sha256 checked by pooch; one line on failure."""
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=1 << 20,
                                      timeout=TIMEOUT_S)
    try:
        with _quiet(pooch.get_logger()):
            return Path(pooch.retrieve(url, known_hash=f"sha256:{remote.sha256}",
                                       fname=remote.name, path=folder, downloader=downloader))
    except ValueError as e:
        if "hash" not in str(e).lower():
            raise
        raise InputError(f"{url} does not match the pinned sha256 of {remote.name} "
                         f"({remote.sha256[:16]}…): a damaged download, a wrong mirror or a "
                         "changed file; nothing was kept") from None
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise InputError(f"cannot download {url}: HTTP {status}") from None
    except requests.exceptions.RequestException as e:
        raise InputError(f"cannot download {url}: {type(e).__name__} (host unreachable or "
                         "not answering)") from None
    except OSError as e:
        raise InputError(f"cannot write {remote.name} into the cache {folder}: "
                         f"{e.strerror or e}") from None


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """pooch's 'Downloading ...' info lines off: errors stay one line on stderr."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
