"""``rdbench data import KIND --download [--mirror URL]``: files served by an HTTP server on
127.0.0.1 that the test starts, checked against pinned sha256 by pooch; a wrong hash, an
HTTP error or an unreachable host is one line, exit 2, nothing at ``--out`` nor in the cache."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import re
import socket
import struct
import threading

import numpy as np
import pytest

from imagesets import load_verified
from imagesets.importers import RemoteFile, registry
from rdbench.cli import main

RNG = np.random.default_rng(1)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x000008NN, big-endian int32 sizes, values."""
    return struct.pack(f">i{array.ndim}i", 0x0800 | array.ndim, *array.shape) + array.tobytes()


def mnist_arrays(n_train: int, n_test: int) -> dict[str, np.ndarray]:
    return {"train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 5, 4), np.uint8),
            "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, np.uint8),
            "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 5, 4), np.uint8),
            "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, np.uint8)}


def refused(code: int, err: str, out, text: str) -> None:
    """Exit 2, the last stderr line naming the problem, nothing at ``out``."""
    assert code == 2
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("rdbench: error:") and text in last, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, served directory): an HTTP server on 127.0.0.1, a free port."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def mirror(server, monkeypatch):
    """Tiny MNIST .gz files below ``<base>/mnist/``, the importer's pinned hashes replaced
    by theirs; returns (base URL, arrays, the mnist importer's files)."""
    base, served = server
    arrays = mnist_arrays(n_train=6, n_test=3)
    (served / "mnist").mkdir()
    files = []
    for name, array in arrays.items():
        data = gzip.compress(idx_bytes(array))
        (served / "mnist" / f"{name}.gz").write_bytes(data)
        files.append(RemoteFile(f"{name}.gz", hashlib.sha256(data).hexdigest()))
    importer = registry()["mnist"]
    monkeypatch.setitem(registry(), "mnist", dataclasses.replace(importer, files=tuple(files)))
    return f"{base}/mnist", arrays, files


def download(capsys, mirror_url, tmp_path, *extra) -> tuple[int, str]:
    code = main(["data", "import", "mnist", "--download", "--mirror", mirror_url,
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *extra])
    return code, capsys.readouterr().err


def test_download_from_a_mirror_imports_the_checked_files(mirror, tmp_path, capsys):
    url, arrays, files = mirror
    code, err = download(capsys, url, tmp_path)
    assert code == 0, err
    data = load_verified(tmp_path / "out")
    np.testing.assert_array_equal(data.images[:6, ..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.images[6:, ..., 0], arrays["t10k-images-idx3-ubyte"])
    assert data.manifest["sources_verified"] is True
    assert data.manifest["sources"] == {f.name: f.sha256 for f in files}
    cached = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(f.name for f in files)


def test_a_cached_file_is_not_fetched_again(mirror, tmp_path, capsys):
    url, _, _ = mirror
    assert download(capsys, url, tmp_path)[0] == 0
    closed = free_port_url()  # the mirror is gone: only the cache can answer
    code, err = download(capsys, closed, tmp_path, "--force")
    assert code == 0, err


def test_a_wrong_checksum_is_refused_and_not_kept(mirror, tmp_path, capsys, monkeypatch):
    url, _, files = mirror
    wrong = (*files[:2], dataclasses.replace(files[2], sha256="0" * 64), files[3])
    monkeypatch.setitem(registry(), "mnist", dataclasses.replace(registry()["mnist"],
                                                                 files=wrong))
    code, err = download(capsys, url, tmp_path)
    refused(code, err, tmp_path / "out",
            "t10k-images-idx3-ubyte.gz does not match the pinned sha256")
    assert err.count("\n") == 1
    assert not (tmp_path / "cache" / "mnist" / files[2].name).exists()


def test_http_errors_and_unreachable_hosts_are_one_line(mirror, server, tmp_path, capsys):
    base, _ = server
    code, err = download(capsys, f"{base}/nothing-here", tmp_path)
    refused(code, err, tmp_path / "out", "HTTP 404")
    assert err.count("\n") == 1
    code, err = download(capsys, free_port_url(), tmp_path)
    refused(code, err, tmp_path / "out", "host unreachable or not answering")
    assert err.count("\n") == 1


def test_the_cache_defaults_to_rdbench_cache(mirror, tmp_path, capsys, monkeypatch):
    url, _, files = mirror
    monkeypatch.setenv("RDBENCH_CACHE", str(tmp_path / "env-cache"))
    code = main(["data", "import", "mnist", "--download", "--mirror", url,
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "env-cache" / "mnist" / files[0].name).is_file()


@pytest.mark.parametrize("kind, mirror_url, text", [
    ("celeba", None, "kind celeba has no --download"),
    ("dsprites", None, "kind dsprites has no --download"),
    ("mnist", "ftp://127.0.0.1/x", "--mirror must be an http:// or https:// address"),
])
def test_kinds_without_download_and_bad_mirrors_are_one_line(kind, mirror_url, text,
                                                             tmp_path, capsys):
    extra = ["--mirror", mirror_url] if mirror_url else []
    code = main(["data", "import", kind, "--download", "--cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    refused(code, err, tmp_path / "out", text)
    assert err.count("\n") == 1
    assert not (tmp_path / "cache").exists()


def test_every_download_is_an_official_file_pinned_by_a_sha256():
    idx = {f"{p}-{x}-ubyte.gz" for p in ("train", "t10k") for x in ("images-idx3", "labels-idx1")}
    norb = {f"smallnorb-5x{ids}x9x18x6x2x96x96-{part}-{x}.mat.gz"
            for ids, part in (("46789", "training"), ("01235", "testing"))
            for x in ("dat", "cat", "info")}
    official = {"mnist": idx, "fashion-mnist": idx, "smallnorb": norb,
                "3dshapes": {"3dshapes.h5"}}
    pinned = {kind: importer for kind, importer in registry().items() if importer.files}
    assert {kind: {f.name for f in imp.files} for kind, imp in pinned.items()} == official
    for importer in pinned.values():
        assert re.fullmatch(r"https?://[^/\s]+(/\S*[^/])?", importer.base_url)
        assert all(re.fullmatch(r"[0-9a-f]{64}", f.sha256) for f in importer.files)


def free_port_url() -> str:
    """The address of a port on 127.0.0.1 that nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
