"""The measured choice behind ``algo="auto"``.

On the first call with a new problem (op, pass, shape, arguments, dtype, thread count) the
candidate algorithms are each run once to warm up (compiling or loading their kernels) and then
timed ``ROUNDS`` times; the fastest median wins and is remembered for the process. Problems
under ``MIN_FLOPS`` skip the timing (launch overheads and noise decide there) and take the
rule-based default. Choices persist in a JSON file, so a later process starts with them:
``$FASTCONV_AUTOTUNE_CACHE`` or ``~/.cache/fastconv/autotune.json``, keyed by the machine
(CPU model, threads) as well; ``set_autotune(False)`` turns timing off (the default rule then
decides), ``set_autotune(cache=None)`` keeps choices in memory only.
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from . import runtime


ROUNDS = 3
MIN_FLOPS = 5e6  # below about 0.05 ms of work, timing noise is larger than the differences

_enabled = True
_cache_path: Path | None = Path(os.environ.get("FASTCONV_AUTOTUNE_CACHE",
                                               Path.home() / ".cache" / "fastconv" / "autotune.json"))
_choices: dict[str, str] = {}
_loaded = False


def set_autotune(enabled: bool = True, cache: str | Path | None | bool = True) -> None:
    """Turn timing of candidates on or off; ``cache``: True keeps the current file, a path uses that
    file, None or False keeps choices in memory only. Clears the choices held in memory."""
    global _enabled, _cache_path, _loaded
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    _enabled = enabled
    if cache is None or cache is False:
        _cache_path = None
    elif cache is not True:
        _cache_path = Path(cache)
    _choices.clear()
    _loaded = False


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    from . import __version__
    return f"{cpu}|threads={runtime.num_threads()}|fastconv={__version__}"


def _load() -> None:
    global _loaded
    _loaded = True
    if _cache_path is None or not _cache_path.is_file():
        return
    try:
        stored = json.loads(_cache_path.read_text())
        mine = stored.get(_machine(), {}) if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        return  # an unreadable cache is only a lost optimisation: tune again
    _choices.update({k: v for k, v in mine.items() if isinstance(k, str) and isinstance(v, str)})


def _save(key: str, algo: str) -> None:
    if _cache_path is None:
        return
    try:
        stored = json.loads(_cache_path.read_text()) if _cache_path.is_file() else {}
        if not isinstance(stored, dict):
            stored = {}
    except (OSError, ValueError):
        stored = {}
    stored.setdefault(_machine(), {})[key] = algo
    try:
        _cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _cache_path.with_name(f"{_cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
        tmp.replace(_cache_path)
    except OSError:
        pass  # a read-only home only costs the next process a re-tune


def choices() -> dict[str, str]:
    """The choices made (or loaded) so far: problem key -> algorithm."""
    if not _loaded:
        _load()
    return dict(_choices)


def _seconds(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def choose(key: str, flops: float, default: str, candidates: dict[str, Callable[[], object]]) -> str:
    """The algorithm for problem `key`: remembered, else timed among `candidates` (name -> one call),
    else `default` when timing is off, the problem is small or there is one candidate."""
    if not _loaded:
        _load()
    if key in _choices:
        return _choices[key]
    if not _enabled or flops < MIN_FLOPS or len(candidates) < 2:
        return default
    timings: dict[str, float] = {}
    for name in sorted(candidates, key=lambda n: n != default):  # the default first sets the pace
        run = candidates[name]
        run()  # compile or load the kernels, fault in the buffers
        times = [_seconds(run)]
        if not timings or times[0] <= 2 * min(timings.values()):  # a clearly slower one is timed once
            times += [_seconds(run) for _ in range(ROUNDS - 1)]
        timings[name] = sorted(times)[len(times) // 2]
    best = min(timings, key=timings.get)
    _choices[key] = best
    _save(key, best)
    return best
