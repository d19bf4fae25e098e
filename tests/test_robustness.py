"""Memory limits, concurrency and float32 accuracy: requests that cannot fit are refused before
allocating, im2col keeps to its workspace cap, ops are safe and parallel from several Python threads,
and float32 results stay within the stated error bound of the float64 reference."""
import math
import os
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import fastconv as fc
from fastconv._checks import conv2d_shape
from fastconv.conv import CONV2D
from fastconv.config import release_scratch

COMPILED = [a.name for a in CONV2D.records("cpu") if not a.reference]  # every conv2d algorithm but the oracle

RNG = np.random.default_rng(11)
MiB = 2**20
U32 = 2.0**-24  # float32 unit roundoff


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def peak_bytes(fn) -> tuple[object, int]:
    """(fn(), the peak of NumPy/Python allocations during the call above what was held before)."""
    release_scratch()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return out, peak


# ---- memory -------------------------------------------------------------------------------------------

HUGE = np.broadcast_to(np.float32(1), (65536, 1, 1024, 1024))  # 256 GiB of float32 in a zero-stride view


@pytest.mark.parametrize("call", [
    lambda: fc.conv2d(HUGE, np.zeros((16, 1, 1, 1), np.float32)),
    lambda: fc.max_pool2d(HUGE, 1),
    lambda: fc.avg_pool2d_backward(HUGE, HUGE, 1),
    lambda: fc.gemm(np.broadcast_to(np.float32(1), (10**6, 1000)), np.broadcast_to(np.float32(1), (1000, 10**6))),
], ids=["conv2d", "max_pool2d", "avg_pool2d_backward", "gemm"])
def test_an_output_that_cannot_fit_is_refused_before_allocating(call):
    """The op refuses from the shapes alone, naming the size, and allocates nothing on the way."""
    def attempt():
        with pytest.raises(ValueError, match=r"would need [\d.]+ GiB, more than this machine's [\d.]+ GiB"):
            call()
    _, peak = peak_bytes(attempt)
    assert peak < MiB


def test_a_workspace_above_the_limit_is_refused_with_its_size():
    limit = fc.workspace_limit()
    try:
        fc.set_workspace_limit(MiB)
        with pytest.raises(ValueError, match=r"im2col needs [\d.]+ MiB of workspace for one image, above the "
                                             r"workspace limit of 1.0 MiB"):
            fc.conv2d(rand(1, 64, 32, 32), rand(8, 64, 3, 3), padding=1, algo="im2col")
    finally:
        fc.set_workspace_limit(limit)


@pytest.mark.parametrize("algo", ["im2col", "im2col_packed"])
def test_im2col_keeps_to_its_workspace_cap_on_a_large_layer(algo):
    """ResNet-like layer: its whole column matrix would be 58 MiB; with a 16 MiB cap the peak above the
    inputs is the output (forward) or the two gradients (backward) plus at most the cap."""
    x, w = rand(16, 32, 56, 56), rand(32, 32, 3, 3)
    y_bytes = x.nbytes  # 32 output channels, same plane
    cols = 32 * 9 * 56 * 56 * 16 * 4
    assert cols > 3 * 16 * MiB
    limit = fc.workspace_limit()
    fc.conv2d_backward(x[:1], x[:1], w, padding=1, algo=algo)  # compile first: compiling allocates too
    try:
        fc.set_workspace_limit(16 * MiB)
        y, peak = peak_bytes(lambda: fc.conv2d(x, w, padding=1, algo=algo))
        assert peak <= y_bytes + 16 * MiB + MiB, peak / MiB
        grads, peak = peak_bytes(lambda: fc.conv2d_backward(y, x, w, padding=1, algo=algo))
        assert peak <= x.nbytes + w.nbytes + 16 * MiB + MiB, peak / MiB
    finally:
        fc.set_workspace_limit(limit)
    np.testing.assert_allclose(y, fc.conv2d(x, w, padding=1, algo="direct"), rtol=2e-4, atol=2e-4)


# ---- concurrency --------------------------------------------------------------------------------------

def _calls() -> dict[str, object]:
    x, w, b = rand(4, 8, 12, 12), rand(8, 8, 3, 3), rand(8)
    gy = rand(4, 8, 12, 12)
    a, m = rand(70, 90), rand(90, 50)
    w_dw = rand(8, 1, 3, 3)  # for the records that take only depthwise layers

    def weights(algo: str) -> tuple[np.ndarray, int]:
        takes_w = CONV2D["cpu", algo].unsupported(conv2d_shape(x, w, 1, 1, 1, 1)) is None
        return (w, 1) if takes_w else (w_dw, 8)
    calls = {f"conv2d-{algo}": (lambda algo=algo: fc.conv2d(x, weights(algo)[0], b, padding=1, groups=weights(algo)[1],
                                                           algo=algo))
             for algo in COMPILED}
    calls.update({f"conv2d_backward-{algo}": (lambda algo=algo: fc.conv2d_backward(
                      gy, x, weights(algo)[0], padding=1, groups=weights(algo)[1], algo=algo))
                  for algo in COMPILED})
    calls.update({
        "max_pool2d": lambda: fc.max_pool2d(x, 3, 2, 1, return_indices=True),
        "max_pool2d_backward": lambda: fc.max_pool2d_backward(gy[:, :, :6, :6], x, 2),
        "avg_pool2d": lambda: fc.avg_pool2d(x, 3, 2, 1),
        "avg_pool2d_backward": lambda: fc.avg_pool2d_backward(gy[:, :, :6, :6], x, 2),
        "gemm-blas": lambda: fc.gemm(a, m, algo="blas"),
        "gemm-packed": lambda: fc.gemm(a, m, algo="packed"),
        "relu": lambda: fc.nn.ReLU()(x),
    })
    return calls


def _flat(result) -> list[np.ndarray]:
    return [np.asarray(r) for r in result] if isinstance(result, tuple) else [np.asarray(result)]


def test_ops_called_from_several_threads_match_the_single_threaded_results():
    """Every compiled op, 4 threads calling them all at once in shuffled orders: bitwise the same results."""
    calls = _calls()
    expected = {name: _flat(call()) for name, call in calls.items()}
    jobs = [name for _ in range(4) for name in calls]
    RNG.shuffle(jobs)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda name: (name, _flat(calls[name]())), jobs))
    for name, got in results:
        for g, e in zip(got, expected[name], strict=True):
            np.testing.assert_array_equal(g, e, err_msg=name)


def _longest_stall(work) -> tuple[float, float]:
    """(seconds `work` ran in a thread, the longest the main thread waited between two steps of a Python
    loop meanwhile): work holding the GIL stalls the loop for its whole run."""
    done = threading.Event()
    elapsed = []

    def run():
        numba.set_num_threads(1)
        t0 = time.perf_counter()
        work()
        elapsed.append(time.perf_counter() - t0)
        done.set()

    worker = threading.Thread(target=run)
    last, stall = time.perf_counter(), 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        stall, last = max(stall, now - last), now
    worker.join()
    return elapsed[0], stall


@pytest.mark.parametrize("name, make", [
    ("direct", lambda x, w: lambda: fc.conv2d(x, w, padding=1, algo="direct")),
    ("direct_simd", lambda x, w: lambda: fc.conv2d(x, w, padding=1, algo="direct_simd")),
    ("im2col_packed", lambda x, w: lambda: fc.conv2d(x, w, padding=1, algo="im2col_packed")),
    ("winograd", lambda x, w: lambda: fc.conv2d(x, w, padding=1, algo="winograd")),
    ("direct backward", lambda x, w: lambda: fc.conv2d_backward(x, x, w, padding=1, algo="direct")),
    ("max_pool2d", lambda x, w: lambda: fc.max_pool2d(x, 9, 1, 4)),
    ("gemm packed", lambda x, w: lambda: fc.gemm(x.reshape(-1, 1568)[:3072], x.reshape(1568, -1)[:, :3072],
                                                 algo="packed")),
])
def test_kernels_release_the_gil(name, make):
    """While one kernel call runs in another thread, a pure-Python loop keeps going: it never waits more
    than 30% of the call, or more than twice what it waits beside a thread that sleeps as long (the
    machine's own noise). A kernel holding the GIL would stop it for the whole call."""
    x, w = rand(128, 32, 28, 28), rand(32, 32, 3, 3)
    call = make(x, w)
    call()  # compile and warm up outside the measurement
    t0 = time.perf_counter()
    call()
    repeats = max(1, math.ceil(0.1 / (time.perf_counter() - t0)))  # fast kernels: several calls, >= 0.1 s

    def kernel():
        for _ in range(repeats):
            call()

    seconds, stall = _longest_stall(kernel)
    _, noise = _longest_stall(lambda: time.sleep(seconds))
    assert seconds > 0.05, f"{name}: the kernel ran too briefly ({seconds:.3f} s) to tell"
    assert stall < max(0.3 * seconds, 2 * noise + 0.01), \
        f"{name}: the Python loop stalled {stall:.3f} s during a {seconds:.3f} s kernel (noise {noise:.3f} s)"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_two_threads_run_kernels_in_parallel():
    """Two threads, each with one Numba thread, calling a kernel at once finish in under 1.8 times the time
    of one (best of five tries: the machine may be busy); run one after the other they would take twice
    as long. The kernel is direct's (LLVM-vectorised loops, well below the FMA peak): two virtual cores may be
    two hyperthreads of one physical core, which share its FMA units, so a kernel at the FMA peak (the packed
    GEMM: 2.03-2.18 on a busy 2-core VM) cannot run faster on two of them than on one; the GIL release of
    every kernel is test_kernels_release_the_gil's. The kernel is called on preallocated arrays: the ops
    around it also allocate their outputs (that is the allocator, not the GIL)."""
    from fastconv.kernels import conv_direct
    xp, w, b, y = rand(16, 32, 30, 30), rand(32, 32, 3, 3), rand(32), np.empty((16, 32, 28, 28), np.float32)

    def kernel():
        conv_direct.forward_padded(xp, w, b, y, 1, 1, 1, 1, 1)

    def one():
        numba.set_num_threads(1)
        for _ in range(10):
            kernel()

    one()
    ratios = []
    for _ in range(5):
        t0 = time.perf_counter()
        one()
        alone = time.perf_counter() - t0
        threads = [threading.Thread(target=one) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ratios.append((time.perf_counter() - t0) / alone)
    assert min(ratios) < 1.8, ratios


# ---- float32 accuracy ---------------------------------------------------------------------------------

def error_bound(n: int, abs_result: np.ndarray) -> np.ndarray:
    """The documented float32 bound: |y32 - y64| <= (n + 16) * 2^-24 * (the same op on |x| and |w|), where n
    is the reduction length (C/groups*R*S for conv2d, K for gemm); the 16 covers Winograd's transforms."""
    return (n + 16) * U32 * abs_result


@pytest.mark.parametrize("algo", COMPILED)
@pytest.mark.parametrize("c, r, groups", [(512, 3, 1), (4608, 1, 1), (1024, 3, 2)], ids=["512x3x3", "4608x1x1",
                                                                                        "1024x3x3-g2"])
def test_float32_conv2d_within_the_stated_bound_of_float64(algo, c, r, groups):
    """Reductions up to C*R*S = 4608 terms, on positive data and on signed data: within the stated bound,
    and in practice within 2*sqrt(n) units of |x|*|w| (measured: at most 62 for direct's sequential sums
    over 4608 terms, 36 for Winograd, 7 for im2col's blocked GEMM)."""
    why = CONV2D["cpu", algo].unsupported(conv2d_shape(rand(2, c, 6, 6), rand(4, c // groups, r, r), 1, r // 2, 1,
                                                        groups))
    if why is not None:
        pytest.skip(f"{algo} {why}")
    for x, w in ((np.abs(rand(2, c, 6, 6)), np.abs(rand(4, c // groups, r, r))),
                 (rand(2, c, 6, 6), rand(4, c // groups, r, r))):
        y32 = fc.conv2d(x, w, padding=r // 2, groups=groups, algo=algo)
        args = dict(padding=r // 2, groups=groups, algo="direct")
        y64 = fc.conv2d(x.astype(np.float64), w.astype(np.float64), **args)
        s = fc.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), **args)
        err = np.abs(y32 - y64)
        n = c // groups * r * r
        assert (err <= error_bound(n, s)).all(), (err / s).max()
        assert (err <= 2 * np.sqrt(n) * U32 * s).all(), f"error grew like n: {(err / s).max() / U32:.1f} ulps"


@pytest.mark.parametrize("algo", ["blas", "packed"])
def test_float32_gemm_within_the_stated_bound_of_float64(algo):
    a, b = rand(33, 4608), rand(4608, 17)
    c32 = fc.gemm(a, b, algo=algo)
    c64 = a.astype(np.float64) @ b.astype(np.float64)
    s = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    err = np.abs(c32 - c64)
    assert (err <= error_bound(4608, s)).all()
    assert (err <= 2 * np.sqrt(4608) * U32 * s).all(), (err / s).max() / U32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_finds_every_nan_and_inf(dtype):
    """The check behind conv2d's exact redo: every position of several blocks, each special value."""
    from fastconv.kernels import elementwise
    a = rand(3 * elementwise.BLOCK + 5, dtype=dtype)
    assert elementwise.all_finite(a) and elementwise.all_finite(a[:0])
    assert elementwise.all_finite(np.array([np.finfo(dtype).max, -np.finfo(dtype).max], dtype))
    for i in (0, elementwise.BLOCK - 1, elementwise.BLOCK, a.size - 1):
        for special in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[i] = special
            assert not elementwise.all_finite(b), (i, special)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_abs_max_is_the_largest_magnitude_and_inf_for_nan_and_inf(dtype):
    """The check behind conv2d's NaN/Inf and overflow guard (an integer max over the bits): equal to NumPy's
    max |a| on every block, signed zeros, subnormals and the float maximum; inf wherever a NaN or Inf sits."""
    from fastconv.conv import abs_max
    from fastconv.kernels import elementwise
    a = rand(3 * elementwise.BLOCK + 5, dtype=dtype)
    assert abs_max(a) == np.abs(a).max() and abs_max(a[:0]) == 0.0
    tiny, big = np.finfo(dtype).tiny / 4, np.finfo(dtype).max
    for values in ([-0.0, 0.0], [tiny, -tiny / 2], [big, -big], [-3.5, 2.0]):
        assert abs_max(np.array(values, dtype)) == np.abs(np.array(values, dtype)).max()
    for i in (0, elementwise.BLOCK - 1, elementwise.BLOCK, a.size - 1):
        for special in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[i] = special
            assert abs_max(b) == np.inf, (i, special)


def test_kernels_keep_packed_weights_only_for_unchanging_arrays():
    """config.kept_for: a read-only weight (down to its own memory or bytes) is packed once and the packed form
    dropped with it; a writeable weight, or a read-only view of a writeable one, is packed on every call, so writing
    to it changes the next result."""
    import gc
    from fastconv import config
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    for algo in ("direct_simd", "winograd", "im2col_packed"):
        w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
        expected = fc.conv2d(x, w, padding=1, algo=algo)
        frozen = w.copy()
        frozen.setflags(write=False)
        before = len(config._kept)
        np.testing.assert_array_equal(fc.conv2d(x, frozen, padding=1, algo=algo), expected)
        kept = {key: value for key, value in config._kept.items() if key[0] == id(frozen)}
        assert kept and len(config._kept) == before + len(kept)  # packed form (winograd: and max |w|)
        np.testing.assert_array_equal(fc.conv2d(x, frozen, padding=1, algo=algo), expected)
        assert all(config._kept[key] is value for key, value in kept.items())  # kept, not packed again
        del frozen, kept
        gc.collect()
        assert len(config._kept) == before
        view = w.view()
        view.setflags(write=False)
        assert not config.unchanging(view)
        fc.conv2d(x, view, padding=1, algo=algo)
        w *= 2  # through the writeable base: the view's next call must see it
        np.testing.assert_allclose(fc.conv2d(x, view, padding=1, algo=algo), 2 * expected, rtol=1e-5, atol=1e-5)
        assert len(config._kept) == before
    assert config.unchanging(np.frombuffer(b"\0" * 16, np.float32))


def test_an_unchanging_weight_holding_nan_is_rerouted_as_a_writeable_one():
    """The largest magnitude of an unchanging weight is kept; NaN in it still reroutes the algorithms that need
    finite weights (the same output, NaN pattern included, as for a writeable copy)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    w[2, 0, 1, 1] = np.nan
    frozen = w.copy()
    frozen.setflags(write=False)
    for _ in range(2):  # the second call reads the kept magnitude
        np.testing.assert_array_equal(fc.conv2d(x, frozen, padding=1, groups=6, algo="depthwise"),
                                      fc.conv2d(x, w, padding=1, groups=6, algo="depthwise"))
