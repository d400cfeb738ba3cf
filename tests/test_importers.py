"""``rdbench data import KIND``: tiny files written in each publisher's own format are
imported through the CLI and read back with ``load_verified`` (known answers: the pixels and
factors written); damaged files are one line, exit 2, and nothing at ``--out``."""

import gzip
import io
import struct
import zipfile
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from PIL import Image

from imagesets import load_verified
from imagesets.importers import _pictures, dsprites, idx, shapes3d, smallnorb
from rdbench.cli import main

RNG = np.random.default_rng(0)


def run(capsys, *args) -> tuple[int, str]:
    code = main(["data", "import", *map(str, args)])
    return code, capsys.readouterr().err


def refused(code: int, err: str, out, text: str) -> None:
    """Exit 2 with a last stderr line naming the problem, and nothing written at ``out``
    (nor a staging directory beside it)."""
    assert code == 2
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("rdbench: error:") and text in last, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def write(path, data: bytes, gz: bool = False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ------------------------------------------------------------------------ IDX (MNIST)
def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: magic 0x000008NN, big-endian int32 sizes, values."""
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes()


def mnist_arrays(n_train=7, n_test=4) -> dict[str, np.ndarray]:
    """The four IDX files' arrays (5×4 images: rows and columns cannot swap unnoticed)."""
    return {"train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 5, 4), np.uint8),
            "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, np.uint8),
            "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 5, 4), np.uint8),
            "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, np.uint8)}


def mnist_dir(tmp_path, arrays=None, gz=(True, False, True, False), **damaged):
    """The four IDX files in a folder, gzipped or not; ``damaged``: bytes for some."""
    arrays = mnist_arrays() if arrays is None else arrays
    folder = tmp_path / "mnist"
    folder.mkdir()
    for (name, array), packed in zip(arrays.items(), gz, strict=True):
        data = damaged.get(name, idx_bytes(array))
        write(folder / (f"{name}.gz" if packed else name), data, packed)
    return folder, arrays


@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist"])
def test_idx_pixels_labels_and_standard_split(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(idx, "CHUNK", 3)  # several chunks per file, the last one short
    folder, a = mnist_dir(tmp_path)
    code, err = run(capsys, kind, "--from", folder, "--out", tmp_path / "out")
    assert code == 0, err
    data = load_verified(tmp_path / "out")
    images = np.concatenate([a["train-images-idx3-ubyte"], a["t10k-images-idx3-ubyte"]])
    labels = np.concatenate([a["train-labels-idx1-ubyte"], a["t10k-labels-idx1-ubyte"]])
    assert data.images.shape == (11, 5, 4, 1)
    np.testing.assert_array_equal(data.images[..., 0], images)
    np.testing.assert_array_equal(data.factors["label"], labels)
    assert [s.categorical for s in data.factor_specs] == [True]
    train, test = data.split("standard")
    np.testing.assert_array_equal(train, np.arange(7))
    np.testing.assert_array_equal(test, np.arange(7, 11))
    assert sorted(data.manifest["sources"]) == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte"])
    assert ("label_names" in data.manifest) == (kind == "fashion-mnist")


@pytest.mark.parametrize("name, damage, text", [
    ("train-images-idx3-ubyte", lambda a: idx_bytes(a["train-images-idx3-ubyte"], 0x0801),
     "magic number 0x00000801, expected 0x00000803"),
    ("t10k-labels-idx1-ubyte", lambda a: idx_bytes(a["t10k-images-idx3-ubyte"]),
     "magic number 0x00000803, expected 0x00000801"),
    ("t10k-labels-idx1-ubyte", lambda a: idx_bytes(a["t10k-labels-idx1-ubyte"])[:-2],
     "truncated"),
    ("train-labels-idx1-ubyte", lambda a: idx_bytes(a["train-labels-idx1-ubyte"][:-1]),
     "holds 7 images but train-labels-idx1-ubyte.gz 6 labels"),
])
def test_idx_bad_headers_sizes_and_counts_are_refused(name, damage, text, tmp_path, capsys):
    arrays = mnist_arrays()
    folder, _ = mnist_dir(tmp_path, arrays, gz=(True, True, False, False),
                          **{name: damage(arrays)})
    code, err = run(capsys, "mnist", "--from", folder, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", text)
    assert err.count("\n") == 1  # found up front: nothing else printed


def test_idx_truncated_or_corrupt_gzip_is_refused(tmp_path, capsys):
    folder, a = mnist_dir(tmp_path)
    packed = folder / "train-images-idx3-ubyte.gz"
    good = packed.read_bytes()
    packed.write_bytes(good[:-7])  # a cut download: the gzip trailer is gone
    code, err = run(capsys, "mnist", "--from", folder, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", "train-images-idx3-ubyte.gz")
    body = bytearray(good)
    body[-8] ^= 0xFF  # the stored CRC: only reading every byte finds it
    packed.write_bytes(bytes(body))
    code, err = run(capsys, "mnist", "--from", folder, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", "train-images-idx3-ubyte.gz is corrupt")


def test_idx_missing_file_is_refused(tmp_path, capsys):
    folder, _ = mnist_dir(tmp_path)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    code, err = run(capsys, "mnist", "--from", folder, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", "t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz")


def test_options_that_do_not_apply_are_refused(tmp_path, capsys):
    folder, _ = mnist_dir(tmp_path)
    code, err = run(capsys, "mnist", "--from", folder, "--out", tmp_path / "out",
                    "--size", 32)
    refused(code, err, tmp_path / "out", "--size does not apply to kind mnist")


# ------------------------------------------------------------------------ dSprites
PICKLE_BOMB = b"\x80\x02cno_such_module_rdbench\nboom\nq\x00."  # unpickling it raises


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def metadata_npy() -> bytes:
    """An object .npy whose pickle imports a module that does not exist."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False,
                                                  "shape": ()})
    return header.getvalue() + PICKLE_BOMB


def dsprites_file(tmp_path, imgs=None, latents=None, skip=()):
    n = 9
    imgs = RNG.integers(0, 2, (n, 6, 5), np.uint8) if imgs is None else imgs
    if latents is None:
        latents = np.column_stack([np.ones(n), RNG.integers(1, 4, n), RNG.random((n, 4))])
    members = {"imgs.npy": npy(imgs), "latents_values.npy": npy(latents),
               "latents_classes.npy": npy(latents.astype(np.int64)),
               "metadata.npy": metadata_npy()}
    path = tmp_path / dsprites.FILE
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if name not in skip:
                z.writestr(name, data)
    return path, imgs, latents


def test_dsprites_pixels_times_255_and_factors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dsprites, "CHUNK", 4)
    path, imgs, latents = dsprites_file(tmp_path)
    with pytest.raises(ModuleNotFoundError):  # the metadata member really is a pickle bomb
        np.load(path, allow_pickle=True)["metadata"]
    code, err = run(capsys, "dsprites", "--from", tmp_path, "--out", tmp_path / "out")
    assert code == 0, err
    data = load_verified(tmp_path / "out")
    np.testing.assert_array_equal(data.images[..., 0], imgs * 255)
    assert set(np.unique(data.images)) <= {0, 255}
    assert list(data.factors.columns) == ["shape", "scale", "orientation", "x", "y"]
    np.testing.assert_array_equal(data.factors["shape"], latents[:, 1])
    np.testing.assert_array_equal(data.factors[["scale", "orientation", "x", "y"]],
                                  latents[:, 2:])
    assert [s.name for s in data.factor_specs if s.categorical] == ["shape"]


@pytest.mark.parametrize("case, text", [
    ("not a zip", "not a readable .npz archive"),
    ("no latents", "has no member latents_values.npy"),
    ("fewer latents", "expected finite floats (9, 6)"),
    ("pixel 2", "pixel values above 1"),
    ("float pixels", "expected uint8 (N, H, W)"),
])
def test_dsprites_damaged_archives_are_refused(case, text, tmp_path, capsys):
    if case == "not a zip":
        path = write(tmp_path / dsprites.FILE, b"PK\x03\x04 but no zip" * 10)
    elif case == "no latents":
        path, *_ = dsprites_file(tmp_path, skip=("latents_values.npy",))
    elif case == "fewer latents":
        path, *_ = dsprites_file(tmp_path, latents=RNG.random((8, 6)))
    elif case == "pixel 2":
        imgs = np.zeros((9, 6, 5), np.uint8)
        imgs[8, 0, 0] = 2  # found while streaming, in the last chunk
        path, *_ = dsprites_file(tmp_path, imgs=imgs)
    else:
        path, *_ = dsprites_file(tmp_path, imgs=np.zeros((9, 6, 5), np.float32))
    code, err = run(capsys, "dsprites", "--from", path, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", text)


# ------------------------------------------------------------------------ 3dShapes
def shapes3d_file(tmp_path, n=11, labels_rows=None, datasets=("images", "labels")):
    images = RNG.integers(0, 256, (n, 8, 6, 3), np.uint8)
    labels = np.column_stack([RNG.random((n, 4)), RNG.integers(0, 4, n), RNG.random(n)])
    path = tmp_path / shapes3d.FILE
    with h5py.File(path, "w") as f:
        if "images" in datasets:
            f.create_dataset("images", data=images, chunks=(3, 8, 6, 3), compression="gzip")
        if "labels" in datasets:
            f.create_dataset("labels", data=labels[:labels_rows])
    return path, images, labels


def test_3dshapes_pixels_and_factors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shapes3d, "CHUNK", 4)
    path, images, labels = shapes3d_file(tmp_path)
    with h5py.File(path) as f:  # reads cover whole storage chunks of 3 rows
        assert shapes3d.rows_per_read(f["images"]) == 3
    code, err = run(capsys, "3dshapes", "--from", path, "--out", tmp_path / "out")
    assert code == 0, err
    data = load_verified(tmp_path / "out")
    np.testing.assert_array_equal(data.images, images)
    assert list(data.factors.columns) == list(shapes3d.FACTORS)
    np.testing.assert_array_equal(data.factors.to_numpy(), labels)
    assert [s.name for s in data.factor_specs if s.categorical] == ["shape"]
    assert "checkerboard" in data.split_names  # ordinal factors: the factor splits exist


@pytest.mark.parametrize("case, text", [
    ("not hdf5", "not a readable HDF5 file"),
    ("no labels", "lacks the datasets 'images' and 'labels'"),
    ("short labels", "expected floats (11, 6)"),
])
def test_3dshapes_damaged_files_are_refused(case, text, tmp_path, capsys):
    if case == "not hdf5":
        path = write(tmp_path / shapes3d.FILE, b"\x89HDF\r\n\x1a\n" + bytes(100))
    else:
        path, *_ = shapes3d_file(tmp_path, labels_rows=10 if case == "short labels" else None,
                                 datasets=("images",) if case == "no labels" else
                                 ("images", "labels"))
    code, err = run(capsys, "3dshapes", "--from", tmp_path, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", text)
    assert err.count("\n") == 1


# ------------------------------------------------------------------------ smallNORB
def matrix(array: np.ndarray) -> bytes:
    """A smallNORB binary matrix: int32 LE magic, ndim, max(3, ndim) sizes, the values."""
    magic = smallnorb.UBYTE if array.dtype == np.uint8 else smallnorb.INT32
    sizes = list(array.shape) + [1] * (3 - array.ndim)
    data = array.astype("<i4").tobytes() if magic == smallnorb.INT32 else array.tobytes()
    return struct.pack(f"<ii{len(sizes)}i", magic, array.ndim, *sizes) + data


def norb_arrays(dats) -> dict[str, dict[str, np.ndarray]]:
    """Per prefix (training, testing) the dat, cat, info arrays; ``dats`` = the stereo
    pairs (n, 2, S, S) of each."""
    truth = {}
    for prefix, dat in zip(smallnorb.PREFIXES, dats, strict=True):
        n = len(dat)
        info = np.column_stack([RNG.integers(0, 10, n), RNG.integers(0, 9, n),
                                2 * RNG.integers(0, 18, n), RNG.integers(0, 6, n)])
        truth[prefix] = {"dat": dat, "cat": RNG.integers(0, 5, n).astype(np.int32),
                         "info": info.astype(np.int32)}
    return truth


def norb_dir(tmp_path, truth, gz=True, damaged=None):
    """The six files in a folder; ``damaged``: {file name: bytes} for some."""
    folder = tmp_path / "norb"
    folder.mkdir()
    for prefix, arrays in truth.items():
        for part, array in arrays.items():
            name = f"{prefix}-{part}.mat"
            data = (damaged or {}).get(name, matrix(array))
            write(folder / (f"{name}.gz" if gz else name), data, gz)
    return folder


def test_smallnorb_first_camera_factors_and_standard_split(tmp_path, capsys):
    train = RNG.integers(0, 256, (4, 2, 12, 12), np.uint8)
    test = RNG.integers(0, 256, (3, 2, 12, 12), np.uint8)
    truth = norb_arrays((train, test))
    folder = norb_dir(tmp_path, truth)
    code, err = run(capsys, "smallnorb", "--from", folder, "--out", tmp_path / "out",
                    "--size", 12)  # the stored size: no resizing, exact pixels
    assert code == 0, err
    data = load_verified(tmp_path / "out")
    np.testing.assert_array_equal(data.images[..., 0], np.concatenate([train, test])[:, 0])
    parts = [truth[p] for p in smallnorb.PREFIXES]
    np.testing.assert_array_equal(data.factors["category"],
                                  np.concatenate([p["cat"] for p in parts]))
    np.testing.assert_array_equal(data.factors[["instance", "elevation", "azimuth", "lighting"]],
                                  np.concatenate([p["info"] for p in parts]))
    assert {s.name for s in data.factor_specs if s.categorical} == {"category", "instance",
                                                                    "lighting"}
    train_rows, test_rows = data.split("standard")
    np.testing.assert_array_equal(train_rows, [0, 1, 2, 3])
    np.testing.assert_array_equal(test_rows, [4, 5, 6])


def test_smallnorb_resizing_keeps_a_constant_image_constant(tmp_path, capsys):
    pairs = np.full((3, 2, 12, 12), 77, np.uint8)
    pairs[:, 1] = 200  # the second camera, left out
    folder = norb_dir(tmp_path, norb_arrays((pairs, pairs[:2])), gz=False)
    for size, out in ((5, "small"), (None, "default")):
        extra = ["--size", size] if size else []
        code, err = run(capsys, "smallnorb", "--from", folder, "--out", tmp_path / out, *extra)
        assert code == 0, err
        data = load_verified(tmp_path / out)
        assert data.images.shape == (5, size or 64, size or 64, 1)
        assert (np.asarray(data.images) == 77).all()


@pytest.mark.parametrize("part, damage, text", [
    ("training-cat", lambda t: matrix(t["cat"].astype(np.uint8)), "is not a smallNORB int32"),
    ("testing-info", lambda t: matrix(t["info"][:2]), "they must agree"),
    ("testing-dat", lambda t: matrix(t["dat"])[:-100], "truncated"),
])
def test_smallnorb_bad_headers_and_counts_are_refused(part, damage, text, tmp_path, capsys):
    pairs = RNG.integers(0, 256, (3, 2, 12, 12), np.uint8)
    truth = norb_arrays((pairs, pairs))
    prefix = smallnorb.PREFIXES[0 if part.startswith("training") else 1]
    name = f"{prefix}-{part.split('-')[1]}.mat"
    folder = norb_dir(tmp_path, truth, damaged={name: damage(truth[prefix])})
    code, err = run(capsys, "smallnorb", "--from", folder, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", text)
    assert err.count("\n") == 1


# ------------------------------------------------------------------------ CelebA
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 60), (90, 90, 90),
           (10, 120, 240)]
PARTITIONS = [0, 0, 1, 2, 2, 0]


def celeba_picture(colour) -> Image.Image:
    """A 178×218 picture: ``colour`` in the central 148×148 square, black around it."""
    image = Image.new("RGB", (178, 218), (0, 0, 0))
    image.paste(Image.new("RGB", (148, 148), colour), (15, 35))
    return image


def celeba_dir(tmp_path, archive=False):
    folder = tmp_path / "celeba"
    pictures = folder / "img_align_celeba"
    pictures.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, len(COLOURS) + 1)]
    for name, colour in zip(names, COLOURS, strict=True):
        celeba_picture(colour).save(pictures / name, quality=95)
    partition = folder / ("Eval" if archive else "") / "list_eval_partition.txt"
    partition.parent.mkdir(exist_ok=True)
    partition.write_text("".join(f"{n} {p}\n" for n, p in zip(names, PARTITIONS, strict=True)))
    if archive:
        with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as z:
            for name in names:
                z.write(pictures / name, f"img_align_celeba/{name}")
        for name in names:
            (pictures / name).unlink()
        pictures.rmdir()
    return folder


@pytest.mark.parametrize("archive", [False, True])
def test_celeba_central_crop_resize_and_standard_split(archive, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_pictures, "BATCH", 2)  # three batches: the pool path, in order
    folder = celeba_dir(tmp_path, archive)
    code, err = run(capsys, "celeba", "--from", folder, "--out", tmp_path / "out", "--size", 16)
    assert code == 0, err
    data = load_verified(tmp_path / "out")
    assert data.images.shape == (6, 16, 16, 3)
    for image, colour in zip(data.images, COLOURS, strict=True):
        # the black border is cropped away: only the colour (give or take JPEG) is left
        assert np.abs(image.astype(int) - colour).max() <= 12
    train, test = data.split("standard")
    np.testing.assert_array_equal(train, [0, 1, 5])
    np.testing.assert_array_equal(test, [3, 4])
    assert ("img_align_celeba.zip" if archive else "img_align_celeba/") in \
        data.manifest["sources"]


def test_celeba_default_size_of_a_constant_picture_is_constant(tmp_path, capsys):
    folder = celeba_dir(tmp_path)
    flat = Image.new("RGB", (178, 218), (120, 60, 30))
    flat.save(folder / "img_align_celeba" / "000001.jpg", quality=95)
    decoded = np.asarray(Image.open(folder / "img_align_celeba" / "000001.jpg"))[109, 89]
    code, err = run(capsys, "celeba", "--from", folder, "--out", tmp_path / "out")
    assert code == 0, err
    image = load_verified(tmp_path / "out").images[0]
    assert image.shape == (64, 64, 3)
    assert (np.abs(image.astype(int) - decoded).max()) <= 1


@pytest.mark.parametrize("case, text", [
    ("missing picture", "1 image(s) of list_eval_partition.txt are not in img_align_celeba"),
    ("bad line", "list_eval_partition.txt line 3: expected 'IMAGE.jpg 0|1|2'"),
    ("unreadable picture", "000005.jpg is not a readable PNG or JPEG image"),
])
def test_celeba_damaged_inputs_are_refused(case, text, tmp_path, capsys):
    folder = celeba_dir(tmp_path)
    if case == "missing picture":
        (folder / "img_align_celeba" / "000002.jpg").unlink()
    elif case == "bad line":
        lines = (folder / "list_eval_partition.txt").read_text().splitlines()
        lines[2] = "000003.jpg 7"
        (folder / "list_eval_partition.txt").write_text("\n".join(lines))
    else:
        (folder / "img_align_celeba" / "000005.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, err = run(capsys, "celeba", "--from", folder, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", text)


# ------------------------------------------------------------------------ folder
def save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_subfolders_become_labels_pixels_exact(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_pictures, "BATCH", 1)
    pictures = {"dogs/b.png": None, "cats/z.PNG": None, "cats/a.png": None,
                "dogs/sub/c.png": None}
    for name in pictures:
        pictures[name] = RNG.integers(0, 256, (8, 8, 3), np.uint8)
        save(tmp_path / "tree" / name, pictures[name])
    (tmp_path / "tree" / "cats" / "notes.txt").write_text("not a picture")
    code, err = run(capsys, "folder", "--from", tmp_path / "tree", "--out", tmp_path / "out",
                    "--size", 8)
    assert code == 0, err
    data = load_verified(tmp_path / "out")
    order = ["cats/a.png", "cats/z.PNG", "dogs/b.png", "dogs/sub/c.png"]
    np.testing.assert_array_equal(data.images, np.stack([pictures[p] for p in order]))
    np.testing.assert_array_equal(data.factors["label"], [0, 0, 1, 1])
    assert data.manifest["label_names"] == ["cats", "dogs"]
    assert data.factor_specs[0].categorical


def test_folder_grayscale_central_square_and_channels(tmp_path, capsys):
    picture = np.full((6, 10), 250, np.uint8)  # 10 wide, 6 high: the central 6×6 is kept
    picture[:, 2:8] = 90
    save(tmp_path / "gray" / "g.png", picture)  # mode L
    save(tmp_path / "gray" / "h.png", picture)  # (a random split needs two images)
    for channels, size in ((1, 6), (3, 6), (3, 16)):
        out = tmp_path / f"out{channels}-{size}"
        code, err = run(capsys, "folder", "--from", tmp_path / "gray", "--out", out,
                        "--channels", channels, "--size", size)
        assert code == 0, err
        data = load_verified(out)
        assert data.images.shape == (2, size, size, channels)
        assert (np.asarray(data.images) == 90).all()
        assert data.factors is None or data.factors.empty


@pytest.mark.parametrize("case, text", [
    ("unreadable", "broken.png is not a readable PNG or JPEG image"),
    ("loose", "loose.png is directly in --from while other pictures are in sub-folders"),
    ("empty", "holds no PNG or JPEG pictures"),
])
def test_folder_bad_trees_are_refused(case, text, tmp_path, capsys):
    tree = tmp_path / "tree"
    tree.mkdir()
    if case != "empty":
        for i in range(3):
            save(tree / "a" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    if case == "unreadable":
        (tree / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "loose":
        save(tree / "loose.png", np.zeros((4, 4, 3), np.uint8))
    code, err = run(capsys, "folder", "--from", tree, "--out", tmp_path / "out")
    refused(code, err, tmp_path / "out", text)


# ------------------------------------------------------------------------ import bench
def test_the_synthetic_factor_grid_is_3dshapes_own():
    from imagesets.bench import factor_grid

    rows = factor_grid(480_000)  # 10 × 10 × 10 hues, 8 scales, 4 shapes, 15 orientations
    assert len(np.unique(rows, axis=0)) == 480_000
    assert sorted(np.unique(rows[:, 4])) == [0, 1, 2, 3]


def test_import_bench_imports_a_synthetic_file_in_a_child(tmp_path):
    from imagesets.bench import bench_import_3dshapes

    row = bench_import_3dshapes(n=64)
    assert row["images"] == 64 and row["pixels_mb"] == 64 * 64 * 64 * 3 / 2**20
    assert row["images_per_s"] == pytest.approx(64 / row["seconds"])
    assert 0 < row["peak_rss_mb"] < 4096


def test_bench_data_refuses_a_too_small_temporary_disk_before_measuring(capsys, monkeypatch):
    import shutil

    import tetrominoes.bench

    def not_measured(*args, **kwargs):
        raise AssertionError("measured although the disk is too small")

    monkeypatch.setattr(tetrominoes.bench, "compare_renderers", not_measured)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10**6))
    assert main(["bench", "data", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rdbench: error: the import bench needs") and err.count("\n") == 1
