"""Hostile-file fuzz harness for fastconv's file readers (issue 7).

    python tests/fuzz_files.py --reader {idx,cifar10,checkpoint,model,onnx,autotune,all} --inputs 100000 [--seed S]
                               [--workers 1|2] [--save DIR]

Each input is a file built from seeded random choices: random bytes, or a valid file (made with
``write_idx`` / ``write_cifar10`` / ``save_checkpoint`` on small arrays) that is then damaged:
truncated at field boundaries, bit-flipped, header fields overwritten with extreme values, garbage
appended or inserted, gzip-wrapped (IDX), and, for checkpoints, rebuilt with hostile .npy members
(pickled object arrays, huge declared shapes or item sizes, a 'meta' that is not a JSON string,
unexpected keys, other compression methods, encrypted-flagged or duplicate zip entries); for the
autotune cache (issue 13), JSON of every wrong type and depth, names of every kind (unknown, empty,
``__class__``, algorithms that do not apply), oversized and non-UTF-8 files, damaged bytes.

For every input the reader must either return well-formed arrays (the autotune cache: a dict of
dicts of bounded strings, and ``autotune.choose`` one of its candidates, with at most a warning)
or raise ``ValueError`` whose message names the file (or, for load_mnist's folder-level checks, the folder). Anything else is a
FINDING: another exception type, a result that is not well formed, a pickle being loaded, a run
longer than ``LIMIT_S`` seconds, or a peak of traced memory (tracemalloc sees NumPy's buffers)
above ``16 * justified + 1 MiB``, where `justified` is the file size plus what its gzip or zip
streams really decompress to. Findings are printed, and saved (bytes + traceback) under --save.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import faulthandler
import gc
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastconv import autotune, nn, optim  # noqa: E402
from fastconv.data import load_cifar10, load_mnist, read_idx, write_cifar10, write_idx  # noqa: E402
from fastconv.train import load_checkpoint, save_checkpoint  # noqa: E402

READERS = ("idx", "cifar10", "checkpoint", "model", "onnx", "autotune")
LIMIT_S = 2.0           # per input; a longer run is a hang
HARD_LIMIT_S = 30.0     # stuck in C code past this: the watchdog thread dumps the stacks and exits the process
MNIST_IMAGES, MNIST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
INTERESTING_BYTES = (0, 1, 2, 3, 4, 5, 8, 9, 10, 0x0D, 0x1F, 0x7F, 0x80, 0x8B, 0xFE, 0xFF)
INTERESTING_INTS = (0, 1, 2, 3, 27, 28, 255, 256, 3073, 2**15, 2**16 - 1, 2**16, 2**31 - 1, 2**31, 2**32 - 1)


class Finding(BaseException):
    """Raised by the guards (pickle, time limit); a BaseException so that no reader can swallow it."""


# --- mutations -------------------------------------------------------------------------------------

def _offset(rng: random.Random, blob: bytes, boundaries: list[int]) -> int:
    """A field boundary (+-1) or a random offset, within 0..len(blob)."""
    if boundaries and rng.random() < 0.7:
        return max(0, min(len(blob), rng.choice(boundaries) + rng.choice((-1, 0, 0, 0, 1))))
    return rng.randint(0, len(blob))


def mutate(rng: random.Random, blob: bytes, boundaries: list[int]) -> bytes:
    """One random damage to `blob`: truncate, flip bits, overwrite a byte or a 32-bit field, insert,
    delete, duplicate, append garbage or splice in a copy of itself."""
    b = bytearray(blob)
    op = rng.randrange(9)
    at = _offset(rng, b, boundaries)
    if op == 0:
        return bytes(b[:at])
    if op == 1 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 2 and at < len(b):
        b[at] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
    elif op == 3:
        value = rng.choice(INTERESTING_INTS) if rng.random() < 0.8 else rng.getrandbits(32)
        b[at:at + 4] = struct.pack(rng.choice((">I", "<I")), value)
    elif op == 4:
        b[at:at] = rng.randbytes(rng.randint(1, 16))
    elif op == 5:
        del b[at:at + rng.randint(1, 64)]
    elif op == 6:
        b[at:at] = b[at:at + rng.randint(1, 64)]
    elif op == 7:
        b += rng.randbytes(rng.randint(1, 256)) if rng.random() < 0.5 else bytes(rng.randint(1, 64))
    else:
        b += bytes(b[:rng.randint(0, len(b))])
    return bytes(b)


def mutate_some(rng: random.Random, blob: bytes, boundaries: list[int], most: int = 3) -> bytes:
    for _ in range(rng.randint(0, most)):
        blob = mutate(rng, blob, boundaries)
    return blob


def random_blob(rng: random.Random, prefixes: tuple[bytes, ...]) -> bytes:
    """Random bytes of a random length, often behind one of the format's magic prefixes."""
    body = rng.randbytes(rng.choice((0, 1, 3, 4, 8, 16, 100, 784, 3073, rng.randint(0, 8192))))
    return (rng.choice(prefixes) if rng.random() < 0.6 else b"") + body


# --- IDX (read_idx and load_mnist) ------------------------------------------------------------------

def idx_input(rng: random.Random) -> tuple[str, bytes]:
    """(slot, bytes): a hostile file for MNIST's images or labels slot."""
    if rng.random() < 0.1:
        return rng.choice((MNIST_IMAGES, MNIST_LABELS)), random_blob(
            rng, (b"\0\0\x08", b"\0\0\x08\x01", b"\0\0\x08\x03", b"\x1f\x8b", b"\x1f\x8b\x08\x00"))
    kind = rng.randrange(3)
    if kind == 0:
        slot, array = MNIST_IMAGES, np.zeros((rng.randint(1, 3), 28, 28), np.uint8)
    elif kind == 1:
        slot, array = MNIST_LABELS, np.zeros(rng.randint(1, 3), np.uint8)
    else:
        slot = rng.choice((MNIST_IMAGES, MNIST_LABELS))
        array = np.zeros([rng.randint(1, 5) for _ in range(rng.randint(1, 4))], np.uint8)
    array[...] = rng.randrange(12)
    buffer = io.BytesIO()
    ndim = array.ndim
    raw = bytes([0, 0, 8, ndim]) + struct.pack(f">{ndim}I", *array.shape) + array.tobytes()
    raw = mutate_some(rng, raw, [0, 2, 3, 4, *range(4, 5 + 4 * ndim, 4), len(raw)])
    if rng.random() < 0.5:
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=rng.choice((1, 6, 9))) as f:
            f.write(raw)
        stored = buffer.getvalue()
        if rng.random() < 0.2:  # a second gzip member, or a gzip of a gzip
            stored = stored + gzip.compress(raw[:rng.randint(0, len(raw))]) if rng.random() < 0.5 \
                else gzip.compress(stored)
        raw = mutate_some(rng, stored, [0, 2, 3, 4, 8, 9, 10, len(stored) - 8, len(stored) - 4, len(stored)], 2)
    return slot, raw


def check_idx(folder: Path, slot: str, blob: bytes, rng: random.Random) -> None:
    """read_idx on the fuzzed file, then (when it reads) load_mnist on the folder; both must be well formed."""
    path = folder / slot
    md5 = hashlib.md5(blob).hexdigest() if rng.random() < 0.1 else None
    array = read_idx(path, md5)
    _expect(isinstance(array, np.ndarray) and array.dtype == np.uint8 and 1 <= array.ndim <= 4
            and 0 < array.size <= 1032 * len(blob), f"read_idx returned a malformed array {array!r:.80}")
    images, labels = load_mnist(folder)
    _expect(images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (1, 28, 28)
            and labels.dtype == np.int64 and labels.shape == (len(images),)
            and int(labels.min()) >= 0 and int(labels.max()) <= 9, "load_mnist returned malformed arrays")


def setup_idx(folder: Path) -> None:
    """Valid companions: 2 images, 2 labels (a fuzzed file replaces one of them)."""
    write_idx(folder / MNIST_IMAGES, np.zeros((2, 28, 28), np.uint8))
    write_idx(folder / MNIST_LABELS, np.array([3, 7], np.uint8))


# --- CIFAR-10 ---------------------------------------------------------------------------------------

CIFAR_RECORD = 3073


def cifar_input(rng: random.Random) -> tuple[str, bytes]:
    """(name, bytes): a hostile test_batch.bin (read with train=False) or data_batch_2.bin (train=True)."""
    name = rng.choice(("test_batch.bin", "data_batch_2.bin"))
    if rng.random() < 0.15:
        n = rng.randint(0, 3) * CIFAR_RECORD + rng.choice((0, 0, 0, 1, -1)) if rng.random() < 0.5 else None
        return name, rng.randbytes(max(0, n)) if n is not None else random_blob(rng, (b"\x00", b"\x0a", b"\xff"))
    n = rng.randint(1, 3)
    records = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (n, CIFAR_RECORD), dtype=np.uint8)
    records[:, 0] %= 10
    blob = records.tobytes()
    return name, mutate_some(rng, blob, [k * CIFAR_RECORD for k in range(n + 1)] + [1])


def check_cifar10(folder: Path, name: str, blob: bytes, rng: random.Random) -> None:
    """load_cifar10 must give images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9, N from the sizes."""
    train = name != "test_batch.bin"
    images, labels = load_cifar10(folder, train=train)
    n = len(blob) // CIFAR_RECORD + (1 if train else 0)  # data_batch_1.bin holds one valid record
    _expect(images.dtype == np.uint8 and images.shape == (n, 3, 32, 32) and labels.dtype == np.int64
            and labels.shape == (n,) and int(labels.min()) >= 0 and int(labels.max()) <= 9,
            f"load_cifar10 returned malformed arrays {images.shape}, {labels.shape}")


def setup_cifar10(folder: Path) -> None:
    write_cifar10(folder, np.zeros((1, 3, 32, 32), np.uint8), np.array([4]), "data_batch_1.bin")


# --- checkpoints (.npz) -----------------------------------------------------------------------------

def npy(descr: object, shape: object, data: bytes, fortran: object = False, version: tuple[int, int] = (1, 0),
        header: str | None = None) -> bytes:
    """A .npy file from its parts, with no validation (`header` replaces the dict text when given)."""
    text = header if header is not None else \
        "{'descr': %r, 'fortran_order': %r, 'shape': %r, }" % (descr, fortran, shape)
    text += " " * (-(len(text) + 11) % 64) + "\n"
    raw = text.encode("latin1", "replace")
    size = struct.pack("<H", len(raw)) if version[0] == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes(version) + size + raw + data


def _npy_of(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


DESCRS = ("<f4", "<f8", "|u1", "<i8", ">f4", "|b1", "<c8", "|O", "<U4", "|S3", "|V0", "<U0", "<M8[s]",
          [("a", "|O")], [("a", "<f4", (3,))], [("a", "|u1", (10**9,))], [("a", "<f4"), ("a", "<f4")], [],
          "weird", 7, ("<f4", (2**31,)))
SHAPES = ((), (0,), (1,), (3,), (2, 3), (2**62,), (2**31, 2**31), (2**64,), (10**30,), (-1,), (-5, -5),
          (2**32, 0), (1,) * 70, (2,) * 40, (True,), [3], "3", (1.5,), None)
HEADERS = ("", "{", "[1, 2]", "{'descr': '<f4'}", "(" * 150 + ")" * 150, "[" * 3000, "{[]: 1}", "{1: 2}",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
           "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", "__import__('os').system('false')",
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2**1000,)}", "\x00\xff" * 20)


def hostile_npy(rng: random.Random) -> bytes:
    """A .npy member that lies: odd dtype, huge or invalid shape, wrong data length, odd version, bad header."""
    pick = rng.random()
    if pick < 0.15:
        return npy(None, None, rng.randbytes(rng.randint(0, 16)), header=rng.choice(HEADERS),
                   version=rng.choice(((1, 0), (2, 0), (3, 0))))
    if pick < 0.25:
        return _npy_of(np.array([{"version": 1}, None], dtype=object), allow_pickle=True)
    descr, shape = rng.choice(DESCRS), rng.choice(SHAPES)
    try:
        size = int(math.prod(shape)) * np.dtype(descr).itemsize
    except Exception:
        size = -1
    size = size if 0 <= size <= 4096 else rng.randint(0, 64)
    size += rng.choice((0, 0, 0, -1, 1))
    return npy(descr, shape, rng.randbytes(max(0, size)), fortran=rng.choice((False, True, "x")),
               version=rng.choice(((1, 0), (1, 0), (2, 0), (3, 0), (9, 9))))


def hostile_meta(rng: random.Random) -> bytes:
    """A 'meta' member that is not a version-1 JSON dict in a 0-d unicode array."""
    text = rng.choice(('{"version": 1', "not json", "[1, 2]", '"version"', "{}", '{"version": 99}', "[" * 100_000,
                       '{"version": ' + "9" * 5000 + "}", '{"version": 1, "x": NaN}', "\ud800", '{"version": true}'))
    choice = rng.randrange(7)
    if choice == 0:
        return _npy_of(np.array(text))
    if choice == 1:
        return _npy_of(np.array([json.dumps({"version": 1})] * 2))
    if choice == 2:
        return _npy_of(np.array(7))
    if choice == 3:
        return _npy_of(np.array(b'{"version": 1}'))
    if choice == 4:
        return _npy_of(np.array({"version": 1}, dtype=object), allow_pickle=True)
    if choice == 5:  # code points that are not unicode: above 0x10FFFF, or lone surrogates
        return npy("<U2", (), struct.pack("<2I", rng.choice((0x110000, 0xD800, 0xFFFFFFFF)), 0x41))
    return hostile_npy(rng)


def zip_members(members: list[tuple[str, bytes]], rng: random.Random) -> bytes:
    """The members zipped, stored or deflated (sometimes bzip2/lzma; rarely mixed), sometimes with a comment."""
    buffer = io.BytesIO()
    methods = (zipfile.ZIP_STORED,) * 12 + (zipfile.ZIP_DEFLATED,) * 5 + (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
    method = rng.choice(methods)
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, blob in members:
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = rng.choice(methods) if rng.random() < 0.05 else method
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # duplicate names are wanted here
                zf.writestr(info, blob)
        if rng.random() < 0.05:
            zf.comment = rng.randbytes(rng.randint(1, 100))
    return buffer.getvalue()


# Offsets of fields within zip records: local header (PK\3\4), central directory entry (PK\1\2), end (PK\5\6).
ZIP_FIELDS = {b"PK\x03\x04": (4, 6, 8, 14, 18, 22, 26, 28), b"PK\x01\x02": (8, 10, 16, 20, 24, 28, 30, 34, 42),
              b"PK\x05\x06": (4, 6, 8, 10, 12, 16, 20)}


def corrupt_zip_field(rng: random.Random, blob: bytes) -> bytes:
    """Overwrite one field of a zip record (flags: encrypted bit, method, crc, sizes, name length, offsets)."""
    records = [(m.start(), sig) for sig in ZIP_FIELDS for m in re.finditer(re.escape(sig), blob)]
    if not records:
        return blob
    start, sig = rng.choice(records)
    at = start + rng.choice(ZIP_FIELDS[sig])
    b = bytearray(blob)
    width = 2 if at - start in (4, 6, 8, 10, 26, 28, 30, 34) and sig != b"PK\x05\x06" else rng.choice((2, 4))
    value = rng.choice((0, 1, 8, 9, 12, 14, 99, 0xFFFF, 0xFFFFFFFF, 2**31, rng.getrandbits(32)))
    b[at:at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    if rng.random() < 0.3 and at - start == 6 and sig != b"PK\x05\x06":
        b[at] |= 1  # the "encrypted" flag bit
    return bytes(b)


BASE_CHECKPOINT: list[tuple[str, bytes]] = []


def setup_checkpoint(folder: Path) -> None:
    """BASE_CHECKPOINT: the members of a real checkpoint of a tiny model (save_checkpoint)."""
    model = nn.Sequential(nn.Linear(3, 2))
    optimizer = optim.Adam(model.parameters())
    record = {"epoch": 1, "lr": 0.001, "train_loss": 2.3, "train_accuracy": 0.1, "train_seconds": 1.0,
              "images_per_second": 100.0, "test_loss": 2.2, "test_accuracy": 0.12, "test_seconds": 0.5}
    path = save_checkpoint(folder / "base.npz", model, optimizer, optim.StepLR(optimizer, 1),
                           {"settings": {"epochs": 2}, "epochs_done": 1, "history": [record]})
    with zipfile.ZipFile(path) as zf:
        BASE_CHECKPOINT[:] = [(info.filename, zf.read(info)) for info in zf.infolist()]
    path.unlink()


def checkpoint_input(rng: random.Random) -> tuple[str, bytes]:
    """('checkpoint.npz', bytes): random bytes, or the base checkpoint with its members replaced, added,
    removed, renamed or damaged, zipped again, then with zip fields and bytes damaged."""
    return "checkpoint.npz", damaged_checkpoint(rng, BASE_CHECKPOINT)


def damaged_checkpoint(rng: random.Random, base: list[tuple[str, bytes]]) -> bytes:
    """Random bytes, or the members of `base` replaced, added, removed, renamed or damaged, zipped again,
    then with zip fields and bytes damaged."""
    if rng.random() < 0.08:
        return random_blob(rng, (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY\x01\x00", b"\x80\x04"))
    members = list(base)
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(members))
        name, blob = members[i]
        op = rng.randrange(9)
        if op == 0:
            members[i] = (name, hostile_meta(rng) if name == "meta.npy" else hostile_npy(rng))
        elif op == 1:
            members[-1] = ("meta.npy", hostile_meta(rng))
        elif op == 2:
            members.insert(rng.randrange(len(members) + 1), (rng.choice(
                ("foo.npy", "model.npy", "model/.npy", "/x.npy", "extra", "dir/", "../x.npy", "model/w",
                 "scheduler/a/b.npy", "meta.npy", name)), rng.choice((blob, hostile_npy(rng)))))
        elif op == 3 and len(members) > 1:
            del members[i]
        elif op == 4:
            members[i] = (name, mutate_some(rng, blob, [0, 6, 8, 10, 64, 128, len(blob)], 2))
        elif op == 5:
            members[i] = (name, _npy_of(np.zeros(rng.choice(((3,), (2, 2), ())), rng.choice(("<f8", ">i4")))))
        elif op == 6:
            members[i] = (name, _npy_of(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))))
        elif op == 7:
            members[-1] = ("meta.npy", _npy_of(np.array(json.dumps({"version": 1, "settings": {}}))))
        else:
            members[i] = (name, hostile_npy(rng))
    blob = zip_members(members, rng)
    if rng.random() < 0.3:
        blob = corrupt_zip_field(rng, blob)
    if rng.random() < 0.4:
        blob = mutate_some(rng, blob, [0, 4, 30, len(blob) - 22, len(blob) - 10, len(blob)], 2)
    return blob


def check_checkpoint(folder: Path, name: str, blob: bytes, rng: random.Random) -> None:
    """load_checkpoint must give (meta dict of version 1, {'model','optimizer','scheduler'} -> {name: array})
    with no object arrays."""
    meta, parts = load_checkpoint(folder / name)
    _expect(isinstance(meta, dict) and meta.get("version") == 1, f"meta is {meta!r:.80}")
    _expect(isinstance(parts, dict) and set(parts) == {"model", "optimizer", "scheduler"}, f"parts {parts!r:.80}")
    for part in parts.values():
        for key, value in part.items():
            _expect(isinstance(key, str) and key and isinstance(value, np.ndarray) and not value.dtype.hasobject,
                    f"entry {key!r} is {type(value)} {getattr(value, 'dtype', '')}")


# --- whole models (fc.save / fc.load: a checkpoint whose meta holds the architecture) ---------------------

BASE_MODEL: list[tuple[str, bytes]] = []
MODEL_TYPES = ("Module", "__class__", "os.system", "", "Sequential", "Linear", "Conv2d", "BatchNorm2d", "Residual",
               "ReLU", "Dropout", "MaxPool2d", 7, None)
MODEL_VALUES = (2**31 - 1, 2**31, 10**6, 60_000, 8, 3, 2, 1, 0, -1, 1e308, 0.5, float("nan"), True, False, None, "x",
                "same", "valid", [], {}, {"module": 1}, {"dtype": "object"}, {"dtype": "float64"},
                {"tuple": [2**31 - 1, 2**31 - 1]}, {"tuple": [3, 3]}, {"list": "x"}, {"pickle": 1},
                {"module": {"type": "Sequential", "args": [], "kwargs": {}}}, [[[[[[1]]]]]])


def setup_model(folder: Path) -> None:
    """BASE_MODEL: the members of fc.save of a small model with every kind of constructor argument."""
    from fastconv import serialize
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=(1, 1), bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(2 * 2 * 2, 3))
    path = serialize.save(model, folder / "base.npz")
    with zipfile.ZipFile(path) as zf:
        BASE_MODEL[:] = [(info.filename, zf.read(info)) for info in zf.infolist()]
    path.unlink()


def _nodes(value: object) -> list[object]:
    """Every dict and list inside a JSON value, itself first."""
    found = [value] if isinstance(value, (dict, list)) else []
    for inner in (value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()):
        found += _nodes(inner)
    return found


def model_input(rng: random.Random) -> tuple[str, bytes]:
    """('model.npz', bytes): the base model file with its meta's architecture changed in 1-3 places (a value
    replaced by a hostile one, a class name swapped, a key dropped), or damaged as a checkpoint is."""
    if rng.random() < 0.5:
        return "model.npz", damaged_checkpoint(rng, BASE_MODEL)
    members = dict(BASE_MODEL)
    meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
    for _ in range(rng.randint(1, 3)):
        node = rng.choice(_nodes(meta["architecture"]))
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            continue
        key = rng.choice(keys)
        pick = rng.random()
        if pick < 0.2 and isinstance(node, dict) and "type" in node:
            node["type"] = rng.choice(MODEL_TYPES)
        elif pick < 0.3 and isinstance(node, dict):
            del node[key]
        else:
            node[key] = copy.deepcopy(rng.choice(MODEL_VALUES))
    if rng.random() < 0.1:
        meta[rng.choice(("dtype", "training", "architecture"))] = copy.deepcopy(rng.choice(MODEL_VALUES))
    members["meta.npy"] = _npy_of(np.array(json.dumps(meta)))
    return "model.npz", zip_members(list(members.items()), rng)


def check_model(folder: Path, name: str, blob: bytes, rng: random.Random) -> None:
    """fc.load must give a Module whose arrays are all plain numbers."""
    from fastconv import serialize
    model = serialize.load(folder / name)
    _expect(isinstance(model, nn.Module), f"load gave {type(model)}")
    for key, value in model.state_dict().items():
        _expect(isinstance(value, np.ndarray) and value.dtype.kind in "fiu", f"entry {key!r} is {type(value)}")


# --- ONNX models (fastconv.onnx.load) -------------------------------------------------------------------

ONNX_BASE: list[bytes] = []  # the serialized base model
ONNX_OPENED: list[str] | None = None  # files opened while a check runs (an audit hook appends)
ONNX_LOCATIONS = ("weights.bin", "../outside.bin", "link.bin", "/etc/hostname", "", "sub/../weights.bin",
                  "weights.bin\0x", "./weights.bin", "sub", "../" * 20 + "etc/hostname")
ONNX_INTS = (0, 1, 2, 3, -1, -2**31, 2**31 - 1, 2**40, 10**6)


def _audit(event: str, args: tuple) -> None:
    if event == "open" and ONNX_OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        ONNX_OPENED.append(os.fsdecode(args[0]))


def setup_onnx(folder: Path) -> None:
    """ONNX_BASE: a small model with every kind of data fastconv reads (an initializer, a ConstantOfShape
    weight, one stored as external data in weights.bin), and decoys outside the folder: ../outside.bin, and
    link.bin, a symlink to it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    sys.addaudithook(_audit)
    (folder.parent / "outside.bin").write_bytes(b"\1" * 4096)
    with contextlib.suppress(OSError):
        (folder / "link.bin").symlink_to(folder.parent / "outside.bin")
    w2 = np.linspace(-1, 1, 3 * 4 * 2 * 2, dtype=np.float32).reshape(3, 16)
    (folder / "weights.bin").write_bytes(w2.tobytes())
    external = numpy_helper.from_array(np.zeros(0, np.float32), "W2")
    external.dims[:] = [3, 16]
    external.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(w2.nbytes))):
        external.external_data.add(key=key, value=value)
    inits = [numpy_helper.from_array(np.array([4, 1, 3, 3], np.int64), "wshape"), external,
             numpy_helper.from_array(np.ones(3, np.float32), "C")]
    inits += [numpy_helper.from_array(np.full(4, v, np.float32), n) for n, v in (("g", 1.0), ("b", 0.1), ("m", 0.0),
                                                                                   ("v", 1.0))]
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["W"], name="weights",
                              value=numpy_helper.from_array(np.array([0.1], np.float32))),
             helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn", epsilon=1e-5),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "W2", "C"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "base", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ONNX_BASE[:] = [model.SerializeToString()]
    # every node folded once (x made a constant), so that loading or compiling the kernels of its ops, done once
    # per machine or process, is not timed as a hang of some input that folds them
    import fastconv.onnx as fx
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    folded.graph.initializer.append(numpy_helper.from_array(np.ones((1, 1, 4, 4), np.float32), "x"))
    del folded.graph.input[:]
    (folder / "warm.onnx").write_bytes(folded.SerializeToString())
    fx.load(folder / "warm.onnx")
    (folder / "warm.onnx").unlink()


def onnx_input(rng: random.Random) -> tuple[str, bytes]:
    """('model.onnx', bytes): the base model with 1-3 of its fields made hostile (tensor dims and data, external
    data locations, offsets and lengths, node inputs and outputs: missing, cycles, duplicates; operator names and
    domains, the opset, attribute values), or its bytes damaged."""
    import onnx
    if rng.random() < 0.25:
        blob = ONNX_BASE[0]
        return "model.onnx", mutate_some(rng, blob, [0, 2, len(blob) // 2, len(blob) - 4, len(blob)], 3)
    model = onnx.ModelProto()
    model.ParseFromString(ONNX_BASE[0])
    graph = model.graph
    for _ in range(rng.randint(1, 3)):
        pick = rng.randrange(9)
        if pick == 0:
            t = rng.choice(graph.initializer)
            t.dims[:] = [rng.choice(ONNX_INTS) if rng.random() < 0.5 else d for d in t.dims] + \
                ([rng.choice(ONNX_INTS)] if rng.random() < 0.2 else [])
        elif pick == 1:
            t = rng.choice(graph.initializer)
            if t.raw_data:
                t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data) + 1)] + rng.randbytes(rng.choice((0, 0, 4)))
            t.data_type = rng.choice((t.data_type,) * 3 + (0, 8, 14, 16, 99))
        elif pick == 2:
            t = next(t for t in graph.initializer if t.name == "W2")
            entries = {e.key: e for e in t.external_data}
            entries["location"].value = rng.choice(ONNX_LOCATIONS)
            entries[rng.choice(("offset", "length"))].value = str(rng.choice(ONNX_INTS + (64, 192, 193)))
        elif pick == 3:
            node = rng.choice(graph.node)
            other = rng.choice(graph.node)
            if node.input:
                node.input[rng.randrange(len(node.input))] = rng.choice(
                    ("missing", other.output[0], "", "y", "x", "W2", node.output[0]))
        elif pick == 4:
            node = rng.choice(graph.node)
            node.output[0] = rng.choice(("x", "W2", "y", rng.choice(graph.node).output[0], ""))
        elif pick == 5:
            node = rng.choice(graph.node)
            if rng.random() < 0.5:
                node.op_type = rng.choice(("Foo", "", "Loop", "conv", "Conv", "Relu", "ConstantOfShape", "Gemm"))
            else:
                node.domain = rng.choice(("com.microsoft", "ai.onnx.ml", "x"))
        elif pick == 6:
            model.opset_import[0].version = rng.choice((1, 6, 7, 8, 12, 21, 22, 1000, -1))
        elif pick == 7:
            node = rng.choice([n for n in graph.node if n.attribute] or list(graph.node))
            if node.attribute:
                a = rng.choice(node.attribute)
                if a.type == onnx.AttributeProto.INTS:
                    a.ints[:] = [rng.choice(ONNX_INTS) for _ in range(rng.choice((0, 1, 2, 4, len(a.ints))))]
                elif a.type == onnx.AttributeProto.INT:
                    a.i = rng.choice(ONNX_INTS)
                elif a.type == onnx.AttributeProto.FLOAT:
                    a.f = rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e30))
                elif a.type == onnx.AttributeProto.TENSOR:
                    a.t.dims[:] = [rng.choice(ONNX_INTS)]
        else:
            shape = next(t for t in graph.initializer if t.name == "wshape")
            shape.raw_data = np.array([rng.choice(ONNX_INTS) for _ in range(rng.choice((1, 2, 4)))],
                                      np.int64).tobytes()
            shape.dims[:] = [len(shape.raw_data) // 8]
    blob = model.SerializeToString()
    if rng.random() < 0.2:
        blob = mutate_some(rng, blob, [0, len(blob) // 2, len(blob)], 2)
    return "model.onnx", blob


def check_onnx(folder: Path, name: str, blob: bytes, rng: random.Random) -> None:
    """fastconv.onnx.load (at most 512 KiB of constants) must give a Model or a ValueError naming the file,
    and open nothing outside the folder."""
    global ONNX_OPENED
    import fastconv.onnx as fx
    ONNX_OPENED = []
    try:
        model = fx.load(folder / name, max_constant_bytes=1 << 19)
    finally:
        opened, ONNX_OPENED = ONNX_OPENED, None
        outside = [p for p in opened if "outside.bin" in p or p.endswith("hostname")
                   or (os.path.exists(p) and Path(p).resolve() == (folder.parent / "outside.bin").resolve())]
        if outside:
            raise Finding(f"read outside the model's folder: {outside[:2]}")
    _expect(isinstance(model, fx.Model), f"load gave {type(model)}")


# --- the autotune cache (JSON) ----------------------------------------------------------------------

TUNE_KEY = "conv2d.forward.float32.x8x16x12x12.w16x16x3x3.s(1, 1).p(1, 1, 1, 1).d(1, 1).g1.direct|winograd"
TUNE_CANDIDATES = ("direct", "winograd")
TUNE_NAMES = ("direct", "winograd", "naive", "im2col", "no_such_algo", "", "__class__", "__init__", "auto",
              "direct\u0000", "x" * 65, "x" * 10_000, "DIRECT", " direct")
TUNE_VALUES = (None, True, 0, -1, 1e308, "1e999", [], {}, [1, 2], {"a": "b"}, "x" * 500, "\ud800")


def _tune_value(rng: random.Random, depth: int = 0) -> object:
    """A JSON value of a random type, sometimes nested deeper."""
    pick = rng.random()
    if pick < 0.4 or depth > 3:
        return rng.choice(TUNE_NAMES + TUNE_VALUES)
    if pick < 0.7:
        return {rng.choice((TUNE_KEY, "k", "", "x" * 500)): _tune_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return [_tune_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def autotune_input(rng: random.Random) -> tuple[str, bytes]:
    """('autotune.json', bytes): random bytes; a cache for this machine naming any algorithm for the
    problem; JSON of wrong types, deep nesting, many or long entries; damaged bytes of any of those."""
    name, pick = "autotune.json", rng.random()
    if pick < 0.08:
        return name, random_blob(rng, (b"{", b"[", b'{"', b"\xef\xbb\xbf{", b"\xff\xfe"))
    if pick < 0.12:
        text = rng.choice(("[" * 100_000, "{" * 50_000, '{"a":' * 20_000, "1" * 100_000, '"' + "x" * 100_000,
                           '{"m": {"k": ' + "[" * 5000 + "]" * 5000 + "}}", "NaN", "-Infinity", '{"a": 1e999999}'))
        return name, text.encode()
    if pick < 0.13:  # past the size bound (a multi-megabyte file: rarely)
        return name, b'{"m": {"' + b"k" * autotune.MAX_CACHE_BYTES + b'": "direct"}}'
    machine = autotune._machine() if rng.random() < 0.8 else rng.choice(("", "other machine", "x" * 1000))
    if pick < 0.6:
        stored: object = {machine: {TUNE_KEY: rng.choice(TUNE_NAMES)}}
    elif pick < 0.7:
        stored = {machine: {f"{TUNE_KEY}{i}": rng.choice(TUNE_NAMES) for i in range(rng.choice((10, 1000, 20_000)))}}
    else:
        stored = rng.choice(({machine: _tune_value(rng)}, _tune_value(rng), {machine: {TUNE_KEY: _tune_value(rng)}}))
    blob = json.dumps(stored, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if rng.random() < 0.3:
        blob = mutate_some(rng, blob, [0, 1, 2, len(blob) // 2, len(blob) - 2, len(blob) - 1, len(blob)], 2)
    return name, blob


def check_autotune(folder: Path, name: str, blob: bytes, rng: random.Random) -> None:
    """read_cache must give {str: {str: str}} of bounded sizes (or ValueError naming the file); then
    autotune.choose on the same file, with timing off, must return the remembered name only when it is a
    candidate, else the default, and raise nothing (a damaged file is moved aside with a warning)."""
    stored = autotune.read_cache(folder / name)
    _expect(isinstance(stored, dict) and all(
        isinstance(m, str) and isinstance(e, dict) and len(e) <= autotune.MAX_ENTRIES and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= autotune.MAX_KEY_CHARS
            and len(v) <= autotune.MAX_NAME_CHARS for k, v in e.items()) for m, e in stored.items()),
        f"read_cache returned {stored!r:.80}")


def choose_on(path: Path) -> str:
    """autotune.choose for TUNE_KEY with the cache at `path`, timing off: what conv2d would run."""
    def never() -> None:
        raise Finding("a candidate ran with timing off")
    autotune.set_autotune(False, cache=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return autotune.choose(TUNE_KEY, 1e9, "direct", {c: never for c in TUNE_CANDIDATES})
    finally:
        autotune.set_autotune(True, cache=None)


def check_autotune_choice(folder: Path, name: str, blob: bytes, rng: random.Random) -> None:
    """Both halves of check_autotune: the reader, then what choose makes of the file (never an exception)."""
    try:
        check_autotune(folder, name, blob, rng)
    finally:
        try:
            chosen = choose_on(folder / name)
        except Finding:
            raise
        except Exception as error:  # noqa: BLE001 - any exception from choose is a finding
            raise Finding(f"autotune.choose raised {type(error).__name__}: {error!s:.100}") from None
        _expect(chosen in TUNE_CANDIDATES, f"autotune.choose returned {chosen!r:.80}")


def setup_autotune(folder: Path) -> None:
    """Nothing beside the fuzzed file."""


# --- the run ----------------------------------------------------------------------------------------

SETUP = {"idx": setup_idx, "cifar10": setup_cifar10, "checkpoint": setup_checkpoint, "model": setup_model,
         "onnx": setup_onnx, "autotune": setup_autotune}
GENERATE = {"idx": idx_input, "cifar10": cifar_input, "checkpoint": checkpoint_input, "model": model_input,
            "onnx": onnx_input, "autotune": autotune_input}
CHECK = {"idx": check_idx, "cifar10": check_cifar10, "checkpoint": check_checkpoint, "model": check_model,
         "onnx": check_onnx, "autotune": check_autotune_choice}


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise Finding(f"malformed result: {what}")


def inflated_size(blob: bytes, cap: int = 64 << 20) -> int:
    """What the gzip stream or zip members in `blob` really decompress to (up to `cap`; errors just stop)."""
    total = 0
    with contextlib.suppress(Exception):
        if blob[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
                while total < cap and (chunk := f.read(1 << 20)):
                    total += len(chunk)
        elif b"PK" in blob:
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                for info in zf.infolist():
                    with contextlib.suppress(Exception), zf.open(info) as f:
                        while total < cap and (chunk := f.read(1 << 20)):
                            total += len(chunk)
    return total


def message_kind(error: BaseException, folder: Path) -> str:
    """The error's message with paths, quoted text and numbers blanked, cut short: groups outcomes."""
    text = str(error).replace(str(folder), "<dir>")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'_'", text)
    text = re.sub(r"\b(0x[0-9a-f]+|[0-9a-f]*[0-9][0-9a-f]*)\b", "N", text)
    text = re.sub(r"magic starts with \w+", "magic starts with N", text)
    return text.splitlines()[0][:70] if text else ""


CURRENT = {"began": None, "input": None}  # what the watchdog thread looks at


def watchdog() -> None:
    """An input stuck past HARD_LIMIT_S (in C code, where SIGALRM cannot interrupt it) ends the process."""
    while True:
        time.sleep(1.0)
        began = CURRENT["began"]
        if began is not None and time.perf_counter() - began > HARD_LIMIT_S:
            print(f"FINDING hard hang: input {CURRENT['input']} still running after {HARD_LIMIT_S} s",
                  file=sys.stderr, flush=True)
            faulthandler.dump_traceback(all_threads=True)
            os._exit(3)


@contextlib.contextmanager
def guards():
    """While active: pickle.load/loads/Unpickler raise Finding; SIGALRM raises Finding (time limit);
    tracemalloc traces allocations; the watchdog thread runs. All but the thread restored on exit."""
    def refusing(original):
        def no_pickle(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("numba."):
                return original(*args, **kwargs)  # Numba reading its own cache of a kernel compiled earlier
            raise Finding("a pickle was loaded")
        return no_pickle

    def too_slow(signum, frame):
        raise Finding(f"hang: still running after {LIMIT_S} s")

    saved = {name: getattr(pickle, name) for name in ("load", "loads", "Unpickler")}
    for name, original in saved.items():
        setattr(pickle, name, refusing(original))
    previous = signal.signal(signal.SIGALRM, too_slow)
    if not any(t.name == "fuzz-watchdog" for t in threading.enumerate()):
        threading.Thread(target=watchdog, name="fuzz-watchdog", daemon=True).start()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for name, value in saved.items():
            setattr(pickle, name, value)
        if not tracing:
            tracemalloc.stop()
        CURRENT["began"] = None


def attempt(reader: str, folder: Path, name: str, blob: bytes, check_seed: str) -> tuple[str, str, float, int]:
    """One call of CHECK[reader] under the time limit, with garbage collection paused and the traced
    peak reset: (outcome, traceback of a finding, seconds, peak bytes)."""
    outcome, error_text = "ok", ""
    tracemalloc.clear_traces()
    tracemalloc.reset_peak()
    gc.disable()  # no collection of earlier inputs' garbage inside the measured window
    began = CURRENT["began"] = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
        try:
            CHECK[reader](folder, name, blob, random.Random(check_seed))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Finding as e:
        outcome, error_text = f"FINDING {e}", traceback.format_exc()
    except Exception as e:  # noqa: BLE001 - classifying every exception is the point
        kind = f"{type(e).__name__}: {message_kind(e, folder)}"
        named = str(folder / name) in str(e) or (reader == "idx" and str(folder) in str(e))
        outcome = kind if isinstance(e, ValueError) and named else f"FINDING {kind}"
        error_text = traceback.format_exc() if outcome.startswith("FINDING") else ""
    elapsed = time.perf_counter() - began
    CURRENT["began"] = None
    peak = tracemalloc.get_traced_memory()[1]
    gc.enable()
    return outcome, error_text, elapsed, peak


def fuzz(reader: str, start: int, count: int, seed: int = 0, save: str | None = None) -> dict:
    """Run inputs start..start+count-1 of `reader`; returns {'outcomes': Counter, 'findings': [...], 'inputs': n,
    'memory_unconfirmed': n}. A peak over the memory bound is a finding when a second read of the same
    file goes over it again (`memory_unconfirmed` counts those that did not)."""
    outcomes: collections.Counter = collections.Counter()
    findings, unconfirmed = [], 0
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp, guards():
        folder = Path(tmp)
        SETUP[reader](folder)
        companions = {p.name: p.read_bytes() for p in folder.iterdir()}
        for i in range(start, start + count):
            name, blob = GENERATE[reader](random.Random(f"{seed}:{reader}:{i}"))
            for other, content in companions.items():  # restore the slot the previous input replaced
                if other != name:
                    (folder / other).write_bytes(content)
            (folder / name).write_bytes(blob)
            CURRENT["input"] = f"{reader} {seed}:{i} at {folder / name}"
            outcome, error_text, elapsed, peak = attempt(reader, folder, name, blob, f"{seed}:{i}")
            if elapsed > LIMIT_S and not outcome.startswith("FINDING"):
                outcome = f"FINDING hang: {elapsed:.1f} s ({outcome})"
            bound = 16 * len(blob) + (1 << 20)
            if peak > bound:  # only then is it worth decompressing to see what the file justifies
                bound = 16 * (len(blob) + inflated_size(blob)) + (1 << 20)
            if peak > bound:
                again = attempt(reader, folder, name, blob, f"{seed}:{i}")[3]
                if again > bound:
                    outcome = f"FINDING memory: peak {peak} then {again} bytes for a {len(blob)}-byte file ({outcome})"
                else:
                    unconfirmed += 1
            outcomes[outcome] += 1
            if outcome.startswith("FINDING"):
                findings.append({"reader": reader, "input": i, "seed": seed, "outcome": outcome,
                                 "size": len(blob), "traceback": error_text})
                if save:
                    out = Path(save)
                    out.mkdir(parents=True, exist_ok=True)
                    (out / f"{reader}-{seed}-{i}.bin").write_bytes(blob)
                    (out / f"{reader}-{seed}-{i}.txt").write_text(f"{outcome}\nslot: {name}\n\n{error_text}")
    return {"outcomes": outcomes, "findings": findings, "inputs": count, "memory_unconfirmed": unconfirmed}


def run(reader: str, inputs: int, seed: int = 0, workers: int = 1, save: str | None = None) -> dict:
    """All `inputs` of `reader`, split over `workers` processes (1: in this process)."""
    if workers == 1:
        return fuzz(reader, 0, inputs, seed, save)
    chunks = [(reader, inputs * k // workers, inputs * (k + 1) // workers - inputs * k // workers, seed, save)
              for k in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(fuzz, *zip(*chunks)))
    return {"outcomes": sum((p["outcomes"] for p in parts), collections.Counter()),
            "findings": [f for p in parts for f in p["findings"]], "inputs": sum(p["inputs"] for p in parts),
            "memory_unconfirmed": sum(p["memory_unconfirmed"] for p in parts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", choices=(*READERS, "all"), default="all")
    parser.add_argument("--inputs", type=int, default=1000, help="inputs per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1)
    parser.add_argument("--save", help="folder for the reproducers of findings (bytes + traceback)")
    args = parser.parse_args(argv)
    total_findings = 0
    for reader in READERS if args.reader == "all" else (args.reader,):
        began = time.perf_counter()
        result = run(reader, args.inputs, args.seed, args.workers, args.save)
        wall = time.perf_counter() - began
        outcomes = result["outcomes"]
        print(f"== {reader}: {result['inputs']} inputs in {wall:.1f} s ({result['inputs'] / wall:.0f}/s), "
              f"{outcomes['ok']} ok, {len(result['findings'])} findings, "
              f"{result['memory_unconfirmed']} memory peaks over the bound that a second read did not repeat")
        for outcome, n in outcomes.most_common():
            print(f"  {n:7d}  {outcome}")
        for finding in result["findings"][:20]:
            print(f"  FINDING input {finding['input']} ({finding['size']} bytes): {finding['outcome']}\n"
                  + "".join("    " + line + "\n" for line in finding["traceback"].splitlines()[-4:]))
        total_findings += len(result["findings"])
        sys.stdout.flush()
    print(f"total findings: {total_findings}")
    return 1 if total_findings else 0


if __name__ == "__main__":
    sys.exit(main())
