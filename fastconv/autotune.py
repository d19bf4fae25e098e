"""The measured choice behind ``algo="auto"``.

On the first call with a new problem (op, pass, shape, arguments, dtype, thread count) the
candidate algorithms are each run once to warm up (compiling or loading their kernels) and then
timed ``ROUNDS`` times; the fastest (the smallest of each candidate's times: timing noise only ever adds, and
on a busy machine a median of three still carries it: it once picked a candidate 2.2x slower) wins and is
remembered for the process. Problems
under ``MIN_FLOPS`` skip the timing (launch overheads and noise decide there) and take the
rule-based default. Choices persist in a JSON file, so a later process starts with them:
``$FASTCONV_AUTOTUNE_CACHE`` or ``~/.cache/fastconv/autotune.json``, keyed by the machine
(CPU model, threads) as well; ``set_autotune(False)`` turns timing off (the default rule then
decides), ``set_autotune(cache=None)`` keeps choices in memory only.

The file is never trusted: a remembered choice is used only when it is one of the problem's
current candidates (anything else is timed afresh); the file is read only up to
``MAX_CACHE_BYTES`` and only as {machine: {problem: algorithm}} strings of bounded length; a damaged
file is moved aside to ``autotune.json.damaged`` with a warning. Writes merge into what is on disk
under an exclusive lock on ``autotune.json.lock`` (threads of one process take a lock too) and
replace the file atomically through a unique temporary file, so concurrent processes lose nothing.
Each machine keeps its ``MAX_ENTRIES`` latest choices, the file its ``MAX_MACHINES`` latest machines.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from . import runtime

try:
    import fcntl
except ImportError:  # not POSIX: threads of one process are still serialized, processes are not
    fcntl = None


ROUNDS = 3
MIN_FLOPS = 5e6  # below about 0.05 ms of work, timing noise is larger than the differences
MAX_CACHE_BYTES = 4 * 2**20
MAX_MACHINES = 16
MAX_ENTRIES = 10_000  # per machine: about 200 bytes each, so the file stays within MAX_CACHE_BYTES
MAX_KEY_CHARS = 400
MAX_NAME_CHARS = 64

_enabled = True
_cache_path: Path | None = Path(os.environ.get("FASTCONV_AUTOTUNE_CACHE",
                                               Path.home() / ".cache" / "fastconv" / "autotune.json"))
_choices: dict[str, str] = {}
_loaded = False
_lock = threading.RLock()  # _choices, _loaded and the file, within this process
_by_rule = 0  # by_rule blocks open in this process


def set_autotune(enabled: bool = True, cache: str | Path | None | bool = True) -> None:
    """Turn timing of candidates on or off; ``cache``: True keeps the current file, a path uses that
    file, None or False keeps choices in memory only. Clears the choices held in memory."""
    global _enabled, _cache_path, _loaded
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    if not (cache is None or isinstance(cache, (bool, str, os.PathLike))):
        raise TypeError(f"cache must be True, False, None or a path, got {cache!r}")
    with _lock:
        _enabled = enabled
        if cache is None or cache is False:
            _cache_path = None
        elif cache is not True:
            _cache_path = Path(cache)
        _choices.clear()
        _loaded = False


@contextlib.contextmanager
def by_rule() -> Iterator[None]:
    """Within the block, in every thread of the process, ``choose`` returns each op's rule's pick: it times
    nothing and reads no choice made or cached before, so that every process computes a problem with the same
    algorithm (``fastconv predict``, on one machine or a Dask cluster). The settings and choices stay as they
    were for after the block; blocks may nest and overlap."""
    global _by_rule
    with _lock:
        _by_rule += 1
    try:
        yield
    finally:
        with _lock:
            _by_rule -= 1


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    from . import __version__
    return f"{cpu}|threads={runtime.num_threads()}|fastconv={__version__}"


def read_cache(path: Path) -> dict[str, dict[str, str]]:
    """The cache file's {machine: {problem key: algorithm name}}; {} when there is no file.

    Raises ValueError naming the file when it is larger than MAX_CACHE_BYTES, not UTF-8 JSON, nested
    too deep, or not an object of objects of strings (keys up to MAX_KEY_CHARS, names up to
    MAX_NAME_CHARS characters). Which names are algorithms is for ``choose`` to decide."""
    try:
        with open(path, "rb") as f:  # read(n) allocates n bytes up front: ask for what the file holds
            blob = f.read(min(os.fstat(f.fileno()).st_size, MAX_CACHE_BYTES) + 1)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ValueError(f"{path}: unreadable autotune cache: {error}") from None
    if len(blob) > MAX_CACHE_BYTES:
        raise ValueError(f"{path}: the autotune cache is larger than {MAX_CACHE_BYTES} bytes")
    try:
        stored = json.loads(blob.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, too deep
        raise ValueError(f"{path}: the autotune cache is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(stored, dict) or not all(
            isinstance(machine, dict) and len(machine) <= MAX_ENTRIES
            and all(isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_KEY_CHARS and len(v) <= MAX_NAME_CHARS
                    for k, v in machine.items()) for machine in stored.values()):
        raise ValueError(f"{path}: the autotune cache is not an object of {{machine: {{problem: algorithm}}}} strings")
    return stored


def _set_aside(path: Path, why: ValueError) -> None:
    damaged = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, damaged)
        where = f"moved it to {damaged}"
    except OSError:
        where = "left it in place"
    warnings.warn(f"fastconv: {why}; {where} and timing the algorithms afresh", RuntimeWarning, stacklevel=4)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path.lock`` between processes (POSIX flock), and _lock between threads."""
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock_file:
            if fcntl is not None:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)


def _load() -> None:
    global _loaded
    _loaded = True
    if _cache_path is None:
        return
    try:
        mine = read_cache(_cache_path).get(_machine(), {})
    except ValueError as why:
        try:
            with _file_lock(_cache_path):
                try:  # another process may have repaired or replaced it meanwhile
                    mine = read_cache(_cache_path).get(_machine(), {})
                except ValueError as still:
                    _set_aside(_cache_path, still)
                    mine = {}
        except OSError:
            _set_aside(_cache_path, why)
            mine = {}
    _choices.update(mine)


def _save(key: str, algo: str) -> None:
    """Merge key -> algo into the file: read, update and replace it under the lock."""
    if _cache_path is None:
        return
    try:
        with _file_lock(_cache_path):
            try:
                stored = read_cache(_cache_path)
            except ValueError as why:
                _set_aside(_cache_path, why)
                stored = {}
            machine = _machine()
            mine = stored.pop(machine, {})
            mine.pop(key, None)
            mine[key] = algo  # latest last: trimming keeps the newest
            stored[machine] = dict(list(mine.items())[-MAX_ENTRIES:])  # this machine last, likewise
            stored = dict(list(stored.items())[-MAX_MACHINES:])
            fd, tmp = tempfile.mkstemp(prefix=_cache_path.name + ".", suffix=".tmp", dir=_cache_path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(stored, f, indent=1)
                os.replace(tmp, _cache_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError:
        pass  # a read-only home only costs the next process a re-tune


def choices() -> dict[str, str]:
    """The choices made (or loaded) so far: problem key -> algorithm."""
    with _lock:
        if not _loaded:
            _load()
        return dict(_choices)


def _seconds(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def choose(key: str, flops: float, default: str, candidates: dict[str, Callable[[], object]]) -> str:
    """The algorithm for problem `key` among `candidates` (name -> one call): remembered (only when it is
    one of `candidates`), else timed, else `default` when timing is off, the problem is small or there
    is one candidate."""
    with _lock:
        if _by_rule:
            return default
        if not _loaded:
            _load()
        remembered = _choices.get(key)
    if remembered in candidates:
        return remembered
    if not _enabled or flops < MIN_FLOPS or len(candidates) < 2:
        return default
    timings: dict[str, float] = {}
    for name in sorted(candidates, key=lambda n: n != default):  # the default first sets the pace
        run = candidates[name]
        run()  # compile or load the kernels, fault in the buffers
        times = [_seconds(run)]
        if not timings or times[0] <= 2 * min(timings.values()):  # a clearly slower one is timed once
            times += [_seconds(run) for _ in range(ROUNDS - 1)]
        timings[name] = min(times)
    best = min(timings, key=timings.get)
    with _lock:
        _choices[key] = best
        _save(key, best)
    return best
