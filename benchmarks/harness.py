"""The suite's measuring harness: every library in its own worker process, the peers interleaved.

The pytest process only orchestrates: it never runs a measured call. Each library runs in a worker
process of its own (``worker.py``): fastconv (its algorithms, "auto" and the naive loops), PyTorch,
ONNX Runtime and NumPy. Timing them in one process handicapped PyTorch: fastconv's Numba OpenMP layer
had turned on nested parallelism in the OpenMP runtime PyTorch shared with it (``fastconv/runtime.py``),
and any library's idle pool threads spin for a while after its calls, on the cores the next library needs.

``measure`` times one group (one case and pass, every selected implementation): each implementation
is prepared (built, called once for ``first_call_s``, once more for its peak memory), then timed in
``rounds`` rounds; in each round every implementation runs a block of calls of about ``block_s``
seconds, in an order rotated from round to round, so that drift on a shared machine hits all alike. A
worker answers only once its threads are idle, so no library's spinning pool overlaps another's block.

A record's time is the median of all its timed calls. The 2-core VMs this project measures on flip
between a fast state and one about 1.5x slower every fraction of a second to a few seconds, alike for
every library; rounds of short blocks, interleaved, make every implementation of a group sample those
states alike, so the medians compare fairly within a run. Times from two runs, or from a run and a
check made later, differ by as much as the machine drifted in between.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import select
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .cases import Case, Network, Train, case_to_dict, naive_slice

WORKER = Path(__file__).with_name("worker.py")
PEER_LIBRARY = {"naive": "fastconv", "numpy": "numpy", "pytorch": "pytorch", "onnxruntime": "onnxruntime"}
OPTIONAL = {"pytorch": ("torch",), "onnxruntime": ("onnxruntime", "onnx")}  # Python packages each peer needs
REPLY_TIMEOUT_S = 900.0  # one request: the slowest is a cold first call that compiles and autotunes


@dataclass(frozen=True)
class Plan:
    """How long each implementation of a group is timed: ``rounds`` rounds of blocks of about ``block_s``
    seconds (at least one call, at most ``max_calls``)."""
    rounds: int
    block_s: float
    max_calls: int = 200


PLANS = {"tiny": Plan(rounds=2, block_s=0.0), "quick": Plan(rounds=15, block_s=0.07),
         "full": Plan(rounds=15, block_s=0.07)}
ALONE_IMPLS = ("auto", "pytorch", "onnxruntime")  # what --fc-alone times again alone: fastconv's and the peers'
# --fc-alone times each of those records alone ALONE_CHECKS times, spread over the group's rounds (after
# every rounds/ALONE_CHECKS rounds), about ALONE_SECONDS each: a check made minutes later, or once at one
# moment, sees another mix of the VM's fast and slow states than the rounds did.
ALONE_CHECKS = 3
ALONE_SECONDS = 1.0



@dataclass(frozen=True)
class Bench:
    """One record of the suite: `impl` on `case` for one pass of `suite` (a "cuda_" prefix: the GPU suite),
    on `device`; ``is_peak`` marks the record whose GFLOP/s is the machine's practical peak."""
    suite: str
    case: Case
    pass_: str
    impl: str
    device: str = "cpu"
    is_peak: bool = False

    @property
    def group(self) -> tuple[str, str, str]:
        """The records measured together: every implementation of one case and pass."""
        return (self.suite, self.case.name, self.pass_)

    @property
    def _slice(self) -> tuple[Case, float, str | None]:
        if self.impl != "naive":
            return self.case, 1.0, None
        return naive_slice(self.suite, self.case, self.pass_)

    @property
    def run_case_dict(self) -> dict:
        """The case the worker runs: the whole case, or the naive loops' reduced slice."""
        return case_to_dict(self._slice[0])

    @property
    def scale(self) -> float:
        """From the measured time to the whole case's: 1, or the FLOP ratio of the naive slice."""
        return self._slice[1]

    @property
    def scaled_from(self) -> str | None:
        return self._slice[2]

    @property
    def flops(self) -> int | None:
        """The whole case's FLOPs for this pass (None for training steps and whole networks: the fastconv worker
        counts a training step's, ``Harness.network`` a network's)."""
        return None if isinstance(self.case, (Train, Network)) else self.case.flops(self.pass_)


def library_of(impl: str) -> str:
    """The worker library that runs `impl`: a peer's own, else fastconv."""
    return PEER_LIBRARY.get(impl, "fastconv")


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker process: every library's thread pool at `threads`."""
    return {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads)}


def time_alone(library: str, request: dict, threads: int, seconds: float) -> float:
    """The call of a ``prepare`` `request` timed by itself in a fresh process of `library`, in a plain loop of
    about `seconds` (``worker.py --alone``): the median of its calls."""
    done = subprocess.run([sys.executable, str(WORKER), library, str(threads), "--alone", json.dumps(request),
                           str(seconds)], capture_output=True, text=True, timeout=REPLY_TIMEOUT_S, env=worker_env(threads))
    if done.returncode != 0:
        raise WorkerError(f"timing {library} {request.get('impl')} alone failed", done.stderr[-3000:])
    return json.loads(done.stdout)["median_s"]


def missing(library: str) -> str | None:
    """Why `library`'s worker cannot start here (a package not installed), or None."""
    absent = [name for name in OPTIONAL.get(library, ()) if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    hint = "pip install torch==2.13.0" if "torch" in absent else "pip install onnx onnxruntime"
    return f"{' and '.join(absent)} not installed ({hint})"


class WorkerError(RuntimeError):
    """A worker's request failed; ``skip``: the peer cannot run this case here (no CUDA, no float64)."""

    def __init__(self, message: str, detail: str = "", skip: bool = False) -> None:
        super().__init__(message)
        self.detail, self.skip = detail, skip


class Worker:
    """One library's worker process, started with `threads` threads; ``info`` is its hello reply."""

    def __init__(self, library: str, threads: int, log: IO | None = None) -> None:
        self.library = library
        self.process = subprocess.Popen([sys.executable, str(WORKER), library, str(threads)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, text=True, env=worker_env(threads))
        self.info = self.request({"op": "hello"})

    def request(self, message: dict) -> dict:
        """Send one request and wait for its reply; WorkerError when it failed or the worker died."""
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker is gone: reading says why
        ready, _, _ = select.select([self.process.stdout], [], [], REPLY_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            raise WorkerError(f"the {self.library} worker stopped answering ({message.get('op')} request; exit code "
                              f"{self.process.wait()}): see its stderr")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(f"{self.library} worker: {reply['error']}", reply.get("traceback", ""),
                              bool(reply.get("skip")))
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                self.process.kill()


@dataclass
class Entry:
    """One record to measure: its id, the worker library and the ``prepare`` request."""
    key: str
    library: str
    request: dict


@dataclass
class Result:
    """What the harness measured for one entry (``error`` set instead when it failed or was skipped)."""
    rounds: list[list[float]] = field(default_factory=list)  # the seconds of each call, round by round
    first_call_s: float | None = None
    peak_memory_bytes: int | None = None
    footprint_bytes: int | None = None  # building the call and its first run (worker.py: prepare)
    threads: int | None = None
    alone: list[float] = field(default_factory=list)  # the same call's medians timed alone (--fc-alone)
    error: WorkerError | None = None

    @property
    def seconds(self) -> list[float]:
        """Every timed call's seconds, round after round."""
        return [s for r in self.rounds for s in r]

    @property
    def alone_s(self) -> float | None:
        """The median of the checks alone, None without them."""
        return statistics.median(self.alone) if self.alone else None


class Harness:
    """The worker processes of one suite run (started when first needed) and the measuring loop."""

    def __init__(self, threads: int, plan: Plan, log: IO | None = None, device: str = "cpu") -> None:
        self.threads, self.plan, self.log, self.device = threads, plan, log, device
        self.workers: dict[str, Worker] = {}
        self.started: dict[str, dict] = {}  # each library's hello reply, kept after the workers exit
        self.failed: dict[str, WorkerError] = {}
        self.models: dict[tuple, dict] = {}
        self.networks: dict[Network, dict] = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="fastconv-bench-")

    def worker(self, library: str) -> Worker:
        """The running worker of `library`; WorkerError (skip for an optional peer) when it cannot start."""
        if library in self.failed:
            raise self.failed[library]
        if library not in self.workers:
            reason = missing(library)
            try:
                if reason:
                    raise WorkerError(reason, skip=True)
                worker = self.workers[library] = Worker(library, self.threads, self.log)
                self.started[library] = dict(worker.info)
                if library == "fastconv" and self.device == "cuda":
                    self.started[library]["gpu"] = worker.request({"op": "gpu"})
            except WorkerError as error:
                error.skip = error.skip or library in OPTIONAL
                self.failed[library] = error
                raise
        return self.workers[library]

    def model(self, case: Train, dtype: str) -> dict:
        """A training case's model from the fastconv worker: ``spec``, ``weights`` (an .npz file) and
        ``flops_per_image``; made once per case and dtype."""
        key = (case, dtype)
        if key not in self.models:
            path = str(Path(self.tmp.name) / f"{case.name}-{dtype}.npz")
            reply = self.worker("fastconv").request({"op": "export_model", "case": case_to_dict(case), "dtype": dtype,
                                                     "path": path})
            self.models[key] = {"spec": reply["spec"], "weights": path, "flops_per_image": reply["flops_per_image"]}
        return self.models[key]

    def network(self, case: Network, dtype: str) -> dict:
        """A whole network's ONNX file, written once per case into this run's temporary folder
        (``onnx_models.prepared``: random weights, seed 0, at the case's batch): ``path`` and ``flops``.
        WorkerError with skip where it cannot run here: not float32 (the light models' dtype), no onnx."""
        if dtype != "float32":
            raise WorkerError(f"the ONNX models are float32: no {dtype} run of {case.name}", skip=True)
        if importlib.util.find_spec("onnx") is None:
            raise WorkerError("onnx not installed (pip install onnx): it reads the networks", skip=True)
        if case not in self.networks:
            from .onnx_models import prepared
            self.networks[case] = prepared(case.model, case.n, self.tmp.name)
        return self.networks[case]

    def measure(self, entries: list[Entry], alone: tuple[str, ...] = ()) -> dict[str, Result]:
        """Prepare every entry, then time them in interleaved rounds (see the module's docstring). The entries
        whose impl is in `alone` are also timed by themselves, each in a fresh process (``time_alone``), while
        every worker waits: ALONE_CHECKS times spread over the rounds, so that the check and the rounds see
        the machine in the same moods."""
        results: dict[str, Result] = {}
        calls: dict[str, int] = {}
        for e in entries:
            try:
                worker = self.worker(e.library)
                reply = worker.request({"op": "prepare", "id": e.key, **e.request})
            except WorkerError as error:
                results[e.key] = Result(error=error)
                continue
            results[e.key] = Result(first_call_s=reply["first_call_s"], peak_memory_bytes=reply["peak_memory_bytes"],
                                    footprint_bytes=reply.get("footprint_bytes"), threads=worker.info["threads"])
            calls[e.key] = min(self.plan.max_calls,
                               max(1, math.ceil(self.plan.block_s / max(reply["estimate_s"], 1e-9))))
        order = [e for e in entries if e.key in calls]
        checks = {self.plan.rounds * (i + 1) // ALONE_CHECKS for i in range(ALONE_CHECKS)} if alone else set()
        for round_ in range(self.plan.rounds):
            shift = round_ % max(1, len(order))
            for e in order[shift:] + order[:shift]:
                if results[e.key].error is not None:
                    continue
                try:
                    reply = self.workers[e.library].request({"op": "time", "id": e.key, "calls": calls[e.key]})
                    results[e.key].rounds.append(reply["seconds"])
                except WorkerError as error:
                    results[e.key].error = error
            if round_ + 1 in checks:
                self._check_alone([e for e in order if e.request["impl"] in alone], results)
        for e in order:
            if e.library in self.workers and self.workers[e.library].process.poll() is None:
                try:
                    self.workers[e.library].request({"op": "release", "id": e.key})
                except WorkerError:
                    pass
        return results

    def _check_alone(self, entries: list[Entry], results: dict[str, Result]) -> None:
        for e in entries:
            if results[e.key].error is None:
                try:
                    results[e.key].alone.append(time_alone(e.library, e.request, self.threads, ALONE_SECONDS))
                except WorkerError as error:
                    results[e.key].error = error

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers.clear()
        self.tmp.cleanup()
