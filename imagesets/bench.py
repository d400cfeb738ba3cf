"""Import throughput and peak memory (SPEC §8, §9): ``rdbench bench data``'s import row.

A synthetic file in 3dShapes' official format (``3dshapes.h5``: ``images`` uint8
(N, 64, 64, 3) of random pixels, ``labels`` (N, 6) drawn from the real factor grid) is
written in chunks to a temporary directory, then imported by ``rdbench data import
3dshapes`` in a child process, which reports its wall and CPU time and its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, measured inside the child so that no other child of
the caller counts). Full size is the real 480,000 images (5.9 GB of pixels; ≈ 12 GB of
temporary disk for the file and the dataset, deleted afterwards); ``quick`` 4,096. The
synthetic file stores the pixels uncompressed (random pixels do not compress; the official
file is gzip-compressed, 255 MB, so reading it adds inflating).

``python -m imagesets.bench celeba --n 20000`` measures the same for CelebA-like input: a
folder of N 178×218 JPEGs (smooth random pictures, ≈ CelebA's file size) and its partition
file, imported with ``rdbench data import celeba`` (a process pool decodes; the peak is the
parent's RSS plus workers × the largest worker's, an upper bound).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rdbench.io import InputError

FULL, QUICK = 480_000, 4_096  # images of the real 3dShapes, and of the quick bench
CHUNK = 10_000  # images written per slab of the synthetic file (123 MB)
GRID = {"floor_hue": np.linspace(0, 0.9, 10), "wall_hue": np.linspace(0, 0.9, 10),
        "object_hue": np.linspace(0, 0.9, 10), "scale": np.linspace(0.75, 1.25, 8),
        "shape": np.arange(4.0), "orientation": np.linspace(-30, 30, 15)}  # 480,000 rows
_CHILD = """
import json, resource, sys, time
from rdbench.cli import main
t = time.perf_counter()
code = main(["data", "import", *sys.argv[1:]])
wall = time.perf_counter() - t
usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print(json.dumps({"code": code, "seconds": wall,
                  "cpu_seconds": sum(u.ru_utime + u.ru_stime for u in usage),
                  "rss_mb": usage[0].ru_maxrss / 1024, "worker_rss_mb": usage[1].ru_maxrss / 1024}))
"""


def factor_grid(n: int, seed: int = 0) -> np.ndarray:
    """n distinct rows (float64 (n, 6)) of 3dShapes' factor grid, in random order."""
    rows = np.array(list(itertools.product(*GRID.values())))
    return rows[np.random.default_rng(seed).permutation(len(rows))[:n]]


def write_synthetic_3dshapes(path: str | os.PathLike, n: int, seed: int = 0) -> Path:
    """A ``3dshapes.h5``-format file of n random images, written ``CHUNK`` at a time."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, 64, 64, 3), dtype=np.uint8)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            images[start:stop] = rng.integers(0, 256, (stop - start, 64, 64, 3), np.uint8)
        f.create_dataset("labels", data=factor_grid(n, seed))
    return Path(path)


def write_synthetic_celeba(folder: Path, n: int, seed: int = 0) -> Path:
    """``img_align_celeba/`` of n smooth random 178×218 JPEGs and a partition file."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pictures = folder / "img_align_celeba"
    pictures.mkdir(parents=True)
    lines = []
    for i in range(1, n + 1):
        small = Image.fromarray(rng.integers(0, 256, (14, 12, 3), np.uint8))
        small.resize((178, 218), Image.Resampling.BICUBIC).save(pictures / f"{i:06d}.jpg",
                                                                quality=90)
        lines.append(f"{i:06d}.jpg {(0, 0, 0, 0, 0, 0, 0, 0, 1, 2)[i % 10]}\n")
    (folder / "list_eval_partition.txt").write_text("".join(lines))
    return folder


def import_in_child(kind: str, source: Path, out: Path) -> dict:
    """Run ``rdbench data import KIND --from SOURCE --out OUT`` in a child process; its
    seconds, CPU seconds and peak RSS (MB)."""
    cmd = [sys.executable, "-c", _CHILD, kind, "--from", str(source), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or json.loads(lines[-1])["code"] != 0:
        raise RuntimeError(f"import failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def import_disk_bytes(n: int) -> int:
    """Temporary disk the import bench of n images needs: the file, the dataset, 1 GiB."""
    return 2 * n * 64 * 64 * 3 + 2**30


def check_import_disk(quick: bool = False) -> None:
    """One line, before any measuring, if the temporary directory is too small."""
    check_disk(Path(tempfile.gettempdir()), import_disk_bytes(QUICK if quick else FULL))


def check_disk(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise InputError(f"the import bench needs {needed / 1e9:.1f} GB free in {directory} "
                         f"(has {free / 1e9:.1f} GB): free some, set TMPDIR, or use --quick")


def bench_import_3dshapes(quick: bool = False, n: int | None = None) -> dict:
    """Images/s and peak RSS of importing a synthetic 3dShapes-sized file (``n`` images:
    default 480,000, or 4,096 with ``quick``)."""
    n = n or (QUICK if quick else FULL)
    tmp = Path(tempfile.mkdtemp(prefix="rdbench-bench-import-"))
    try:
        check_disk(tmp, import_disk_bytes(n))
        start = time.perf_counter()
        source = write_synthetic_3dshapes(tmp / "3dshapes.h5", n)
        written = time.perf_counter() - start
        child = import_in_child("3dshapes", source, tmp / "data")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"kind": "3dshapes", "images": n, "image_shape": [64, 64, 3],
            "pixels_mb": n * 64 * 64 * 3 / 2**20, "source": "synthetic, uncompressed h5",
            "write_source_seconds": written, "seconds": child["seconds"],
            "cpu_seconds": child["cpu_seconds"], "images_per_s": n / child["seconds"],
            "load_average_1min": os.getloadavg()[0], "peak_rss_mb": child["rss_mb"]}


def bench_import_celeba(n: int) -> dict:
    """Images/s and peak RSS of importing n synthetic CelebA JPEGs (to 64×64×3)."""
    tmp = Path(tempfile.mkdtemp(prefix="rdbench-bench-celeba-"))
    try:
        write_synthetic_celeba(tmp / "celeba", n)
        jpeg_mb = sum(p.stat().st_size for p in (tmp / "celeba").rglob("*.jpg")) / 2**20
        child = import_in_child("celeba", tmp / "celeba", tmp / "data")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from imagesets.importers._pictures import default_workers

    workers = default_workers()
    return {"kind": "celeba", "images": n, "jpeg_mb": jpeg_mb, "workers": workers,
            "seconds": child["seconds"], "cpu_seconds": child["cpu_seconds"],
            "images_per_s": n / child["seconds"], "parent_rss_mb": child["rss_mb"],
            "worker_rss_mb": child["worker_rss_mb"],
            "peak_rss_mb_upper_bound": child["rss_mb"] + workers * child["worker_rss_mb"]}


def markdown_rows(row: dict) -> list[str]:
    """The import rows of ``rdbench bench data``'s table (measure | value | target)."""
    return [f"| import 3dshapes-format file, {row['images']:,} × 64×64×3 | {row['seconds']:.1f} s "
            f"({row['images_per_s']:,.0f} images/s; {row['cpu_seconds']:.1f} CPU-s; load "
            f"average {row['load_average_1min']:.1f}) | |",
            f"| import peak memory ({row['pixels_mb']:,.0f} MB of pixels) | "
            f"{row['peak_rss_mb']:,.0f} MB | < 2 GB |"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="import bench (prints one JSON row)")
    parser.add_argument("kind", choices=("3dshapes", "celeba"))
    parser.add_argument("--n", type=int, default=None, help="images (3dshapes: 480,000; "
                        "celeba: 20,000)")
    args = parser.parse_args(argv)
    row = (bench_import_3dshapes(n=args.n) if args.kind == "3dshapes"
           else bench_import_celeba(args.n or 20_000))
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
