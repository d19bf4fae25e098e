"""Hostile files (issue 7): the IDX/MNIST and CIFAR-10 readers and load_checkpoint on damaged input.

A short run of the fuzz harness (tests/fuzz_files.py; the long run is its command line) per reader,
hypothesis over raw bytes per reader, and one reproducer per bug the harness found in
load_checkpoint. tests/test_data.py and tests/test_train.py cover the single hand-made bad files.
"""
from __future__ import annotations

import io
import json
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_files  # noqa: E402

from fastconv.data import load_cifar10, read_idx  # noqa: E402
from fastconv.train import load_checkpoint  # noqa: E402


@pytest.mark.parametrize("reader", fuzz_files.READERS)
def test_harness_finds_nothing(reader):
    """300 generated hostile files per reader: each reads well formed or raises a ValueError naming the
    file, within the time limit and memory bound, without unpickling."""
    result = fuzz_files.run(reader, 300, seed=12345)
    assert result["inputs"] == 300
    assert result["findings"] == [], result["findings"][:3]
    assert 0 < result["outcomes"]["ok"] < 300  # both readable and refused files were generated


def test_harness_reports_a_reader_that_misbehaves(monkeypatch):
    """The harness itself: a reader raising a non-ValueError, or unpickling, is a finding."""
    monkeypatch.setitem(fuzz_files.CHECK, "cifar10", lambda *args: np.load(io.BytesIO(b"\x80\x04N."),
                                                                            allow_pickle=True))
    findings = fuzz_files.run("cifar10", 3)["findings"]
    assert len(findings) == 3 and all("pickle" in f["outcome"] for f in findings)
    monkeypatch.setitem(fuzz_files.CHECK, "cifar10", lambda *args: {}["x"])
    assert all("KeyError" in f["outcome"] for f in fuzz_files.run("cifar10", 2)["findings"])


def _read_or_refuse(read, path: Path, blob: bytes) -> None:
    """`read(path)` on `blob`: success or a ValueError naming the file, with traced memory below the bound."""
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        read(path)
    except ValueError as error:
        assert str(path) in str(error)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 16 * (len(blob) + fuzz_files.inflated_size(blob)) + (1 << 20)


@given(st.binary(max_size=4096))
def test_read_idx_on_any_bytes(tmp_path_factory, blob):
    _read_or_refuse(read_idx, tmp_path_factory.mktemp("idx") / "x.idx", blob)


@given(st.sampled_from([b"", b"\0\0\x08\x01", b"\0\0\x08\x03", b"\x1f\x8b\x08\x00"]), st.binary(max_size=2048))
def test_read_idx_on_bytes_behind_a_magic(tmp_path_factory, magic, blob):
    _read_or_refuse(read_idx, tmp_path_factory.mktemp("idx") / "x.idx", magic + blob)


@given(st.integers(0, 3), st.binary(max_size=64), st.binary(max_size=3073))
def test_load_cifar10_on_any_bytes(tmp_path_factory, records, head, blob):
    """Sizes near whole records, so that the label check is reached too."""
    folder = tmp_path_factory.mktemp("cifar")
    _read_or_refuse(lambda p: load_cifar10(folder, train=False), folder / "test_batch.bin",
                    (head + blob * records)[:records * 3073] if records else head)


@given(st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY\x01\x00"]), st.binary(max_size=4096))
def test_load_checkpoint_on_any_bytes(tmp_path_factory, magic, blob):
    _read_or_refuse(load_checkpoint, tmp_path_factory.mktemp("ckpt") / "c.npz", magic + blob)


@given(st.binary(max_size=256), st.integers(0, 300))
def test_load_checkpoint_on_a_damaged_member(tmp_path_factory, blob, at):
    """A real checkpoint whose 'model/w' entry has `blob` spliced in at `at`."""
    member = fuzz_files._npy_of(np.arange(6, dtype=np.float32))
    zipped = _zip({"model/w.npy": member[:at] + blob + member[at:], "meta.npy": _meta()})
    _read_or_refuse(load_checkpoint, tmp_path_factory.mktemp("ckpt") / "c.npz", zipped)


# --- reproducers of what the harness found in load_checkpoint (np.load-based) ---------------------------

META = {"version": 1, "settings": {}, "epochs_done": 0, "history": []}  # the least a valid meta holds


def _meta() -> bytes:
    return fuzz_files._npy_of(np.array(json.dumps(META)))


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buffer.getvalue()


@pytest.mark.parametrize("member, match", [
    (fuzz_files.npy("<f8", (2**28,), b""), "truncated: its header declares"),      # was: 2 GiB allocated
    (fuzz_files.npy([("a", "|u1", (10**9,))], (1,), b""), "dtype"),                 # was: 1 GB allocated
    (fuzz_files.npy("<f4", (10**30,), b""), "more than the"),                       # was: OverflowError
    (fuzz_files.npy("<f4", (True,), b"\0" * 4), "invalid shape"),                   # was: TypeError
    (fuzz_files.npy(None, None, b"", header="[" * 3000), "not a valid .npy"),       # was: tokenize.TokenError
    (fuzz_files.npy(None, None, b"", header="{[]: 1}"), "not a valid .npy"),       # was: TypeError
    (fuzz_files.npy("<f4", (2,), b"\0" * 9), "too long"),                           # was: read, extra byte ignored
], ids=["huge-shape", "huge-itemsize", "shape-overflow", "bool-dim", "deep-header", "unhashable-header", "too-long"])
def test_load_checkpoint_refuses_lying_npy_headers(tmp_path, member, match):
    path = tmp_path / "c.npz"
    path.write_bytes(_zip({"model/w.npy": member, "meta.npy": _meta()}))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as info:
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and peak < 1 << 20


@pytest.mark.parametrize("members, method, match", [
    ({"model/w": b"raw bytes"}, zipfile.ZIP_STORED, "unexpected or duplicate entry 'model/w'"),  # was: bytes
    ({"model/w.npy": fuzz_files._npy_of(np.zeros(2))}, zipfile.ZIP_LZMA, "method 14"),  # was: 8 MB decoder
    ({"meta.npy": fuzz_files._npy_of(np.array("[" * 100_000))}, zipfile.ZIP_STORED, "corrupt checkpoint metadata"),
    ({"model/w.npy": fuzz_files._npy_of(np.array("text"))}, zipfile.ZIP_STORED, "holds text"),
], ids=["not-npy", "lzma", "deep-meta", "text-entry"])
def test_load_checkpoint_refuses_bad_entries(tmp_path, members, method, match):
    path = tmp_path / "c.npz"
    path.write_bytes(_zip({"meta.npy": _meta(), **members}, method))
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_checkpoint_refuses_encrypted_and_unknown_method_entries(tmp_path):
    """Zip flag bit 0 (encrypted; was RuntimeError) and an unknown method (was NotImplementedError)."""
    blob = _zip({"model/w.npy": fuzz_files._npy_of(np.zeros(2)), "meta.npy": _meta()})
    central = blob.index(b"PK\x01\x02")
    path = tmp_path / "c.npz"
    for offset, value in ((8, b"\x01\x00"), (10, b"\x63\x00")):
        damaged = bytearray(blob)
        damaged[central + offset:central + offset + 2] = value
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="encrypted or compressed with method") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_load_checkpoint_refuses_a_bare_npy_file(tmp_path):
    """np.load returned an ndarray for it, and the `with` around it raised TypeError."""
    path = tmp_path / "c.npz"
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "x.npy").replace(path)
    with pytest.raises(ValueError, match="does not start as a zip file"):
        load_checkpoint(path)


def test_load_checkpoint_reads_fortran_and_big_endian_entries(tmp_path):
    """The hand-written .npy reader keeps what np.load gave for valid files."""
    arrays = {"model/f": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
              "model/b": np.arange(4, dtype=">i4"), "optimizer/s": np.array(3.5), "scheduler/e": np.zeros((0, 2))}
    path = tmp_path / "c.npz"
    np.savez(path, meta=np.array(json.dumps({**META, "x": [1]})), **arrays)
    meta, parts = load_checkpoint(path)
    assert meta == {**META, "x": [1]}
    for key, expected in arrays.items():
        part, name = key.split("/")
        got = parts[part][name]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
