"""Options, the records and the machine information of the benchmark suite.

    python -m pytest benchmarks -p no:cacheprovider --fc-size quick --fc-json out.json [-k EXPR] [--fc-op conv2d]

``--fc-size``: tiny (one small case per suite: keeps the harness from rotting), quick (a few
minutes), full (everything, the default); ``--fc-dtype``: float32 (default) or float64;
``--fc-device``: cpu (default: every module but test_cuda_bench.py) or cuda (test_cuda_bench.py alone);
``--fc-op``: only these suites (repeatable); ``--fc-threads``: threads of every library (default: Numba's
default, the machine's cores); ``--fc-json``: where to write the results (pytest-benchmark's JSON layout,
which ``fastconv report`` reads); ``--fc-worker-log``: a file for the workers' stderr; ``--fc-alone``:
check each group against fastconv auto, PyTorch and ONNX Runtime timed alone, spread over its rounds.

Every test item is one record, parametrized by a ``harness.Bench``; the records of one case and pass
form a group, measured together by ``harness.Harness`` when its first selected item runs (each library
in its own worker process, interleaved), so ``-k`` selects what is measured.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path

import numba
import pytest

import fastconv as fc

from .cases import PEERS, SIZES
from .harness import ALONE_IMPLS, PLANS, Bench, Entry, Harness, Result, library_of

OPS = ("conv2d", "max_pool2d", "avg_pool2d", "gemm", "train_step", "models")
VERSIONS = ("numpy", "numba", "llvmlite", "scipy", "torch", "onnxruntime", "onnx")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastconv benchmarks")
    group.addoption("--fc-size", choices=SIZES, default="full", help="case set: tiny, quick or full (default)")
    group.addoption("--fc-dtype", choices=("float32", "float64"), default="float32", help="dtype of every case")
    group.addoption("--fc-device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: the CPU suite (default); cuda: the GPU suite, test_cuda_bench.py")
    group.addoption("--fc-op", choices=OPS, action="append", help="run only this suite (repeatable)")
    group.addoption("--fc-threads", type=int, default=None, help="threads of every library (default: Numba's)")
    group.addoption("--fc-json", default=None, help="write the results to this JSON file")
    group.addoption("--fc-worker-log", default=None, help="append the worker processes' stderr to this file")
    group.addoption("--fc-alone", action="store_true",
                    help="also time fastconv auto, PyTorch and ONNX Runtime alone, each in a fresh process, three "
                         "times spread over each group's rounds (extra_info alone_s): a check of the harness")


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("fc_threads")
    if threads is not None and threads < 1:
        raise pytest.UsageError(f"--fc-threads must be at least 1, got {threads}")
    config.fc_records = []  # the records of the session, in the order measured


def pytest_ignore_collect(collection_path, config: pytest.Config) -> bool | None:
    """Collect the GPU module only with --fc-device cuda, and only it then."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return (collection_path.name == "test_cuda_bench.py") != (config.getoption("fc_device") == "cuda")
    return None


def _bench(item: pytest.Item) -> Bench | None:
    callspec = getattr(item, "callspec", None)
    bench = callspec.params.get("bench") if callspec else None
    return bench if isinstance(bench, Bench) else None  # an empty parametrization holds a placeholder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--fc-op: deselect the records of other suites."""
    ops = config.getoption("fc_op")
    if not ops:
        return
    keep, drop = [], []
    for item in items:
        bench = _bench(item)
        (keep if bench is None or bench.suite.removeprefix("cuda_") in ops else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Group the selected items: a group is measured as a whole when its first item runs."""
    session.fc_groups = {}
    for item in session.items:
        bench = _bench(item)
        if bench is not None:
            session.fc_groups.setdefault(bench.group, []).append(item)


@pytest.fixture(scope="session")
def fc_harness(pytestconfig: pytest.Config):
    log_path = pytestconfig.getoption("fc_worker_log")
    log = open(log_path, "a") if log_path else None
    threads = pytestconfig.getoption("fc_threads") or numba.config.NUMBA_NUM_THREADS
    harness = Harness(threads, PLANS[pytestconfig.getoption("fc_size")], log, pytestconfig.getoption("fc_device"))
    pytestconfig.fc_harness = harness
    yield harness
    harness.close()
    if log:
        log.close()


def _entry(harness: Harness, item: pytest.Item, bench: Bench, dtype: str) -> Entry:
    request = {"suite": bench.suite, "case": bench.run_case_dict, "pass": bench.pass_, "impl": bench.impl,
               "dtype": dtype, "device": bench.device}
    if bench.suite.endswith("train_step") and bench.impl == "pytorch":
        model = harness.model(bench.case, dtype)
        request["model"] = {"spec": model["spec"], "weights": model["weights"]}
    if bench.suite == "models":
        request["onnx_file"] = harness.network(bench.case, dtype)["path"]
    return Entry(item.nodeid, library_of(bench.impl), request)


def _stats(rounds: list[list[float]]) -> dict:
    """pytest-benchmark's stats of the timed calls (of the case run: ``scale`` times them to the whole case;
    without the calls themselves, hundreds of thousands in a full run), with each round's median
    (``round_medians``: how the machine drifted while the group was timed)."""
    data = sorted(s for r in rounds for s in r)
    q1, _, q3 = statistics.quantiles(data, n=4) if len(data) > 1 else (data[0],) * 3
    mean = statistics.fmean(data)
    return {"min": data[0], "max": data[-1], "mean": mean, "stddev": statistics.stdev(data) if len(data) > 1 else 0.0,
            "median": statistics.median(data), "q1": q1, "q3": q3, "iqr": q3 - q1, "rounds": len(data),
            "iterations": 1, "total": sum(data), "ops": 1 / mean if mean > 0 else None,
            "round_medians": [statistics.median(r) for r in rounds]}


@pytest.fixture
def fc_bench(request: pytest.FixtureRequest, fc_harness: Harness, fc_dtype: str):
    """``run(bench)``: the record of this test item, measured with the rest of its group (``harness``)."""
    def run(bench: Bench) -> None:
        session = request.session
        results = session.__dict__.setdefault("fc_results", {})
        item = request.node
        if item.nodeid not in results:
            group = session.fc_groups.get(bench.group, [item])
            entries = []
            for other in group:
                try:
                    entries.append(_entry(fc_harness, other, _bench(other), fc_dtype))
                except Exception as error:  # no model or network file: every record of the group says so
                    results[other.nodeid] = Result(error=error)
            results.update(fc_harness.measure(entries, ALONE_IMPLS if request.config.getoption("fc_alone") else ()))
        result = results.pop(item.nodeid)
        if result.error is not None:
            if getattr(result.error, "skip", False):
                pytest.skip(str(result.error))
            detail = getattr(result.error, "detail", "")
            pytest.fail(f"{result.error}\n{detail}", pytrace=False)
        request.config.fc_records.append(_record(item, bench, result, fc_dtype, fc_harness))
    return run


def _record(item: pytest.Item, bench: Bench, result: Result, dtype: str, harness: Harness) -> dict:
    """One record in pytest-benchmark's layout, ``extra_info`` as ``benchmarks/__init__.py`` states."""
    stats = _stats(result.rounds)
    flops = bench.flops
    extra = {}
    if bench.suite.endswith("train_step"):
        flops = bench.case.n * harness.model(bench.case, dtype)["flops_per_image"]
        extra["images"] = bench.case.n
    if bench.suite == "models":
        flops = harness.network(bench.case, dtype)["flops"]
        extra["images"] = bench.case.n
    compiled = bench.impl not in PEERS and library_of(bench.impl) == "fastconv"
    info = {"suite": bench.suite, "case": bench.case.name, "label": bench.case.label, "pass": bench.pass_,
            "impl": bench.impl, "peer": bench.impl in PEERS, "library": library_of(bench.impl), "flops": flops,
            "scale": bench.scale, "scaled_from": bench.scaled_from, "first_call_s": result.first_call_s,
            "compile_s": max(0.0, result.first_call_s - stats["median"]) if compiled else None,
            "peak_memory_bytes": result.peak_memory_bytes, "footprint_bytes": result.footprint_bytes,
            "threads": None if bench.device == "cuda" else (1 if bench.impl == "naive" else result.threads),
            "dtype": dtype, "device": bench.device, "is_peak": bench.is_peak, "alone_s": result.alone_s, **extra}
    return {"group": "-".join(bench.group), "name": item.name, "fullname": item.nodeid, "params": None,
            "param": item.callspec.id, "extra_info": info, "stats": stats,
            "options": {"timer": "time.perf_counter", "rounds": harness.plan.rounds, "block_s": harness.plan.block_s}}


@pytest.fixture(scope="session")
def fc_dtype(pytestconfig: pytest.Config) -> str:
    return pytestconfig.getoption("fc_dtype")


def _cpu_model_and_flags() -> tuple[str | None, dict[str, bool]]:
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, {flag: flag in flags for flag in CPU_FLAGS}


def _version(distribution: str) -> str | None:
    """The installed version of a distribution (without importing it), None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> dict:
    """The git commit of the fastconv source, when it is a checkout."""
    where = Path(fc.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode != 0:
        return {}
    return {"id": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def machine_info(config: pytest.Config) -> dict:
    """The CPU and its flags, threads, versions and the harness, under ``machine_info["fastconv"]``."""
    harness: Harness | None = getattr(config, "fc_harness", None)
    libraries = harness.started if harness else {}
    model, flags = _cpu_model_and_flags()
    plan = PLANS[config.getoption("fc_size")]
    info = {
        "cpu": model, "logical_cores": os.cpu_count(), "cpu_flags": flags,
        "threads": harness.threads if harness else None,
        "numba_threading_layer": libraries.get("fastconv", {}).get("threading_layer"),
        "python": platform.python_version(), "fastconv": fc.__version__,
        **{name: _version(name) for name in VERSIONS},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "size": config.getoption("fc_size"), "dtype": config.getoption("fc_dtype"),
        "harness": (f"each library in its own worker process ({', '.join(sorted(libraries)) or 'none started'}); "
                    f"per case and pass {plan.rounds} interleaved rounds of about {plan.block_s:g} s of calls per "
                    f"implementation, idle threads between blocks"),
    }
    if config.getoption("fc_device") == "cuda":
        info.update(_gpu_info(libraries))
    return {"node": platform.node(), "processor": platform.processor(), "machine": platform.machine(),
            "python_implementation": platform.python_implementation(), "python_version": platform.python_version(),
            "fastconv": info}


def _gpu_info(libraries: dict) -> dict:
    """The GPU, its driver and CUDA versions as the fastconv worker saw them, and PyTorch's GPU settings."""
    torch = "float32, TF32 off (matmul and cuDNN), cudnn.benchmark on" if "pytorch" in libraries else \
        "no PyTorch GPU worker in this run"
    return {**libraries.get("fastconv", {}).get("gpu", {}), "numba_cuda": _version("numba-cuda"), "torch_gpu": torch}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """--fc-json: write the records (pytest-benchmark's layout, which ``fastconv report`` reads)."""
    config = session.config
    path = config.getoption("fc_json")
    if path is None or not hasattr(config, "fc_records"):
        return
    import json
    results = {"machine_info": machine_info(config), "commit_info": _commit(), "benchmarks": config.fc_records,
               "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": "fastconv-harness-2"}
    Path(path).write_text(json.dumps(results, indent=1) + "\n")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """A table of the records: median time and samples per implementation, group by group."""
    records = getattr(config, "fc_records", [])
    if not records:
        return
    terminalreporter.section("fastconv benchmarks (median of the timed calls; each library in its own process)")
    for r in records:
        s, alone = r["stats"], r["extra_info"]["alone_s"]
        check = "" if alone is None else f", alone {alone * 1e3:.4f} ms: suite/alone {s['median'] / alone:.2f}"
        terminalreporter.write_line(f"{r['group']:<48} {r['extra_info']['impl']:<14} {s['median'] * 1e3:12.4f} ms "
                                    f"(IQR {s['iqr'] * 1e3:.4f} ms, {s['rounds']} calls{check})")
    drift = max((max(r["stats"]["round_medians"]) / min(r["stats"]["round_medians"]) for r in records
                 if min(r["stats"]["round_medians"]) > 0), default=math.nan)
    terminalreporter.write_line(f"largest spread of one record's round medians (the machine's drift): {drift:.2f}x")
