"""fastconv.data: the IDX and CIFAR-10 readers, the bundled MNIST test set, augmentation and DataLoader."""
from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import time
import tracemalloc

import numpy as np
import pytest

from fastconv import data
from fastconv.data import DataLoader, load_cifar10, load_mnist, normalize, random_crop, random_flip, read_idx, \
    split, write_cifar10, write_idx

MNIST_NAMES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _images(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, n)


# --- bundled MNIST ---------------------------------------------------------------------------------

def test_bundled_mnist_is_the_real_test_set():
    for name in MNIST_NAMES:
        digest = hashlib.md5((data.MNIST_DIR / f"{name}.gz").read_bytes()).hexdigest()
        assert digest == data.MNIST_MD5[f"{name}.gz"]
    images, labels = load_mnist()
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    x_train, y_train, x_test, y_test = split(images, labels, 8000)
    assert len(x_train) == len(y_train) == 8000 and len(x_test) == len(y_test) == 2000
    np.testing.assert_array_equal(x_train, images[:8000])
    np.testing.assert_array_equal(y_test, labels[8000:])


def test_bundled_mnist_readme_credits_the_data():
    text = (data.MNIST_DIR / "README.md").read_text()
    for words in ("LeCun", "Cortes", "Burges", "CC BY-SA 3.0", "10,000", "8,000", "2,000"):
        assert words in text


# --- read_idx / write_idx --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 2, 3), (2, 1, 3, 2)])
def test_idx_round_trip(tmp_path, name, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path, hashlib.md5(path.read_bytes()).hexdigest())
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def _raw_idx(dims: tuple[int, ...], payload: bytes, code: int = 8) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("contents, match", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"x", "not an IDX file"),
    (_raw_idx((2,), b"ab", code=0x0D), "type code 0x0d"),
    (_raw_idx((2,), b"ab")[:-1], "truncated: header says 2 bytes, file has 1"),
    (_raw_idx((2, 3), b"")[:6], "truncated"),
    (b"\x00\x00", "truncated"),
    (_raw_idx((2,), b"abc"), "trailing bytes"),
    (_raw_idx((2, 0), b""), "positive"),
    (bytes([0, 0, 8, 5]) + b"\0" * 40, "dimensions"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_refuses_bad_contents(tmp_path, contents, match, compress):
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(contents) if compress else contents)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_md5_mismatch_names_both_digests(tmp_path):
    path = write_idx(tmp_path / "a.idx.gz", np.arange(10, dtype=np.uint8))
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="md5") as info:
        read_idx(path, "0" * 32)
    assert actual in str(info.value) and "0" * 32 in str(info.value)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_read_idx_corrupt_gzip(tmp_path, damage):
    array = np.random.default_rng(2).integers(0, 256, (50, 20), dtype=np.uint8)
    stored = bytearray(gzip.compress(_raw_idx(array.shape, array.tobytes())))
    if damage == "cut":
        stored = stored[:len(stored) // 2]
    else:
        stored[len(stored) // 2] ^= 0xFF
    path = tmp_path / "bad.idx.gz"
    path.write_bytes(bytes(stored))
    with pytest.raises(ValueError, match="corrupt gzip stream") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_huge_header_fails_fast_without_allocating(tmp_path, compress):
    contents = _raw_idx((2**31, 2**31 - 1), b"tiny")
    path = tmp_path / "huge.idx"
    path.write_bytes(gzip.compress(contents) if compress else contents)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="file has at most" if compress else "truncated: header says"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 1 << 20


def test_read_idx_gzip_bomb_is_read_only_to_the_declared_size(tmp_path):
    # 64 MiB of zeros compress to ~64 KiB; the header declares 16 bytes: read 17, then refuse.
    path = tmp_path / "bomb.idx.gz"
    path.write_bytes(gzip.compress(_raw_idx((16,), bytes(64 << 20)), compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="trailing bytes"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_write_idx_refuses_bad_arrays(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        write_idx(tmp_path / "a.idx", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "a.idx", np.zeros((1,) * 5, np.uint8))


# --- load_mnist ------------------------------------------------------------------------------------

def _write_mnist(folder, images, labels, suffix=""):
    write_idx(folder / f"{MNIST_NAMES[0]}{suffix}", images)
    write_idx(folder / f"{MNIST_NAMES[1]}{suffix}", labels)


def test_load_mnist_from_a_folder_of_raw_files(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    _write_mnist(tmp_path, images, labels)
    x, y = load_mnist(tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_train_files_and_gz_checksums(tmp_path):
    for name in MNIST_NAMES:
        shutil.copy(data.MNIST_DIR / f"{name}.gz", tmp_path / f"{name}.gz")
    x, y = load_mnist(tmp_path)
    assert x.shape == (10_000, 1, 28, 28)
    # Official .gz names are checked against the published md5, so look-alike files are refused.
    _write_mnist(tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8), ".gz")
    with pytest.raises(ValueError, match="md5 mismatch"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz or train-images-idx3-ubyte"):
        load_mnist(tmp_path, train=True)
    train_images = tmp_path / "train-images-idx3-ubyte"
    write_idx(train_images, np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([4, 2], np.uint8))
    assert load_mnist(tmp_path, train=True)[1].tolist() == [4, 2]


@pytest.mark.parametrize("images, labels, match", [
    (np.zeros((2, 28, 28), np.uint8), np.array([1, 10], np.uint8), "0..9"),
    (np.zeros((3, 28, 28), np.uint8), np.array([1, 2], np.uint8), "3 images but 2 labels"),
    (np.zeros((2, 28, 27), np.uint8), np.array([1, 2], np.uint8), r"\(N, 28, 28\)"),
    (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1), np.uint8), "1-D"),
])
def test_load_mnist_refuses_bad_contents(tmp_path, images, labels, match):
    _write_mnist(tmp_path, images, labels)
    with pytest.raises(ValueError, match=match):
        load_mnist(tmp_path)


def test_load_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "t10k-images-idx3-ubyte.gz" in message
    write_idx(tmp_path / MNIST_NAMES[0], np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


# --- load_cifar10 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_round_trip(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    batches = [(_images(4, seed=i), _labels(4, seed=i)) for i in range(3)]
    for i, (x, y) in enumerate(batches[:2]):
        write_cifar10(folder, x, y, f"data_batch_{i + 1}.bin")
    write_cifar10(folder, *batches[2], "test_batch.bin")
    assert (folder / "test_batch.bin").stat().st_size == 4 * 3073
    x, y = load_cifar10(tmp_path)
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (8,) and y.dtype == np.int64
    np.testing.assert_array_equal(x, np.concatenate([batches[0][0], batches[1][0]]))
    np.testing.assert_array_equal(y, np.concatenate([batches[0][1], batches[1][1]]))
    x, y = load_cifar10(tmp_path, train=False)
    np.testing.assert_array_equal(x, batches[2][0])
    np.testing.assert_array_equal(y, batches[2][1])


def test_cifar10_record_layout(tmp_path):
    images = np.zeros((1, 3, 32, 32), np.uint8)
    images[0, 0, 0, 1], images[0, 2, 31, 31] = 7, 9  # red plane first, row-major within a plane
    stored = write_cifar10(tmp_path, images, np.array([5]), "test_batch.bin").read_bytes()
    assert stored[0] == 5 and stored[1 + 1] == 7 and stored[-1] == 9 and len(stored) == 3073


def test_cifar10_truncated_and_bad_label(tmp_path):
    path = write_cifar10(tmp_path, _images(2), np.array([1, 2]), "test_batch.bin")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated or not CIFAR-10 binary: size 6145 is not a multiple of 3073"):
        load_cifar10(tmp_path, train=False)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="size 0"):
        load_cifar10(tmp_path, train=False)
    path = write_cifar10(tmp_path, _images(2), np.array([1, 2]), "test_batch.bin")
    path.write_bytes(b"\x0a" + path.read_bytes()[1:])
    with pytest.raises(ValueError, match="0..9"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_missing_files_and_python_version(tmp_path):
    write_cifar10(tmp_path, _images(1), np.array([0]), "test_batch.bin")
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path, train=True)
    py = tmp_path / "other" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    (py / "data_batch_1").write_bytes(b"\x80\x04 not to be unpickled")
    for folder in (py, py.parent):
        with pytest.raises(ValueError, match="binary version"):
            load_cifar10(folder)


def test_write_cifar10_refuses_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        write_cifar10(tmp_path, _images(1, h=28), np.array([0]), "x.bin")
    with pytest.raises(TypeError, match="uint8"):
        write_cifar10(tmp_path, _images(1).astype(np.float32), np.array([0]), "x.bin")
    with pytest.raises(ValueError, match="0..9"):
        write_cifar10(tmp_path, _images(1), np.array([10]), "x.bin")


# --- split, augmentation, normalize ----------------------------------------------------------------

def test_split_arguments():
    x, y = _images(10, c=1, h=2, w=2), np.arange(10)
    _, y_train, _, y_test = split(x, y, 3, 4)
    assert y_train.tolist() == [0, 1, 2] and y_test.tolist() == [6, 7, 8, 9]
    for n_train, n_test in [(0, None), (10, None), (6, 5), (3, -1)]:
        with pytest.raises(ValueError):
            split(x, y, n_train, n_test)
    with pytest.raises(TypeError):
        split(x, y, 2.5)
    with pytest.raises(ValueError, match="same length"):
        split(x, y[:9], 3)


def test_random_crop():
    images = _images(20, c=2, h=5, w=6)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(random_crop(images, 0, rng), images)
    out = random_crop(images, 2, rng)
    assert out.shape == images.shape and out.dtype == images.dtype and out is not images
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for i in range(len(images)):
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 6])]
        assert windows, f"image {i} is not a window of its padded image"
        offsets.update(windows)
    assert len(offsets) > 3
    with pytest.raises(ValueError):
        random_crop(images, -1, rng)


def test_random_flip():
    images = _images(400, c=2, h=3, w=4)
    out = random_flip(images, np.random.default_rng(0))
    flipped = [np.array_equal(o, x[..., ::-1]) for o, x in zip(out, images)]
    same = [np.array_equal(o, x) for o, x in zip(out, images)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 150 < sum(flipped) < 250
    assert out.shape == images.shape and out.dtype == np.uint8


def test_normalize_math_and_validation():
    images = _images(3, c=3, h=4, w=5)
    for dtype in (np.float32, np.float64):
        out = normalize(images, data.CIFAR10_MEAN, data.CIFAR10_STD, dtype)
        mean = np.array(data.CIFAR10_MEAN).reshape(1, 3, 1, 1)
        std = np.array(data.CIFAR10_STD).reshape(1, 3, 1, 1)
        assert out.dtype == dtype and out.flags.c_contiguous and out.shape == images.shape
        np.testing.assert_allclose(out, (images / 255 - mean) / std, rtol=1e-6, atol=1e-6)
    assert normalize(images[..., ::-1], (0,) * 3, (1,) * 3).flags.c_contiguous
    with pytest.raises(ValueError, match="3 values"):
        normalize(images, data.MNIST_MEAN, data.MNIST_STD)
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.astype(np.float32), data.CIFAR10_MEAN, data.CIFAR10_STD)
    with pytest.raises(TypeError, match="float32 or float64"):
        normalize(images, data.CIFAR10_MEAN, data.CIFAR10_STD, np.int32)


# --- DataLoader ------------------------------------------------------------------------------------

def _loader(n=10, batch_size=4, **kwargs):
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 1, 2, 3), np.uint8)
    kwargs = {"mean": (0.0,), "std": (1 / 255,), **kwargs}
    return DataLoader(images, np.arange(n), batch_size, **kwargs)


def _order(loader):
    return np.concatenate([y for _, y in loader]).tolist()


def test_loader_batches():
    loader = _loader(10, 4)
    assert len(loader) == 3 and loader.num_examples == 10
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.dtype == np.float32 and x.shape == (len(y), 1, 2, 3) and y.dtype == np.int64
        np.testing.assert_allclose(x[:, 0, 0, 0], y)  # mean 0, std 1/255: x is the raw pixel value
    assert _order(loader) == list(range(10))
    dropped = _loader(10, 4, drop_last=True, dtype=np.float64)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert next(iter(dropped))[0].dtype == np.float64


def test_loader_shuffle_reproducible_from_seed_and_epoch():
    loader = _loader(50, 8, shuffle=True, seed=3)
    orders = [_order(loader) for _ in range(3)]
    assert loader.epoch == 3
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(50))
    assert _order(_loader(50, 8, shuffle=True, seed=3)) == orders[0]
    assert _order(_loader(50, 8, shuffle=True, seed=4)) != orders[0]
    resumed = _loader(50, 8, shuffle=True, seed=3)
    resumed.epoch = 2
    assert _order(resumed) == orders[2] and resumed.epoch == 3
    partial = iter(resumed)
    next(partial)
    assert resumed.epoch == 3  # an unfinished pass does not count


def test_loader_augmentation_is_reproducible_and_applied():
    images = _images(16, c=3, h=8, w=8)

    def make():
        return DataLoader(images, np.arange(16), 16, seed=1, mean=(0,) * 3, std=(1,) * 3, crop_padding=2, flip=True)

    first, again = next(iter(make())), next(iter(make()))
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.allclose(first[0], images / 255)
    loader = make()
    epoch0, epoch1 = list(loader)[0][0], list(loader)[0][0]
    np.testing.assert_array_equal(epoch0, first[0])
    assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("kwargs, error", [
    ({"images": np.zeros((4, 1, 2, 2), np.float32)}, TypeError),
    ({"images": np.zeros((4, 2, 2), np.uint8)}, ValueError),
    ({"labels": np.zeros(4, np.float32)}, TypeError),
    ({"labels": np.zeros(3, np.int64)}, ValueError),
    ({"labels": np.zeros((4, 1), np.int64)}, ValueError),
    ({"batch_size": 0}, ValueError),
    ({"batch_size": 2.0}, TypeError),
    ({"mean": (0.0, 0.0)}, ValueError),
    ({"std": (0.0,)}, ValueError),
    ({"crop_padding": -1}, ValueError),
    ({"seed": -1}, ValueError),
    ({"dtype": np.int64}, TypeError),
])
def test_loader_validation(kwargs, error):
    args = {"images": np.zeros((4, 1, 2, 2), np.uint8), "labels": np.zeros(4, np.int64), "batch_size": 2,
            "mean": (0.0,), "std": (1.0,), **kwargs}
    with pytest.raises(error):
        DataLoader(args.pop("images"), args.pop("labels"), args.pop("batch_size"), **args)
