"""A benchmark worker process: times the calls of one library, alone in its process.

    python worker.py LIBRARY THREADS          # LIBRARY: fastconv, pytorch, onnxruntime or numpy
    python worker.py LIBRARY THREADS --alone REQUEST SECONDS

The suite (``harness.py``) starts one worker per library and sends it requests, one JSON object per line
on stdin; each reply is one JSON line on stdout (the libraries' own prints are sent to stderr). With
``--alone`` the worker times one ``prepare`` request's call (a JSON object) by itself, in a plain loop
for about SECONDS after two untimed calls, and prints ``{"median_s", "calls"}``: the reference that
``alone.py`` and ``--fc-alone`` check the suite's figures against. Run as a
script, never imported from the ``fastconv.benchmarks`` package: the PyTorch, ONNX Runtime and NumPy
workers then load neither fastconv nor Numba (and so neither's thread pools nor OpenMP runtime), and
the fastconv worker nothing of PyTorch's.

Requests (``op``): ``hello`` (the library's version, threads, pid and which of fastconv, numba, torch,
onnxruntime the process has loaded); ``prepare`` (build the measured call of one implementation on one
case; run it once, timed: ``first_call_s``, then once more measuring the peak resident memory the call
adds: ``peak_memory_bytes``, whose time is ``estimate_s``; ``footprint_bytes``: the peak resident memory that
building the call (a whole network: loading it) and its first run added to the process); ``time`` (run a prepared call ``calls``
times, each timed alone: ``seconds``); ``release``; ``export_model`` (fastconv only: a training case's
model for a PyTorch twin); ``exit``. After ``prepare`` and ``time`` the worker waits until its threads
are idle before it replies (thread pools spin for a while after work: OpenBLAS about 0.1 s, GNU
OpenMP's 300,000 pause iterations about 20 ms on a recent Intel core), so the next library timed,
in its own process, has the machine to itself.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np

import cases
import peers

LIBRARIES = ("fastconv", "pytorch", "onnxruntime", "numpy")
IDLE_WINDOW_S = 0.01  # settle: the threads are idle when they used under IDLE_SHARE of one core over a window
IDLE_SHARE = 0.1
SETTLE_LIMIT_S = 1.0


def settle() -> float:
    """Wait until this process's threads stop using the CPU (at most SETTLE_LIMIT_S); return the wait."""
    start = time.perf_counter()
    while time.perf_counter() - start < SETTLE_LIMIT_S:
        cpu0, t0 = time.process_time(), time.perf_counter()
        time.sleep(IDLE_WINDOW_S)
        if time.process_time() - cpu0 < IDLE_SHARE * (time.perf_counter() - t0):
            break
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def reset_peak() -> int | None:
    """The resident memory now (KiB), with the high-water mark set back to it (VmHWM reset through
    /proc/self/clear_refs after malloc_trim); None without /proc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def peak_since(before: int | None) -> int | None:
    """Bytes of resident memory reached above `before` (``reset_peak``'s figure) since then."""
    return None if before is None else max(0, _status_kib("VmHWM") - before) * 1024


def timed_call_with_peak(fn: Callable[[], object]) -> tuple[float, int | None]:
    """(seconds, peak bytes) of one call: resident memory reached above the level before the call."""
    before = reset_peak()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return seconds, peak_since(before)


def start_library(library: str, threads: int) -> dict:
    """Import `library` with `threads` threads; its version and thread count."""
    if library == "fastconv":
        import fastconv
        import numba
        threads = fastconv.runtime.num_threads()
        return {"version": fastconv.__version__, "threads": threads, "threading_layer": numba.threading_layer()}
    if library == "pytorch":
        import torch
        torch.set_num_threads(threads)
        return {"version": torch.__version__, "threads": torch.get_num_threads()}
    if library == "onnxruntime":
        import onnx  # noqa: F401  (builds the one-node graphs)
        import onnxruntime
        return {"version": onnxruntime.__version__, "threads": threads}
    if library == "numpy":
        return {"version": np.__version__, "threads": peers.blas_threads()}
    raise ValueError(f"LIBRARY must be one of {', '.join(LIBRARIES)}, got {library!r}")


def make_call(library: str, request: dict, threads: int) -> Callable[[], object]:
    """The measured call of a ``prepare`` request: suite, case, pass, impl, dtype, device (and for a
    PyTorch training step the twin's model: spec and weights file; for a whole network, "models", its
    ``onnx_file``)."""
    suite, pass_, impl, dtype = request["suite"], request["pass"], request["impl"], request["dtype"]
    device = request.get("device", "cpu")
    case = cases.case_from_dict(request["case"])
    op = suite.removeprefix("cuda_")
    if library == "fastconv":
        import fastconv_calls
        if op == "models":
            return fastconv_calls.network(case, request["onnx_file"], dtype)
        return fastconv_calls.make(suite, case, pass_, impl, dtype, device)
    if library == "pytorch":
        if op == "conv2d":
            return peers.torch_conv2d(pass_, *cases.conv_inputs(case, dtype), *case.args, device=device)
        if op in ("max_pool2d", "avg_pool2d"):
            return peers.torch_pool2d(op, pass_, *cases.pool_inputs(case, dtype), case.kernel, case.stride, device)
        if op == "gemm":
            return peers.torch_gemm(*cases.gemm_inputs(case, dtype), device)
        model = request["model"]
        with np.load(model["weights"]) as weights:
            state = {k: weights[k] for k in weights.files}
        return peers.torch_step(model["spec"], state, *cases.train_inputs(case, dtype), cases.TRAIN_LR, device)
    if library == "onnxruntime":
        if op == "models":  # graph optimizations on, spinning off (peers.onnxruntime_network)
            return peers.onnxruntime_network(request["onnx_file"], cases.network_inputs(case, dtype), threads)
        # ONNX Runtime's default: its idle pool threads spin. Alone in its process, with the harness waiting
        # for its threads to idle before the next library's block, that stands in no one's way; turned off
        # ("spinning": false) its small layers measured up to 16% slower (cifar2 2.15 against 1.81 ms)
        spinning = bool(request.get("spinning", True))
        if op == "conv2d" and pass_ == "forward":
            x, w, _ = cases.conv_inputs(case, dtype)
            return peers.onnxruntime_conv2d(x, w, *case.args, threads, spinning)
        if op in ("max_pool2d", "avg_pool2d") and pass_ == "forward":
            x, _ = cases.pool_inputs(case, dtype)
            return peers.onnxruntime_pool2d(op, x, case.kernel, case.stride, threads, spinning)
        if op == "gemm":
            return peers.onnxruntime_gemm(*cases.gemm_inputs(case, dtype), threads, spinning)
    if library == "numpy":
        if op == "conv2d":
            x, w, gy = cases.conv_inputs(case, dtype)
            if pass_ == "forward":
                return lambda: peers.conv2d_forward(x, w, *case.args)
            return lambda: peers.conv2d_backward(gy, x, w, *case.args)
        if op in ("max_pool2d", "avg_pool2d"):
            x, gy = cases.pool_inputs(case, dtype)
            if pass_ == "forward":
                return lambda: getattr(peers, op)(x, case.kernel, case.stride)
            return lambda: getattr(peers, op + "_backward")(gy, x, case.kernel, case.stride)
        if op == "gemm":
            a, b = cases.gemm_inputs(case, dtype)
            return lambda: a @ b
    raise ValueError(f"{library} has no {suite} {pass_} implementation")


def gpu_info() -> dict:
    """The GPU fastconv runs on: its name and compute capability, driver and CUDA versions."""
    from fastconv import device
    cuda = device.require_cuda()
    if device.simulated():
        return {"gpu": "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): timings are not GPU timings"}
    gpu = cuda.get_current_device()
    name = gpu.name.decode() if isinstance(gpu.name, bytes) else gpu.name
    return {"gpu": f"{name} (compute capability {'.'.join(map(str, gpu.compute_capability))})",
            "cuda_driver": ".".join(map(str, cuda.cudadrv.driver.driver.get_version())),
            "cuda_runtime": ".".join(map(str, cuda.runtime.get_version()))}


def loaded_libraries() -> list[str]:
    """Which of the libraries whose thread pools matter this process has imported."""
    return sorted(m for m in ("fastconv", "numba", "torch", "onnxruntime") if m in sys.modules)


def serve(library: str, threads: int, requests, replies) -> None:
    """Answer `requests` (lines of JSON) on `replies` until ``exit`` or end of input."""
    calls: dict[str, Callable[[], object]] = {}
    info = start_library(library, threads)
    for line in requests:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "exit":
                break
            if op == "hello":
                reply = {**info, "library": library, "pid": os.getpid(), "loaded": loaded_libraries()}
            elif op == "prepare":
                before = reset_peak()
                fn = calls[request["id"]] = make_call(library, request, threads)
                t0 = time.perf_counter()
                fn()
                first = time.perf_counter() - t0
                footprint = peak_since(before)
                estimate, peak = timed_call_with_peak(fn)
                reply = {"first_call_s": first, "estimate_s": estimate, "peak_memory_bytes": peak,
                         "footprint_bytes": footprint}
                settle()
            elif op == "time":
                fn = calls[request["id"]]
                seconds = []
                for _ in range(int(request["calls"])):
                    t0 = time.perf_counter()
                    fn()
                    seconds.append(time.perf_counter() - t0)
                reply = {"seconds": seconds, "settle_s": settle()}
            elif op == "release":
                calls.pop(request["id"], None)
                gc.collect()
                reply = {}
            elif op == "gpu" and library == "fastconv":
                reply = gpu_info()
            elif op == "export_model" and library == "fastconv":
                import fastconv_calls
                reply = fastconv_calls.export_model(cases.case_from_dict(request["case"]), request["dtype"],
                                                    request["path"])
            else:
                raise ValueError(f"unknown request {op!r} for the {library} worker")
            reply["ok"] = True
        except Exception as error:  # reported to the suite, which fails or skips that benchmark
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
                     "skip": isinstance(error, peers.Unsupported)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def alone(library: str, threads: int, request: dict, seconds: float) -> dict:
    """`request`'s call run by itself in a plain loop for about `seconds`: the median of its calls."""
    start_library(library, threads)
    fn = make_call(library, request, threads)
    fn()
    fn()
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 3:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(samples)), "calls": len(samples)}


def main(argv: list[str]) -> int:
    usage = (len(argv) not in (2, 5) or argv[0] not in LIBRARIES or not argv[1].isdigit() or int(argv[1]) < 1
             or (len(argv) == 5 and argv[2] != "--alone"))
    if usage:
        print(f"usage: worker.py {{{','.join(LIBRARIES)}}} THREADS [--alone REQUEST SECONDS]", file=sys.stderr)
        return 2
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    try:
        if len(argv) == 5:
            replies.write(json.dumps(alone(argv[0], int(argv[1]), json.loads(argv[3]), float(argv[4]))) + "\n")
            replies.flush()
            return 0
        serve(argv[0], int(argv[1]), sys.stdin, replies)
    except Exception:  # the library did not start: say why, as the one reply the suite waits for
        replies.write(json.dumps({"ok": False, "error": traceback.format_exc(limit=2).strip().splitlines()[-1],
                                  "traceback": traceback.format_exc()}) + "\n")
        replies.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
