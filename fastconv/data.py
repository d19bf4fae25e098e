"""Datasets on disk and a batch loader: MNIST (IDX files), CIFAR-10 (binary version), augmentation.

Every reader checks what it reads against the real number of bytes before allocating, and
never unpickles. Images are uint8 (N, C, H, W); labels int64 (N,). ``DataLoader`` yields
normalized float batches.

The real MNIST test set (10,000 images) is bundled in ``MNIST_DIR`` (see its README.md for
the credit and licence, CC BY-SA 3.0); ``split(images, labels, 8000)`` gives the default
8,000 train / 2,000 test split.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._checks import check_int, float_dtype

MNIST_DIR = Path(__file__).parent / "datasets" / "mnist"
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than this: a bound on a .gz file's real contents
_CHUNK = 1 << 20
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _check_images(name: str, images: object, shape: tuple[int, ...] | None = None) -> None:
    """`images` must be a 4-D uint8 array, of `shape` (per example, None for any) when given."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or (shape is not None and images.shape[1:] != shape):
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape or 'CHW'))}), got {images.shape}")


def _check_mean_std(channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")


def _read_at_most(stream: io.IOBase, limit: int) -> bytearray:
    """Up to `limit` bytes, read in chunks so that nothing larger than the real contents is allocated."""
    out = bytearray()
    while len(out) < limit:
        chunk = stream.read(min(_CHUNK, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def read_idx(path: str | Path, md5: str | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed (detected by its 1f 8b magic bytes) or raw.

    The header is two zero bytes, the type code (only 0x08, unsigned byte, is supported),
    the number of dimensions (1..4), then each dimension as a big-endian uint32; every
    dimension must be positive (an empty array is refused). The data must hold exactly the
    product of the dimensions in bytes. `md5`, when given, is checked against the file's
    bytes as stored (of the .gz for gzip files). Returns a uint8 array shaped like the dims.
    Raises ValueError for any bad contents, naming the file.
    """
    path = Path(path)
    stored = path.read_bytes()
    if md5 is not None:
        digest = hashlib.md5(stored).hexdigest()
        if digest != md5.lower():
            raise ValueError(f"{path}: md5 mismatch: file has {digest}, expected {md5}")
    compressed = stored[:2] == _GZIP_MAGIC
    stream = gzip.GzipFile(fileobj=io.BytesIO(stored)) if compressed else io.BytesIO(stored)
    try:
        head = _read_at_most(stream, 4)
        if len(head) < 4:
            raise ValueError(f"{path}: truncated: {len(head)} bytes, shorter than an IDX header")
        if head[:2] != b"\0\0":
            raise ValueError(f"{path}: not an IDX file: magic starts with {head[:2].hex()}, expected 0000")
        if head[2] != _IDX_UBYTE:
            raise ValueError(f"{path}: unsupported IDX type code 0x{head[2]:02x}; only 0x08 (unsigned byte)")
        ndim = head[3]
        if not 1 <= ndim <= 4:
            raise ValueError(f"{path}: IDX header declares {ndim} dimensions, expected 1 to 4")
        dims_bytes = _read_at_most(stream, 4 * ndim)
        if len(dims_bytes) < 4 * ndim:
            raise ValueError(f"{path}: truncated: the header ends before its {ndim} dimensions")
        dims = struct.unpack(f">{ndim}I", dims_bytes)
        if 0 in dims:
            raise ValueError(f"{path}: IDX dimensions must be positive, got {dims}")
        n = math.prod(dims)
        if compressed and n > _DEFLATE_MAX_RATIO * len(stored):
            raise ValueError(f"{path}: truncated: header says {n} bytes, file has at most "
                             f"{_DEFLATE_MAX_RATIO * len(stored)} (a gzip file of {len(stored)} bytes)")
        data = _read_at_most(stream, n + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt gzip stream: {e}") from e
    if len(data) < n:
        raise ValueError(f"{path}: truncated: header says {n} bytes, file has {len(data)}")
    if len(data) > n:
        raise ValueError(f"{path}: trailing bytes after the {n} bytes the header declares")
    return np.frombuffer(data, np.uint8).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array of 1 to 4 positive dimensions as IDX (gzip when `path` ends in .gz)."""
    path = Path(path)
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise TypeError(f"array must be a uint8 numpy array, got {getattr(array, 'dtype', type(array))}")
    if not 1 <= array.ndim <= 4 or 0 in array.shape or max(array.shape) >= 2**32:
        raise ValueError(f"array must have 1 to 4 dimensions, each 1 to 2**32-1, got shape {array.shape}")
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if path.name.endswith(".gz") else payload)
    return path


def load_mnist(data_dir: str | Path | None = None, train: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 1, 28, 28) uint8 and labels (N,) int64 in 0..9.

    `data_dir` None reads the bundled test set (``MNIST_DIR``). Otherwise reads the t10k-*
    (train=False) or train-* (train=True) files from `data_dir`, each under its '.gz' name
    (checked against ``MNIST_MD5``) or, failing that, its uncompressed name (not checked).
    """
    folder = MNIST_DIR if data_dir is None else Path(data_dir)
    arrays = []
    for stem in _MNIST_FILES[bool(train)]:
        gz, raw = folder / f"{stem}.gz", folder / stem
        if gz.is_file():
            arrays.append(read_idx(gz, MNIST_MD5[gz.name]))
        elif raw.is_file():
            arrays.append(read_idx(raw))
        else:
            raise FileNotFoundError(f"{gz} not found: expected {stem}.gz or {stem} in {folder}")
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"MNIST images in {folder} must be (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"MNIST labels in {folder} must be 1-D, got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"MNIST in {folder}: {len(images)} images but {len(labels)} labels")
    if labels.max() > 9:
        raise ValueError(f"MNIST labels in {folder} must be 0..9, found {labels.max()}")
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def _looks_like_cifar_py(folder: Path) -> bool:
    return (folder.name == "cifar-10-batches-py" or (folder / "cifar-10-batches-py").is_dir()
            or (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file())


def load_cifar10(data_dir: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10, binary version: images (N, 3, 32, 32) uint8 (R, G, B planes), labels (N,) int64 in 0..9.

    `data_dir` is the `cifar-10-batches-bin` folder or a folder containing it. train=True reads
    those of data_batch_1.bin .. data_batch_5.bin that are present (at least one, in order);
    train=False reads test_batch.bin. The python version (pickles) is refused, never unpickled.
    """
    data_dir = Path(data_dir)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    for folder in (data_dir, data_dir / "cifar-10-batches-bin"):
        paths = [folder / name for name in names if (folder / name).is_file()]
        if paths:
            break
    else:
        if _looks_like_cifar_py(data_dir):
            raise ValueError(f"{data_dir} holds the python (pickle) version of CIFAR-10, which fastconv never "
                             f"unpickles: download the binary version (cifar-10-binary.tar.gz)")
        raise FileNotFoundError(f"no CIFAR-10 binary files in {data_dir} or {data_dir / 'cifar-10-batches-bin'}: "
                                f"expected {', '.join(names)}")
    images, labels = [], []
    for path in paths:
        size = path.stat().st_size
        if size == 0 or size % _CIFAR_RECORD:
            raise ValueError(f"{path}: truncated or not CIFAR-10 binary: size {size} is not a multiple of "
                             f"{_CIFAR_RECORD}")
        records = np.fromfile(path, np.uint8).reshape(-1, _CIFAR_RECORD)
        if records[:, 0].max() > 9:
            raise ValueError(f"{path}: labels must be 0..9, found {records[:, 0].max()}")
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def write_cifar10(folder: str | Path, images: np.ndarray, labels: np.ndarray, name: str) -> Path:
    """Write images (N, 3, 32, 32) uint8 and labels (N,) in 0..9 as CIFAR-10 binary records to folder/name.

    Each record is the label byte then the 3072 image bytes. Creates `folder` if needed.
    """
    _check_images("images", images, (3, 32, 32))
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"labels must be {len(images)} values in 0..9, got shape {labels.shape}")
    records = np.empty((len(images), _CIFAR_RECORD), np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(images), -1)
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.tobytes())
    return path


def split(images: np.ndarray, labels: np.ndarray, n_train: int,
          n_test: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first `n_train` examples to train, the last `n_test` (default: all the rest) to test.

    Returns views (train_images, train_labels, test_images, test_labels); the two parts never
    overlap. Both must be at least 1 and together at most N: ValueError naming the one out of range and its
    largest value otherwise.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images and labels must have the same length, got {n} and {len(labels)}")
    n_train = check_int("n_train", n_train, 1)
    if n_train >= n:
        raise ValueError(f"n_train must be at most {n - 1:,} (of the {n:,} examples at least one is left to test), "
                         f"got {n_train:,}")
    n_test = check_int("n_test", n - n_train if n_test is None else n_test, 1)
    if n_train + n_test > n:
        raise ValueError(f"n_test must be at most {n - n_train:,} (the {n:,} examples less the {n_train:,} to "
                         f"train), got {n_test:,}")
    return images[:n_train], labels[:n_train], images[n - n_test:], labels[n - n_test:]


def random_crop(images: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad each side of images (N, C, H, W) by `padding`, then crop a random H x W window per image.

    Offsets are uniform in 0..2*padding on each axis. Returns a new array, same dtype and shape.
    """
    _check_images("images", images)
    padding = check_int("padding", padding, 0)
    n, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    offsets = rng.integers(0, 2 * padding + 1, size=(n, 2))
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip each image of (N, C, H, W) horizontally with probability 0.5. Returns a new array."""
    _check_images("images", images)
    out = images.copy()
    flip = rng.random(len(images)) < 0.5
    out[flip] = images[flip, ..., ::-1]
    return out


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
              dtype: np.dtype | type = np.float32) -> np.ndarray:
    """uint8 images (N, C, H, W) -> C-contiguous `dtype` array of (images / 255 - mean[c]) / std[c]."""
    _check_images("images", images)
    _check_mean_std(images.shape[1], mean, std)
    dtype = float_dtype(dtype)
    out = np.array(images, dtype=dtype, order="C")
    out /= 255
    out -= np.asarray(mean, dtype).reshape(-1, 1, 1)
    out /= np.asarray(std, dtype).reshape(-1, 1, 1)
    return out


class DataLoader:
    """Batches (x, y) of images (N, C, H, W) uint8 and labels (N,): x (B, C, H, W) normalized `dtype`, y (B,) int64.

    Each pass draws its generator from ``np.random.default_rng((seed, epoch))``: the shuffle
    permutation (when `shuffle`) and then, per batch, random crops (`crop_padding` > 0) and
    flips (`flip`) of the uint8 batch before ``normalize``. ``epoch`` starts at 0, grows by one
    at the end of each complete pass, and may be set to resume: the order of a pass is a
    function of (seed, epoch) alone. The last partial batch is kept unless `drop_last`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64, *, shuffle: bool = False,
                 seed: int = 0, mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0,
                 flip: bool = False, dtype: np.dtype | type = np.float32, drop_last: bool = False) -> None:
        _check_images("images", images)
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be an integer numpy array, got {getattr(labels, 'dtype', type(labels))}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},) to match images, got {labels.shape}")
        _check_mean_std(images.shape[1], mean, std)
        self.images, self.labels = images, labels.astype(np.int64)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.crop_padding = check_int("crop_padding", crop_padding, 0)
        self.shuffle, self.flip, self.drop_last = bool(shuffle), bool(flip), bool(drop_last)
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), float_dtype(dtype)
        self.num_examples = len(images)
        self.epoch = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(self.num_examples) if self.shuffle else np.arange(self.num_examples)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx]
            if self.crop_padding:
                x = random_crop(x, self.crop_padding, rng)
            if self.flip:
                x = random_flip(x, rng)
            yield normalize(x, self.mean, self.std, self.dtype), self.labels[idx]
        self.epoch += 1
