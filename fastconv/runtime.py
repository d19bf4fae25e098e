"""How fastconv's compiled kernels meet the process they run in.

**Compile notice.** Numba compiles a kernel on its first call after an install and caches it on disk
for later processes. The first time a process compiles one of fastconv's kernels, one line on stderr
says so (``FASTCONV_COMPILE_NOTICE=0`` silences it); ``fastconv warmup`` compiles them all ahead.

**One OpenMP level.** When Numba starts its OpenMP threading layer it turns nested parallelism on
(``omp_set_max_active_levels`` to the runtime's maximum). Only one GNU OpenMP runtime is loaded for
the soname ``libgomp.so.1``: once fastconv is imported (its Cython kernels load the system's), PyTorch
binds to the same runtime instead of its own copy and inherits the setting. Its training steps then
ran 2-2.5x slower (Adam's many small ``sqrt`` calls each started a nested thread team: 0.86 ms
instead of a few microseconds). fastconv sets the runtime back to one active level as soon as
Numba's threads are launched, which is the OpenMP default; nested ``prange`` loops then run their
inner loop serially. ``OMP_MAX_ACTIVE_LEVELS=N`` sets N levels instead, ``OMP_NESTED=true`` keeps
Numba's nesting.

**Freed memory kept (opt-in, on in the trainer).** A training step allocates its large arrays (outputs,
gradients) anew; glibc maps each from the OS and unmaps it when freed, so every step pays a page fault per
4 KiB it touches (600 per CIFAR CNN step; LeNet-5's step 6.4 ms with them, 4.1-5.0 without). ``keep_freed_memory()``
keeps freed memory in the process for the next step instead.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numba
from numba.core import event

NOTICE = ("fastconv: compiling kernels for this machine, once per install (a few seconds each, "
          "cached on disk afterwards; `fastconv warmup` compiles all of them ahead)")
_noticed = False
_openmp_checked = False


def _single_openmp_level() -> None:
    """Set the OpenMP runtime Numba threads with back to the levels the environment asks for: one (the
    OpenMP default), ``OMP_MAX_ACTIVE_LEVELS``, or Numba's nesting under ``OMP_NESTED=true``. Call only
    after Numba's threading layer is launched."""
    global _openmp_checked
    _openmp_checked = True
    levels = os.environ.get("OMP_MAX_ACTIVE_LEVELS", "").strip()
    if not levels and os.environ.get("OMP_NESTED", "").strip().lower() in ("true", "1"):
        return
    if numba.threading_layer() != "omp":
        return
    from numba.np.ufunc import omppool
    # a handle on Numba's OpenMP layer resolves the symbol in the runtime that layer is linked to
    ctypes.CDLL(omppool.__file__).omp_set_max_active_levels(int(levels) if levels.isdigit() else 1)


def _launched() -> bool:
    try:
        numba.threading_layer()
    except ValueError:  # Numba's threads are not launched yet
        return False
    return True


def num_threads() -> int:
    """Numba's thread count: the threads fastconv's kernels run with. Launches Numba's threading layer
    (as ``numba.get_num_threads`` does) with one OpenMP level."""
    count = numba.get_num_threads()
    if not _openmp_checked:
        _single_openmp_level()
    return count


def set_num_threads(count: int) -> None:
    """Run fastconv's kernels on `count` threads (1 to the cores Numba started with, ``NUMBA_NUM_THREADS``:
    the machine's by default); for the calling thread, as ``numba.set_num_threads``."""
    most = numba.config.NUMBA_NUM_THREADS
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, got {count!r}")
    if not 1 <= count <= most:
        raise ValueError(f"count must be between 1 and {most} (NUMBA_NUM_THREADS), got {count}")
    numba.set_num_threads(count)


class _Listener(event.Listener):
    """Numba's compile events: the compile notice, and the OpenMP level right after Numba launches its
    threads (which it does while it compiles or loads a parallel kernel, under its compiler lock)."""

    def on_start(self, ev: event.Event) -> None:
        global _noticed
        if _noticed or ev.kind != "numba:compile":
            return
        module = getattr(getattr(ev.data.get("dispatcher"), "py_func", None), "__module__", "") or ""
        if module.startswith("fastconv.kernels.") and os.environ.get("FASTCONV_COMPILE_NOTICE", "1") != "0":
            _noticed = True
            from tqdm import tqdm
            tqdm.write(NOTICE, file=sys.stderr)  # above any progress bar, which tqdm then redraws

    def on_end(self, ev: event.Event) -> None:
        if ev.kind == "numba:compiler_lock" and not _openmp_checked and _launched():
            _single_openmp_level()


_listener = _Listener()
event.register("numba:compile", _listener)
event.register("numba:compiler_lock", _listener)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEPT_BYTES = 1 << 30  # arrays up to this size come from (and return to) the process's heap when kept


def keep_freed_memory(enabled: bool = True) -> bool:
    """Whether memory freed by large arrays stays in the process for later allocations (glibc's malloc:
    ``mallopt`` raises M_MMAP_THRESHOLD to 1 GiB and M_TRIM_THRESHOLD to 2 GiB; False sets glibc's defaults
    back, 128 KiB each). The process then keeps its peak memory; in exchange a training step touches pages
    it already has instead of faulting in fresh ones. ``fastconv.train`` turns it on. Returns whether it took
    effect (False where the C library is not glibc)."""
    if not isinstance(enabled, (bool, int)):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mmap_threshold, trim_threshold = (KEPT_BYTES, 2 * KEPT_BYTES) if enabled else (128 * 1024, 128 * 1024)
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
