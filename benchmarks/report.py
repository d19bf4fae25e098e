"""Report renderer of fastconv's benchmark suite.

Reads the pytest-benchmark JSON that ``fastconv bench`` writes (our figures under each record's
``extra_info``, contract in this package's docstring) and turns it into:

- :func:`rows`: one flat row per benchmark with the derived figures (time, GFLOP/s, % of peak,
  speed-up over naive and NumPy, ratios to PyTorch and ONNX Runtime, images/s of training steps and whole
  networks, memory, compile time, the spread of the timed calls and whether it makes the record noisy);
- :func:`headline`: the few numbers that summarise a run;
- :func:`render`: ``report.md``, ``report.html`` (standalone: inline CSS, no JS; wide tables scroll in their
  own box) and PNG plots (:func:`speedup_figure`, :func:`conv_gflops_figure`, :func:`gemm_figure`), the
  report opening with a warning when records are noisy;
- :func:`compare`: two runs side by side, with the regressions of fastconv's own implementations.

matplotlib is optional: without it :func:`render` writes the two reports and no plots.
"""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .cases import BATCH1_SUFFIX, CONV, NETWORK_MODELS, is_batch1

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PEERS = ("naive", "numpy", "pytorch", "onnxruntime")
SUITES = ("conv2d", "max_pool2d", "avg_pool2d", "gemm", "train_step", "models")
GPU_SUITES = tuple("cuda_" + s for s in SUITES if s != "models")  # the GPU suite's records (--device cuda)
PASSES = ("forward", "backward")
MODELS = ("lenet5", "cifar_cnn", "resnet20", "resnext_cifar")  # train_step cases: a model, "-bN" for batch N
NETWORKS = tuple(prefix for prefix, _, _ in NETWORK_MODELS)  # "models" cases: a network, "-bN" for batch N
CONV_LAYERS = tuple(c.name for c in CONV if not is_batch1(c.name))  # each also has its batch-1 twin
IMPLS = ("direct", "direct_simd", "im2col", "im2col_packed", "winograd", "winograd_4x4", "depthwise", "window_2x2",
         "blas", "packed", "auto", "naive", "numpy", "pytorch", "onnxruntime")
IMPL_NAMES = {"naive": "naive", "numpy": "NumPy", "pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}
SUITE_TITLES = {"conv2d": "conv2d", "max_pool2d": "max_pool2d", "avg_pool2d": "avg_pool2d", "gemm": "GEMM",
                "train_step": "training step"}
SUITE_TITLES.update({"cuda_" + s: f"GPU {t}" for s, t in SUITE_TITLES.items()})
SUITE_TITLES["models"] = "Whole networks"
GPU_TARGETS = {"gemm": 0.5, "conv_forward": 0.3}  # fractions of cuBLAS / cuDNN throughput (the GPU issue)
GPU_TARGET_LAYERS = ("resnet", "vgg")
REQUIRED_KEYS = ("suite", "case", "pass", "impl", "flops")
DEFAULT_DTYPE = "float32"
PLOT_DPI = 110
COLORS = {"direct": "#1f77b4", "direct_simd": "#bcbd22", "im2col": "#ff7f0e", "im2col_packed": "#2ca02c",
          "winograd": "#e377c2", "winograd_4x4": "#f7b6d2", "depthwise": "#17becf", "window_2x2": "#aec7e8",
          "blas": "#ff7f0e", "packed": "#2ca02c", "auto": "#393b79", "naive": "#7f7f7f", "numpy": "#9467bd",
          "pytorch": "#d62728", "onnxruntime": "#8c564b"}
OTHER_COLOR = "#000000"
# A record is noisy when the interquartile range of its timed calls exceeds this fraction of their median
# (a quiet 2-core VM: about 15% typically, above 50% for 2-9% of a run's records, mostly the naive peers).
NOISY_SPREAD = 0.5

Row = dict[str, Any]


# ----------------------------------------------------------------------------------------- loading

def load(path: str | Path) -> dict:
    """Parse a fastconv benchmark JSON (a file, or a run folder holding ``results.json``).

    Raises ``ValueError`` naming what is wrong when the file is not JSON or not a fastconv
    benchmark JSON (pytest-benchmark's layout with our ``extra_info`` on every record).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a fastconv benchmark JSON: not valid JSON ({exc})") from exc
    _validate(data, str(path))
    return data


def _validate(data: Any, source: str) -> None:
    """Raise ``ValueError`` unless ``data`` follows the suite's JSON contract."""
    def fail(why: str) -> None:
        raise ValueError(f"{source} is not a fastconv benchmark JSON: {why} "
                         "(expected pytest-benchmark's JSON written by `fastconv bench`)")

    if not isinstance(data, dict):
        fail(f"the top level is a {type(data).__name__}, not an object")
    benchmarks = data.get("benchmarks")
    if not isinstance(benchmarks, list):
        fail('it has no "benchmarks" list')
    machine = data.get("machine_info")
    if not benchmarks and not (isinstance(machine, dict) and isinstance(machine.get("fastconv"), dict)):
        fail('its "benchmarks" list is empty and it has no machine_info["fastconv"]')
    for i, bench in enumerate(benchmarks):
        name = bench.get("name", f"#{i}") if isinstance(bench, dict) else f"#{i}"
        if not isinstance(bench, dict):
            fail(f"benchmark {name} is not an object")
        info = bench.get("extra_info")
        if not isinstance(info, dict):
            fail(f"benchmark {name!r} has no extra_info")
        missing = [key for key in REQUIRED_KEYS if key not in info]
        if missing:
            fail(f"benchmark {name!r} lacks extra_info keys {', '.join(missing)}")
        median = (bench.get("stats") or {}).get("median")
        if not isinstance(median, (int, float)) or isinstance(median, bool):
            fail(f"benchmark {name!r} has no numeric stats.median")


# -------------------------------------------------------------------------------------------- rows

def _ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either is missing or the denominator is not positive."""
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _order(values: Iterable[str], canonical: Iterable[str]) -> list[str]:
    """Distinct ``values``: those in ``canonical`` first, in its order, then the others as met."""
    values = list(dict.fromkeys(values))
    canonical = list(canonical)
    return [v for v in canonical if v in values] + [v for v in values if v not in canonical]


def _case_key(case: str) -> tuple:
    """Sort key of a case id: conv layers in the suite's order (batch-1 twins after), pooling by layer then window,
    square GEMMs by size then the im2col GEMMs by layer, training steps by model, whole networks by network then
    batch."""
    def layer(name: str) -> int:
        return CONV_LAYERS.index(name) if name in CONV_LAYERS else len(CONV_LAYERS)

    if case.removesuffix(BATCH1_SUFFIX) in CONV_LAYERS:  # the layers at their batch, then their batch-1 twins
        return (0, is_batch1(case), layer(case.removesuffix(BATCH1_SUFFIX)), case)
    m = re.fullmatch(r"pool-(.+)-(\d+)x(\d+)s(\d+)", case)
    if m:
        return (1, layer(m.group(1)), m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
    m = re.fullmatch(r"gemm-(\d+)", case)
    if m:
        return (2, int(m.group(1)))
    m = re.fullmatch(r"gemm-im2col-(.+)", case)
    if m:
        return (3, layer(m.group(1)), m.group(1))
    if case.split("-")[0] in MODELS:
        return (4, MODELS.index(case.split("-")[0]), case)
    m = re.fullmatch(r"(.+)-b(\d+)", case)
    if m and m.group(1) in NETWORKS:
        return (5, NETWORKS.index(m.group(1)), int(m.group(2)))
    return (6, case)


def _row_key(row: Row) -> tuple:
    order = SUITES + GPU_SUITES
    suite = order.index(row["suite"]) if row["suite"] in order else len(order)
    pass_ = PASSES.index(row["pass"]) if row["pass"] in PASSES else len(PASSES)
    impl = IMPLS.index(row["impl"]) if row["impl"] in IMPLS else len(IMPLS)
    return (suite, row["suite"], row["dtype"] != DEFAULT_DTYPE, row["dtype"], pass_, row["pass"],
            _case_key(row["case"]), impl, row["impl"])


def rows(results: dict) -> list[Row]:
    """One row per benchmark, sorted by suite, dtype, pass, case and implementation.

    Keys: suite, case, label, pass, impl, peer, dtype, time_s (stats median * scale), scaled,
    scaled_from, flops, gflops, pct_peak (percent of the ``is_peak`` record's fastest-round GFLOP/s),
    speedup_naive and speedup_numpy (peer time / this time), ratio_pytorch and ratio_onnxruntime (the
    peer's time / this time: > 1 means faster than that peer), images and images_per_s (training steps and
    whole networks; None elsewhere),
    peak_memory_bytes, footprint_bytes (building the call and its first run: a whole network's memory), compile_s,
    first_call_s, threads, rounds, spread (the interquartile range of the
    timed calls over their median) and noisy (spread above NOISY_SPREAD), is_peak, name. Peers are matched
    on (suite, case, pass, dtype); a missing peer or figure is None.
    """
    _validate(results, "results")
    out: list[Row] = []
    for bench in results["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        scale = float(info.get("scale") or 1.0)
        time_s = float(stats["median"]) * scale
        best_s = float(stats.get("min") or stats["median"]) * scale
        flops = info.get("flops")
        images = info.get("images")
        impl = str(info["impl"])
        iqr = stats.get("iqr")
        spread = iqr / stats["median"] if isinstance(iqr, (int, float)) and stats["median"] > 0 else None
        out.append({
            "suite": str(info["suite"]),
            "case": str(info["case"]),
            "label": str(info.get("label") or info["case"]),
            "pass": str(info["pass"]),
            "impl": impl,
            "peer": bool(info.get("peer", impl in PEERS)),
            "dtype": str(info.get("dtype") or DEFAULT_DTYPE),
            "time_s": time_s,
            "scaled": scale != 1.0 or bool(info.get("scaled_from")),
            "scaled_from": info.get("scaled_from"),
            "flops": flops,
            "gflops": flops / time_s / 1e9 if flops and time_s > 0 else None,
            "pct_peak": None,
            "speedup_naive": None,
            "speedup_numpy": None,
            "ratio_pytorch": None,
            "ratio_onnxruntime": None,
            "images": images,
            "images_per_s": images / time_s if images and time_s > 0 else None,
            "peak_memory_bytes": info.get("peak_memory_bytes"),
            "footprint_bytes": info.get("footprint_bytes"),
            "compile_s": info.get("compile_s"),
            "first_call_s": info.get("first_call_s"),
            "threads": info.get("threads"),
            "rounds": stats.get("rounds"),
            "spread": spread,
            "noisy": spread is not None and spread > NOISY_SPREAD,
            "is_peak": bool(info.get("is_peak")),
            "peak_gflops": flops / best_s / 1e9 if info.get("is_peak") and flops and best_s > 0 else None,
            "name": bench.get("name"),
            "device": str(info.get("device") or "cpu"),
            "alone_ratio": _ratio(time_s / scale, info.get("alone_s")),
        })
    peak = max((r["peak_gflops"] for r in out if r["peak_gflops"]), default=None)
    peers: dict[tuple, dict[str, float]] = {}
    for r in out:
        times = peers.setdefault((r["suite"], r["case"], r["pass"], r["dtype"]), {})
        if r["impl"] in PEERS:
            times[r["impl"]] = min(times.get(r["impl"], math.inf), r["time_s"])
    for r in out:
        times = peers[(r["suite"], r["case"], r["pass"], r["dtype"])]
        r["speedup_naive"] = _ratio(times.get("naive"), r["time_s"])
        r["speedup_numpy"] = _ratio(times.get("numpy"), r["time_s"])
        r["ratio_pytorch"] = _ratio(times.get("pytorch"), r["time_s"])
        r["ratio_onnxruntime"] = _ratio(times.get("onnxruntime"), r["time_s"])
        if peak and r["gflops"] is not None and r["suite"] not in GPU_SUITES:  # the peak is the CPU's
            r["pct_peak"] = 100.0 * r["gflops"] / peak
    out.sort(key=_row_key)
    return out


# ---------------------------------------------------------------------------------------- headline

def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _main_dtype(all_rows: list[Row]) -> str:
    """The dtype the headline and plots use: float32 when present, else the commonest."""
    dtypes = [r["dtype"] for r in all_rows]
    if not dtypes or DEFAULT_DTYPE in dtypes:
        return DEFAULT_DTYPE
    return max(set(dtypes), key=dtypes.count)


def _headline_from_rows(all_rows: list[Row]) -> dict:
    dtype = _main_dtype(all_rows)
    out: dict[str, Any] = {"dtype": dtype}
    for column, pass_, batch1 in (("forward", "forward", False), ("backward", "backward", False),
                                  ("forward_batch1", "forward", True)):
        auto = [r for r in all_rows if r["suite"] == "conv2d" and r["impl"] == "auto"
                and r["pass"] == pass_ and r["dtype"] == dtype and is_batch1(r["case"]) == batch1]
        with_torch = [r for r in auto if r["ratio_pytorch"] is not None]
        with_ort = [r for r in auto if r["ratio_onnxruntime"] is not None]
        with_naive = [r for r in auto if r["speedup_naive"] is not None]

        def pick(row: Row | None, key: str) -> dict | None:
            return None if row is None else {"case": row["case"], "label": row["label"], key: row[key]}

        best = max(with_torch, key=lambda r: r["ratio_pytorch"], default=None)
        worst = min(with_torch, key=lambda r: r["ratio_pytorch"], default=None)
        low = min(with_naive, key=lambda r: r["speedup_naive"], default=None)
        high = max(with_naive, key=lambda r: r["speedup_naive"], default=None)
        out[column] = {
            "layers": len(auto),
            "layers_with_pytorch": len(with_torch),
            "ratio_pytorch_geomean": _geomean([r["ratio_pytorch"] for r in with_torch]),
            "best": pick(best, "ratio_pytorch"),
            "worst": pick(worst, "ratio_pytorch"),
            "layers_with_onnxruntime": len(with_ort),
            "ratio_onnxruntime_geomean": _geomean([r["ratio_onnxruntime"] for r in with_ort]),
            "worst_onnxruntime": pick(min(with_ort, key=lambda r: r["ratio_onnxruntime"], default=None),
                                      "ratio_onnxruntime"),
            "speedup_naive_geomean": _geomean([r["speedup_naive"] for r in with_naive]),
            "speedup_naive_min": pick(low, "speedup_naive"),
            "speedup_naive_max": pick(high, "speedup_naive"),
        }
    out["train_step"] = [{k: r[k] for k in ("case", "label", "images", "time_s", "images_per_s", "ratio_pytorch",
                                            "noisy")}
                         for r in all_rows if r["suite"] == "train_step" and r["impl"] == "auto"
                         and r["dtype"] == dtype]
    out["networks"] = _networks_by_batch([r for r in all_rows if r["suite"] == "models" and r["dtype"] == dtype])
    out["cuda"] = _gpu_headline(all_rows, dtype)
    checked = [r for r in all_rows if r["alone_ratio"] is not None and r["dtype"] == dtype]
    out["alone"] = None if not checked else {
        "records": len(checked), "within_15pct": sum(abs(r["alone_ratio"] - 1) <= 0.15 for r in checked),
        "ratio_median": sorted(r["alone_ratio"] for r in checked)[len(checked) // 2],
        "ratio_min": min(r["alone_ratio"] for r in checked), "ratio_max": max(r["alone_ratio"] for r in checked),
        "by_impl": {impl: _geomean([r["alone_ratio"] for r in checked if r["impl"] == impl])
                    for impl in _order((r["impl"] for r in checked), IMPLS)}}
    peak = next((r for r in all_rows if r["peak_gflops"]), None)
    out["peak_gflops"] = peak["peak_gflops"] if peak else None
    out["peak_record"] = ({k: peak[k] for k in ("suite", "case", "impl", "dtype", "label")}
                          if peak else None)
    groups: dict[tuple, set[str]] = {}
    for r in all_rows:
        groups.setdefault((r["suite"], r["case"], r["pass"], r["dtype"]), set()).add(r["impl"])
    out["counts"] = {
        "benchmarks": len(all_rows),
        "by_suite": {s: sum(r["suite"] == s for r in all_rows)
                     for s in _order((r["suite"] for r in all_rows), SUITES)},
        "cases": len({(r["suite"], r["case"]) for r in all_rows}),
        "conv_layers": len({r["case"] for r in all_rows if r["suite"] == "conv2d"}),
        "scaled": sum(r["scaled"] for r in all_rows),
        "groups": len(groups),
        "groups_without_pytorch": sum("pytorch" not in impls for impls in groups.values()),
    }
    return out


def _networks_by_batch(sel: list[Row]) -> list[dict]:
    """Per batch size of the whole networks in `sel`, smallest first: ``{images, networks, with_onnxruntime,
    ratio_onnxruntime_geomean}``, over fastconv's (auto) records: how many networks, how many also ran on ONNX
    Runtime, and the geometric mean of their ratios to it (None without any)."""
    out = []
    for images in sorted({r["images"] for r in sel if r["impl"] == "auto"}):
        ours = [r for r in sel if r["impl"] == "auto" and r["images"] == images]
        ratios = [r["ratio_onnxruntime"] for r in ours if r["ratio_onnxruntime"] is not None]
        out.append({"images": images, "networks": len(ours), "with_onnxruntime": len(ratios),
                    "ratio_onnxruntime_geomean": _geomean(ratios)})
    return out


def _gpu_headline(all_rows: list[Row], dtype: str) -> dict | None:
    """The GPU suite against its targets, None without GPU records. ``gemm``: the tiled GEMM's fraction of
    cuBLAS throughput (PyTorch time / ours) at the largest square size; ``conv_forward``: per ResNet/VGG
    layer, the best fastconv GPU algorithm's fraction of cuDNN's forward throughput; ``train_step``:
    fastconv's GPU training steps with the CPU path's images/s on the same batch (the suite's "cpu"
    record), else the CPU suite's figure for that model in the same file, else None."""
    gpu = [r for r in all_rows if r["suite"] in GPU_SUITES and r["dtype"] == dtype]
    if not gpu:
        return None
    squares = [r for r in gpu if r["suite"] == "cuda_gemm" and re.fullmatch(r"gemm-\d+", r["case"])
               and not r["peer"] and r["impl"] != "auto"]
    largest = max(squares, key=lambda r: _case_key(r["case"]), default=None)
    conv = {}
    for case in GPU_TARGET_LAYERS:
        ours = [r for r in gpu if r["suite"] == "cuda_conv2d" and r["case"] == case and r["pass"] == "forward"
                and not r["peer"] and r["ratio_pytorch"] is not None]
        best = max(ours, key=lambda r: r["ratio_pytorch"], default=None)
        conv[case] = None if best is None else {"impl": best["impl"], "fraction": best["ratio_pytorch"]}
    steps = []
    for r in gpu:
        if r["suite"] != "cuda_train_step" or r["impl"] != "auto":
            continue
        model = re.sub(r"-b\d+$", "", r["case"])
        cpu = next((c for c in gpu if c["suite"] == "cuda_train_step" and c["case"] == r["case"]
                    and c["impl"] == "cpu"), None) or \
            next((c for c in all_rows if c["suite"] == "train_step" and c["impl"] == "auto" and c["dtype"] == dtype
                  and re.sub(r"-b\d+$", "", c["case"]) == model), None)
        steps.append({"case": r["case"], "images": r["images"], "images_per_s": r["images_per_s"],
                      "ratio_pytorch": r["ratio_pytorch"],
                      "cpu_images": None if cpu is None else cpu["images"],
                      "cpu_images_per_s": None if cpu is None else cpu["images_per_s"]})
    return {"gemm": None if largest is None else {"case": largest["case"], "impl": largest["impl"],
                                                  "fraction": largest["ratio_pytorch"]},
            "conv_forward": conv, "train_step": steps}


def _gpu_headline_blocks(gpu: dict | None) -> list[tuple]:
    """The GPU headline: fractions of cuBLAS/cuDNN throughput and the training step, against the targets."""
    if gpu is None:
        return []

    def fraction(entry: dict | None, target: float) -> str:
        if entry is None or entry["fraction"] is None:
            return "- (no PyTorch GPU peer in this run)"
        met = "met" if entry["fraction"] >= target else "not met"
        return f"{fmt_pct(100 * entry['fraction'])} ({entry['impl']}; target {target:.0%}: {met})"

    g = gpu["gemm"]
    items = [[("b", "GPU GEMM vs cuBLAS:"), ("text", " -" if g is None else f" {g['case']}: "
                                          + fraction(g, GPU_TARGETS["gemm"]))]]
    conv = "; ".join(f"{case}: {fraction(e, GPU_TARGETS['conv_forward'])}" for case, e in gpu["conv_forward"].items())
    items.append([("b", "GPU conv2d forward vs cuDNN:"), ("text", f" {conv}")])
    for st in gpu["train_step"]:
        if st["cpu_images_per_s"] is None:
            cpu = "no CPU figure in this file (run the CPU suite to compare)"
        else:
            faster = "faster" if st["images_per_s"] > st["cpu_images_per_s"] else "not faster"
            cpu = (f"CPU path {fmt_num(st['cpu_images_per_s'])} img/s at batch {st['cpu_images']} "
                   f"(target: faster on the GPU: {faster})")
        vs = "" if st["ratio_pytorch"] is None else f" ({fmt_ratio(st['ratio_pytorch'])} PyTorch on the GPU)"
        items.append([("b", "GPU training step:"), ("text", f" {st['case']} {fmt_num(st['images_per_s'])} img/s"
                                                            f"{vs}; {cpu}")])
    return [("ul", items), ("p", "GPU fractions: PyTorch's time over ours on the same GPU (float32, TF32 off; "
                                 "cuDNN with cudnn.benchmark), so 50% means half of cuBLAS's or cuDNN's "
                                 "throughput. Every timed GPU call waits for the GPU before the clock stops.")]


def headline(results: dict) -> dict:
    """The run in a few numbers, over the conv layer suite and the training steps in the main dtype
    (float32).

    For "forward" and "backward" (the layers at their batch) and "forward_batch1" (their batch-1 twins,
    ``cases.is_batch1``): ``layers``, ``ratio_pytorch_geomean`` (geometric mean over the
    layers of fastconv auto's ratio to PyTorch, > 1: faster), ``best`` / ``worst`` layer by that
    ratio (``{case, label, ratio_pytorch}``), ``layers_with_onnxruntime``, ``ratio_onnxruntime_geomean`` and
    ``worst_onnxruntime`` (the same against ONNX Runtime, forward only), ``speedup_naive_geomean`` and its range
    ``speedup_naive_min`` / ``speedup_naive_max`` (``{case, label, speedup_naive}``). Then
    ``train_step``: fastconv auto's training steps, each ``{case, label, images, time_s,
    images_per_s, ratio_pytorch, noisy}`` (an empty list when none were run); ``networks``: the whole networks
    per batch size (``{images, networks, with_onnxruntime, ratio_onnxruntime_geomean}``: fastconv's geometric
    mean ratio to ONNX Runtime; an empty list when none were run); ``cuda``: the GPU suite against its
    targets (``_gpu_headline``; None without GPU records). Then ``peak_gflops`` (the
    ``is_peak`` record's) with ``peak_record``, and ``counts``. Figures that cannot be computed (no
    PyTorch, no auto records) are None.
    """
    return _headline_from_rows(rows(results))


# ---------------------------------------------------------------------------------- formatting

def _sig(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits in fixed notation (1234 stays "1234")."""
    if x == 0 or not math.isfinite(x):
        return f"{x:.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{x:.{decimals}f}"
    if decimals and len(text.lstrip("-").replace(".", "").lstrip("0")) > digits:  # 0.9996 -> 1.000
        text = f"{x:.{decimals - 1}f}"
    return text


def fmt_time(seconds: float | None, scaled: bool = False) -> str:
    """A time with its unit and 3 significant digits: "0.632 ms", "123 ms", "1234 ms", and
    seconds from 10 s on ("12.3 s"); a trailing "*" marks a naive time scaled from a reduced
    slice; None is "-"."""
    if seconds is None:
        return "-"
    text = f"{_sig(seconds)} s" if seconds >= 10 else f"{_sig(seconds * 1e3)} ms"
    return text + ("*" if scaled else "")


def fmt_ratio(x: float | None) -> str:
    """A speed-up or ratio: "0.85x", "0.0064x", "12.3x", "1234x"; None is "-"."""
    if x is None:
        return "-"
    if x >= 1 or x <= 0:
        return f"{_sig(x)}x"
    return f"{x:.{max(2, 1 - math.floor(math.log10(x)))}f}x"


def fmt_num(x: float | None) -> str:
    """A rate such as GFLOP/s with 3 significant digits (no exponent); None is "-"."""
    return "-" if x is None else _sig(x)


def fmt_pct(x: float | None) -> str:
    """A percentage: "87%", "4.2%", "0.0042%"; None is "-"."""
    if x is None:
        return "-"
    if x >= 10 or x <= 0:
        return f"{x:.0f}%"
    return f"{_sig(x, 2)}%"


def fmt_mib(nbytes: float | None) -> str:
    """Bytes as MiB with one decimal; None is "-"."""
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def fmt_s(seconds: float | None) -> str:
    """Seconds with two decimals; None is "-"."""
    return "-" if seconds is None else f"{seconds:.2f}"


def impl_name(impl: str) -> str:
    """How an implementation is named in tables and legends."""
    return IMPL_NAMES.get(impl, impl)


# ------------------------------------------------------------------------------ document blocks
# A report is a list of blocks rendered twice, to Markdown and to HTML, so both carry the same
# content. Inline text is a str or a list of (kind, text) segments, kind in "text", "code", "b", "sub" (a line
# of its own in smaller type in HTML, after a space in Markdown).
#   ("h", level, inline)  ("p", inline)  ("warn", inline)  ("ul", [inline, ...])  ("code", text)
#   ("table", headers, body, notes)      ("img", file name, alt text)
# Table headers are str; cells are inline.

def _segments(inline: str | list) -> list[tuple[str, str]]:
    return [("text", inline)] if isinstance(inline, str) else inline


def _md_escape(text: str) -> str:
    return re.sub(r"([\\`*_|<\[\]])", r"\\\1", text)


def _md_inline(inline: str | list) -> str:
    parts = []
    for kind, text in _segments(inline):
        if kind == "code":
            parts.append(f"`{text}`")
        elif kind == "b":
            parts.append(f"**{_md_escape(text)}**")
        elif kind == "sub":
            parts.append(" " + _md_escape(text))
        else:
            parts.append(_md_escape(text))
    return "".join(parts)


def _html_inline(inline: str | list) -> str:
    tags = {"code": "<code>{}</code>", "b": "<strong>{}</strong>", "sub": '<br><span class="sub">{}</span>'}
    return "".join(tags[k].format(html.escape(t)) if k in tags else html.escape(t) for k, t in _segments(inline))


def to_markdown(blocks: list[tuple]) -> str:
    """Render document blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + _md_inline(block[2]))
        elif kind == "p":
            out.append(_md_inline(block[1]))
        elif kind == "warn":
            out.append("> " + _md_inline(block[1]))
        elif kind == "ul":
            out.append("\n".join("- " + _md_inline(item) for item in block[1]))
        elif kind == "code":
            out.append("```bash\n" + block[1] + "\n```")
        elif kind == "img":
            out.append(f"![{_md_escape(block[2])}]({block[1]})")
        elif kind == "table":
            headers, body, notes = block[1], block[2], block[3]
            lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
                     "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
            lines += ["| " + " | ".join(_md_inline(c) for c in cells) + " |" for cells in body]
            if notes:
                lines += ["", "  \n".join(_md_inline(n) for n in notes)]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


# A table wider than the page scrolls sideways in its own box, its first column (what the row is) kept in view;
# headers and first cells wrap, figures do not.
HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1, h2, h3, h4 { margin-top: 1.6em; } h1 { border-bottom: 2px solid #ddd; }
.table-wrap { overflow-x: auto; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #d0d0d0; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f3f6; white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; white-space: normal; min-width: 10em; position: sticky; left: 0;
                                 background: #fff; }
th:first-child { background: #f0f3f6; }
tbody tr:nth-child(even), tbody tr:nth-child(even) td:first-child { background: #fafafa; }
span.sub { font-size: 0.85em; color: #555; white-space: nowrap; }
p.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 0.8em; }
code, pre { background: #f4f4f4; font-family: Menlo, Consolas, monospace; font-size: 0.9em; }
pre { padding: 0.6em; overflow-x: auto; } p.note { font-size: 0.85em; color: #555; margin: 0.15em 0; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def to_html(blocks: list[tuple], title: str) -> str:
    """Render document blocks as one standalone HTML page (inline CSS, no scripts)."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{HTML_STYLE}</style>", "</head>", "<body>"]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"<h{block[1]}>{_html_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            out.append(f"<p>{_html_inline(block[1])}</p>")
        elif kind == "warn":
            out.append(f'<p class="warn">{_html_inline(block[1])}</p>')
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
        elif kind == "img":
            out.append(f'<p><img src="{html.escape(block[1])}" alt="{html.escape(block[2])}"></p>')
        elif kind == "table":
            headers, body, notes = block[1], block[2], block[3]
            out.append('<div class="table-wrap"><table><thead><tr>'
                       + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{_html_inline(c)}</td>" for c in cells) + "</tr>"
                    for cells in body]
            out.append("</tbody></table></div>")
            out += [f'<p class="note">{_html_inline(n)}</p>' for n in notes]
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------- tables

def _index(all_rows: list[Row]) -> dict[tuple, Row]:
    """(suite, case, pass, dtype, impl) -> row (the fastest where a key repeats)."""
    out: dict[tuple, Row] = {}
    for r in all_rows:
        key = (r["suite"], r["case"], r["pass"], r["dtype"], r["impl"])
        if key not in out or r["time_s"] < out[key]["time_s"]:
            out[key] = r
    return out


def _scaled_notes(scaled_rows: list[Row]) -> list[str]:
    """Footnotes for scaled naive times: one per distinct ``scaled_from``, naming the cases
    when more than one case is in the table."""
    by_slice: dict[str, list[str]] = {}
    for r in scaled_rows:
        cases = by_slice.setdefault(str(r["scaled_from"] or "a reduced slice"), [])
        if r["case"] not in cases:
            cases.append(r["case"])
    multi = len(by_slice) > 1
    return [f"* naive loops run on {what} and scaled by FLOPs" + (f" ({', '.join(cases)})" if multi else "")
            for what, cases in by_slice.items()]


NOISY_MARK = "†"


def _noisy_notes(table_rows: list[Row]) -> list[str]:
    """The footnote of a table that holds noisy records."""
    if not any(r["noisy"] for r in table_rows):
        return []
    return [f"{NOISY_MARK} noisy record: the interquartile range of its timed calls is more than "
            f"{NOISY_SPREAD:.0%} of their median, so its time and the ratios built on it are uncertain"]


def _time_cell(r: Row) -> str:
    """The record's time, marked "*" when scaled and with NOISY_MARK when noisy."""
    return fmt_time(r["time_s"], r["scaled"]) + (f" {NOISY_MARK}" if r["noisy"] else "")


def _case_cell(case: str, label: str) -> list[tuple[str, str]]:
    """A table's first cell: the case id, then its label (which holds the shape) when it has one."""
    return [("code", case)] + ([("sub", label)] if label != case else [])


DETAIL_HEADERS = ["impl", "time", "IQR / median", "GFLOP/s", "% peak", "x naive", "x NumPy", "x PyTorch",
                  "x ONNX Runtime", "peak mem (MiB)", "compile (s)"]


def _detail_cells(r: Row) -> list[str]:
    return [impl_name(r["impl"]), _time_cell(r), fmt_pct(None if r["spread"] is None else 100 * r["spread"]),
            fmt_num(r["gflops"]), fmt_pct(r["pct_peak"]), fmt_ratio(r["speedup_naive"]),
            fmt_ratio(r["speedup_numpy"]), fmt_ratio(r["ratio_pytorch"]), fmt_ratio(r["ratio_onnxruntime"]),
            fmt_mib(r["peak_memory_bytes"]), fmt_s(r["compile_s"])]


def _detail_table(case_rows: list[Row]) -> tuple:
    """Rows = implementations of one case and pass, columns = every derived figure."""
    body = [_detail_cells(r) for r in case_rows]
    return ("table", DETAIL_HEADERS, body,
            _scaled_notes([r for r in case_rows if r["scaled"]]) + _noisy_notes(case_rows))


def _compact_table(sel: list[Row], with_pass: bool, focus: str, extra: list[str]) -> tuple:
    """Rows = cases (and passes), columns = each implementation's time, then the ``extra``
    figures of the ``focus`` implementation (keys of a row, e.g. "gflops", "ratio_pytorch")."""
    idx = _index(sel)
    impls = _order((r["impl"] for r in sel), IMPLS)
    keys = list(dict.fromkeys((r["case"], r["pass"]) for r in sel))
    titles = {"gflops": "GFLOP/s", "pct_peak": "% peak", "speedup_naive": "x naive",
              "speedup_numpy": "x NumPy", "ratio_pytorch": "x PyTorch", "ratio_onnxruntime": "x ONNX Runtime"}
    fmts = {"gflops": fmt_num, "pct_peak": fmt_pct}
    headers = ["case"] + (["pass"] if with_pass else []) + [impl_name(i) for i in impls]
    headers += [f"{focus} {titles[k]}" for k in extra]
    body = []
    dtype = sel[0]["dtype"]
    suite = sel[0]["suite"]
    labels = {r["case"]: r["label"] for r in sel}
    for case, pass_ in keys:
        cells: list = [_case_cell(case, labels[case])] + ([pass_] if with_pass else [])
        for impl in impls:
            r = idx.get((suite, case, pass_, dtype, impl))
            cells.append(_time_cell(r) if r else "-")
        f = idx.get((suite, case, pass_, dtype, focus))
        cells += [fmts.get(k, fmt_ratio)(f[k]) if f else "-" for k in extra]
        body.append(cells)
    return ("table", headers, body, _scaled_notes([r for r in sel if r["scaled"]]) + _noisy_notes(sel))


VERSION_KEYS = ("fastconv", "python", "numpy", "numba", "llvmlite", "scipy", "torch", "onnxruntime", "onnx", "pytest",
                "pytest_benchmark", "pytest-benchmark")


def _machine_block(results: dict) -> list[tuple]:
    """The header: machine, thread counts, versions, date, commit, how to reproduce. Reads
    ``machine_info["fastconv"]`` (falling back on pytest-benchmark's own machine_info); keys it
    does not know are listed as they are."""
    machine = results.get("machine_info") or {}
    fc = dict(machine.get("fastconv") or {}) if isinstance(machine.get("fastconv"), dict) else {}
    cpu = fc.pop("cpu", None) or (machine.get("cpu") or {}).get("brand_raw") or machine.get("processor") or "unknown"
    flags = fc.pop("cpu_flags", None)
    if isinstance(flags, dict):
        has = [k for k, v in flags.items() if v]
        lacks = [k for k, v in flags.items() if not v]
        flags = ", ".join(has) + ("; no " + ", no ".join(lacks) if lacks else "")
    items: list = [[("b", "CPU:"), ("text", f" {cpu}" + (f" ({flags})" if flags else ""))]]
    cores = fc.pop("logical_cores", None) or fc.pop("cores", None)
    threads = fc.pop("numba_threads", None) or fc.pop("threads", None)
    layer = fc.pop("numba_threading_layer", None)
    parts = ([f"{cores} logical cores"] if cores else []) + \
            ([f"{threads} threads" + (f" (Numba threading layer {layer})" if layer else "")] if threads else [])
    if parts:
        items.append([("b", "cores / threads:"), ("text", " " + ", ".join(parts))])
    versions = fc.pop("versions", None)
    versions = dict(versions) if isinstance(versions, dict) else {}
    versions.update({k: fc.pop(k) for k in VERSION_KEYS if k in fc})
    if versions:
        text = ", ".join(f"{k} {v if v else '(not installed)'}" for k, v in versions.items())
        items.append([("b", "versions:"), ("text", f" {text}")])
    size, dtype, harness = fc.pop("size", None), fc.pop("dtype", None), fc.pop("harness", None)
    if size or dtype:
        items.append([("b", "suite:"), ("text", " " + ", ".join(str(x) for x in (size, dtype) if x))])
    date = fc.pop("date", None) or results.get("datetime")
    if date:
        items.append([("b", "date:"), ("text", f" {date}")])
    for key, value in fc.items():
        if value not in (None, "", {}, []):
            text = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
            items.append([("b", f"{key}:"), ("text", f" {text}")])
    commit = results.get("commit_info") or {}
    if commit.get("id"):
        dirty = " (with uncommitted changes)" if commit.get("dirty") else ""
        items.append([("b", "commit:"), ("text", " "), ("code", str(commit["id"])[:12]), ("text", dirty)])
    if harness:
        timing = f"Times are medians of every timed call; {harness}."
    else:
        timing = ("Times are medians of pytest-benchmark's rounds, every library timed in one process: this run "
                  "predates the per-process harness, and its PyTorch figures are low (in that process fastconv's "
                  "Numba OpenMP layer had turned on nested parallelism in the runtime PyTorch shared).")
    command = "fastconv bench" + (f" --size {size}" if size else "") + (f" --dtype {dtype}" if dtype else "")
    command += " --device cuda" if "gpu" in fc else ""
    return [("ul", items),
            ("p", [("text", "Reproduce: "), ("code", 'pip install -e ".[bench]"'), ("text", " then "),
                   ("code", command), ("text", ", which writes a run folder with "), ("code", "results.json"),
                   ("text", " and this report ("), ("code", "fastconv report results.json"),
                   ("text", " renders it again, "), ("code", "fastconv compare OLD.json NEW.json"),
                   ("text", " compares two runs).")]),
            ("p", timing + " Ratios to PyTorch and ONNX Runtime are the peer's time over ours (> 1: fastconv is "
                  "faster); speed-ups (x naive, x NumPy) are the peer's time over ours; % peak is GFLOP/s over the "
                  "measured peak (the fastest call of NumPy's matmul at the largest square GEMM size).")]


def _headline_blocks(head: dict, all_rows: list[Row]) -> list[tuple]:
    fwd, bwd, b1 = head["forward"], head["backward"], head["forward_batch1"]
    columns = [fwd, bwd] + ([b1] if b1["layers"] else [])

    def layer(entry: dict | None, key: str) -> str:
        return "-" if entry is None else f"{entry['case']} {fmt_ratio(entry[key])}"

    def naive_range(h: dict) -> str:
        lo, hi = h["speedup_naive_min"], h["speedup_naive_max"]
        return "-" if lo is None else f"{fmt_ratio(lo['speedup_naive'])} ({lo['case']}) - " \
                                      f"{fmt_ratio(hi['speedup_naive'])} ({hi['case']})"

    body = [
        ["conv layers (auto records)"] + [str(h["layers"]) for h in columns],
        ["ratio to PyTorch, geomean (> 1: faster)"] + [fmt_ratio(h["ratio_pytorch_geomean"]) for h in columns],
        ["best layer vs PyTorch"] + [layer(h["best"], "ratio_pytorch") for h in columns],
        ["worst layer vs PyTorch"] + [layer(h["worst"], "ratio_pytorch") for h in columns],
        ["ratio to ONNX Runtime, geomean (> 1: faster)"] + [fmt_ratio(h["ratio_onnxruntime_geomean"]) for h in columns],
        ["worst layer vs ONNX Runtime"] + [layer(h["worst_onnxruntime"], "ratio_onnxruntime") for h in columns],
        ["speed-up over naive, geomean"] + [fmt_ratio(h["speedup_naive_geomean"]) for h in columns],
        ["speed-up over naive, range"] + [naive_range(h) for h in columns],
    ]
    notes = []
    if fwd["layers_with_pytorch"] < fwd["layers"] or bwd["layers_with_pytorch"] < bwd["layers"]:
        notes.append(f"PyTorch ratios over {fwd['layers_with_pytorch']} (forward) and "
                     f"{bwd['layers_with_pytorch']} (backward) layers: PyTorch was not run on the others.")
    if fwd["layers"] and fwd["layers_with_onnxruntime"] < fwd["layers"]:
        notes.append(f"ONNX Runtime ratios over {fwd['layers_with_onnxruntime']} of {fwd['layers']} layers "
                     "(forward only: it has no backward ops).")
    counts = head["counts"]
    peak = head["peak_gflops"]
    rec = head["peak_record"]
    peak_text = (f"{fmt_num(peak)} GFLOP/s ({impl_name(rec['impl'])} {rec['dtype']} {rec['case']})"
                 if peak else "- (no record marked is_peak)")
    by_suite = ", ".join(f"{s} {n}" for s, n in counts["by_suite"].items()) or "none"
    above = [r for r in all_rows if r["pct_peak"] is not None and r["pct_peak"] > 100.0]
    if above:
        best = max(above, key=lambda r: r["pct_peak"])
        peak_text += (f"; {len(above)} records run above it (up to {fmt_pct(best['pct_peak'])}: "
                      f"{best['suite']} {best['case']} {best['pass']} {impl_name(best['impl'])}), "
                      "so read % peak as relative to NumPy's matmul in this run, not as a hardware bound")
    if fwd["layers"] or bwd["layers"]:
        table = ("table", [f"fastconv auto, conv2d, {head['dtype']}", "forward", "backward"]
                 + (["forward, batch 1"] if b1["layers"] else []), body, notes)
    else:
        table = ("p", f"No conv2d records of fastconv auto in {head['dtype']} in this run.")
    steps = head["train_step"]
    train = [[("b", "training step"), ("text", " " + _train_headline(steps))]] if steps else []
    if head["networks"]:
        train.append([("b", "whole networks:"), ("text", " " + _networks_headline(head["networks"]))])
    a = head["alone"]
    alone = [] if a is None else [[("b", "checked alone:"), ("text", (
        f" {a['records']} records also timed alone, each in a fresh process, 3 times among their case's rounds: suite/alone "
        f"median {a['ratio_median']:.2f}, range {a['ratio_min']:.2f}-{a['ratio_max']:.2f}, {a['within_15pct']} within "
        "15%; geometric mean per implementation " + ", ".join(f"{impl_name(i)} {v:.2f}" for i, v in a["by_impl"].items())
        + " (a library the harness handicapped would stand out)"))]]
    return [
        table,
        ("ul", train + alone + [[("b", "measured peak:"), ("text", f" {peak_text}")],
                        [("b", "benchmarks:"), ("text", f" {counts['benchmarks']} ({by_suite}) over "
                                                         f"{counts['cases']} cases; {counts['scaled']} scaled naive "
                                                         f"records; {counts['groups_without_pytorch']} of "
                                                         f"{counts['groups']} case/pass groups without PyTorch")]]),
    ]


def _train_headline(steps: list[dict]) -> str:
    """The headline's text, one clause per batch size: "at batch 64: lenet5 1234 img/s (0.52x PyTorch), ..."."""
    by_batch: dict[Any, list[str]] = {}
    for step in steps:
        vs = "" if step["ratio_pytorch"] is None else f" ({fmt_ratio(step['ratio_pytorch'])} PyTorch)"
        model = re.sub(r"-b\d+$", "", step["case"])
        mark = f" {NOISY_MARK}" if step["noisy"] else ""
        by_batch.setdefault(step["images"], []).append(f"{model} {fmt_num(step['images_per_s'])} img/s{mark}{vs}")
    return "; ".join(f"at batch {n}: " + ", ".join(parts) for n, parts in by_batch.items())


def _networks_headline(by_batch: list[dict]) -> str:
    """The headline's text: "fastconv against ONNX Runtime, geometric mean: 0.52x at batch 1 (7 networks), ..."."""
    parts = [f"{fmt_ratio(b['ratio_onnxruntime_geomean'])} at batch {b['images']} ({b['with_onnxruntime']} "
             f"network{'s' if b['with_onnxruntime'] != 1 else ''})" for b in by_batch]
    return "fastconv against ONNX Runtime (its time over ours, > 1: faster), geometric mean: " + ", ".join(parts)


TRAIN_HEADERS = ["impl", "time per step", "IQR / median", "images/s", "x PyTorch", "GFLOP/s", "peak mem (MiB)",
                 "first call (s)", "compile (s)"]


def _train_blocks(sel: list[Row], tag: str) -> list[tuple]:
    """A note on what is measured, then one table per model: fastconv auto and PyTorch per step."""
    blocks: list[tuple] = [("p", "One step: zero_grad, forward, cross-entropy loss, backward and an Adam update on a "
                                 "fixed batch, by fastconv auto (the layers' default algorithms) and by the PyTorch "
                                 "twin of the same model and weights with the same threads. x PyTorch: PyTorch's "
                                 "time per step over ours (> 1: fastconv is faster). No naive or NumPy peer in this "
                                 "suite. GFLOP/s counts 3x the forward FLOPs of the convolutions and linear layers; "
                                 "both skip the input gradient of the first convolution.")]
    for case in dict.fromkeys(r["case"] for r in sel):
        case_rows = [r for r in sel if r["case"] == case]
        blocks.append(("h", 3, [("code", case), ("text", f": {case_rows[0]['label']}{tag}")]))
        body = [["fastconv auto" if r["impl"] == "auto" else impl_name(r["impl"]), _time_cell(r),
                 fmt_pct(None if r["spread"] is None else 100 * r["spread"]), fmt_num(r["images_per_s"]),
                 fmt_ratio(r["ratio_pytorch"]), fmt_num(r["gflops"]), fmt_mib(r["peak_memory_bytes"]),
                 fmt_s(r["first_call_s"]), fmt_s(r["compile_s"])]
                for r in case_rows]
        blocks.append(("table", TRAIN_HEADERS, body, _noisy_notes(case_rows)))
    return blocks


NETWORK_HEADERS = ["network", "batch", "fastconv", "ONNX Runtime", "x ONNX Runtime", "images/s fastconv",
                   "images/s ONNX Runtime", "memory fastconv (MiB)", "memory ONNX Runtime (MiB)",
                   "GFLOP/s fastconv", "GFLOP/s ONNX Runtime", "first call fastconv (s)"]


def _network_blocks(sel: list[Row], tag: str) -> list[tuple]:
    """What is measured, then one table (under a heading naming the dtype when it is not the run's main one) with
    a row per network and batch (fastconv against ONNX Runtime: time, ratio, images/s, memory, GFLOP/s,
    fastconv's first call), then the geometric mean of the ratio per batch."""
    def cell(r: Row | None, fmt, key: str) -> str:
        return "-" if r is None else fmt(r[key])

    idx = _index(sel)
    body = []
    for case in dict.fromkeys(r["case"] for r in sel):  # rows are sorted by network, then batch
        ours, ort = (idx.get(("models", case, "forward", sel[0]["dtype"], impl)) for impl in ("auto", "onnxruntime"))
        first = ours or ort
        body.append([_case_cell(case, first["label"]), str(first["images"]),
                     "-" if ours is None else _time_cell(ours), "-" if ort is None else _time_cell(ort),
                     cell(ours, fmt_ratio, "ratio_onnxruntime"), cell(ours, fmt_num, "images_per_s"),
                     cell(ort, fmt_num, "images_per_s"), cell(ours, fmt_mib, "footprint_bytes"),
                     cell(ort, fmt_mib, "footprint_bytes"), cell(ours, fmt_num, "gflops"),
                     cell(ort, fmt_num, "gflops"), cell(ours, fmt_s, "first_call_s")])
    means = [f"batch {b['images']}: {fmt_ratio(b['ratio_onnxruntime_geomean'])} over {b['with_onnxruntime']} of "
             f"{b['networks']} network{'s' if b['networks'] != 1 else ''}" for b in _networks_by_batch(sel)]
    return [*([("h", 3, f"Whole networks{tag}")] if tag else []),
            ("p", "One forward pass of a whole network on a fixed batch of images: ONNX's light models (shipped in "
                  "the onnx package) with random weights stored as initializers, their logits the output, run by "
                  "fastconv (fastconv.onnx, the layers' default algorithms) and by ONNX Runtime (its CPU provider, "
                  "every graph optimization on, idle threads not spinning), with the same threads. x ONNX Runtime: "
                  "its time over ours (> 1: fastconv is faster). GFLOP/s counts the Conv and Gemm multiply-adds "
                  "(twice). Memory: the peak resident memory that loading the network and running it once added to "
                  "its worker process (weights, their packed forms, buffers, arenas: what the network costs to "
                  "serve). "
                  "First call: fastconv's first run in its process (kernels compiled and auto's algorithms tuned where "
                  "their caches are cold)."),
            ("table", NETWORK_HEADERS, body, _noisy_notes(sel)),
            ("p", "Geometric mean of x ONNX Runtime: " + "; ".join(means) + ".")]


def _noise_block(all_rows: list[Row]) -> tuple:
    """The report's first line: how many records are noisy (a warning), or that none is, with the threshold."""
    rule = f"the interquartile range of its timed calls is more than {NOISY_SPREAD:.0%} of their median"
    noisy = [r for r in all_rows if r["noisy"]]
    if not noisy:
        return ("p", f"No noisy record in this run (a record is noisy when {rule}).")
    worst = max(noisy, key=lambda r: r["spread"])
    return ("warn", [("b", f"Warning: {len(noisy)} of {len(all_rows)} records are noisy"),
                     ("text", f" (a record is noisy when {rule}), marked {NOISY_MARK} in the tables; the noisiest: "
                              f"{worst['suite']} {worst['case']} {worst['pass']} {impl_name(worst['impl'])}, "
                              f"IQR {fmt_pct(100 * worst['spread'])} of the median. Their times are uncertain "
                              "(a busy machine makes them so): time them again on a quiet machine before quoting "
                              "them.")])


def _report_blocks(results: dict, all_rows: list[Row], plots: dict[str, Path]) -> list[tuple]:
    head = _headline_from_rows(all_rows)
    blocks: list[tuple] = [("h", 1, "fastconv benchmark report"), _noise_block(all_rows)]
    blocks += _machine_block(results)
    blocks += [("h", 2, "Headline")] + _headline_blocks(head, all_rows) + _gpu_headline_blocks(head["cuda"])
    if "speedup" in plots:
        blocks.append(("img", plots["speedup"].name,
                       "speed-up of fastconv auto over naive, NumPy, PyTorch and ONNX Runtime"))
    dtypes = _order((r["dtype"] for r in all_rows), [head["dtype"]])
    suites = _order((r["suite"] for r in all_rows), SUITES + GPU_SUITES)
    for suite in suites:
        title = SUITE_TITLES.get(suite, suite)
        blocks.append(("h", 2, title))
        for dtype in dtypes:
            sel = [r for r in all_rows if r["suite"] == suite and r["dtype"] == dtype]
            if not sel:
                continue
            tag = "" if dtype == head["dtype"] else f", {dtype}"
            if suite == "conv2d":
                blocks += _conv_blocks(sel, tag)
                if not tag and "conv_gflops" in plots:
                    blocks.append(("img", plots["conv_gflops"].name, "GFLOP/s per conv layer"))
            elif suite in ("gemm", "cuda_gemm"):
                if tag:
                    blocks.append(("h", 3, f"GEMM{tag}"))
                blocks.append(_compact_table(sel, False, "auto", ["gflops", "pct_peak", "speedup_numpy",
                                                                  "ratio_pytorch", "ratio_onnxruntime"]))
                if not tag and "gemm_gflops" in plots:
                    blocks.append(("img", plots["gemm_gflops"].name, "GEMM GFLOP/s per size"))
            elif suite in ("train_step", "cuda_train_step"):
                blocks += _train_blocks(sel, tag)
            elif suite == "models":
                blocks += _network_blocks(sel, tag)
            else:
                if tag:
                    blocks.append(("h", 3, f"{title}{tag}"))
                blocks.append(_compact_table(sel, True, "auto", ["speedup_naive", "speedup_numpy",
                                                                 "ratio_pytorch", "ratio_onnxruntime"]))
    return [b for b in blocks if not (b[0] == "ul" and not b[1])]


def _conv_blocks(sel: list[Row], tag: str) -> list[tuple]:
    """Per pass: the overview (times of every implementation per layer), then one detail table
    per layer."""
    blocks: list[tuple] = []
    for pass_ in _order((r["pass"] for r in sel), PASSES):
        in_pass = [r for r in sel if r["pass"] == pass_]
        blocks.append(("h", 3, f"conv2d {pass_}{tag}"))
        blocks.append(("p", "Overview: time of each implementation per layer, and fastconv auto's figures."))
        blocks.append(_compact_table(in_pass, False, "auto", ["gflops", "pct_peak", "speedup_naive",
                                                              "speedup_numpy", "ratio_pytorch", "ratio_onnxruntime"]))
        for case in dict.fromkeys(r["case"] for r in in_pass):  # rows are sorted by case
            case_rows = [r for r in in_pass if r["case"] == case]
            blocks.append(("h", 4, [("code", case), ("text", f": {case_rows[0]['label']} ({pass_}{tag})")]))
            blocks.append(_detail_table(case_rows))
    return blocks


# -------------------------------------------------------------------------------------- plots
# The conv2d plots are dot plots: one row per layer (named by its shape), one marker per implementation or
# peer, the rows shared by the panels (forward and backward at the layers' batch, forward at batch 1).

LAYER_LABEL = re.compile(r"(?P<title>.*?) (?P<n>\d+)x(?P<c>\d+)x(?P<h>\d+)x(?P<w>\d+) -> (?P<k>\d+) "
                         r"(?P<kernel>\d+x\d+)(?P<rest>.*)")
MARKERS = "osD^vPX<>hp*"


def layer_name(label: str) -> str:
    """A conv layer as the plots name it, without its batch (the panel's title gives it): the record label
    "LeNet-5 conv1 64x1x28x28 -> 6 5x5 pad 2" becomes "LeNet-5 conv1\\n1→6 5x5, 28x28 pad 2" (input → output
    channels, kernel, input height x width, then stride, padding, groups); a label of another form is kept."""
    m = LAYER_LABEL.fullmatch(label)
    if m is None:
        return label
    return f"{m['title']}\n{m['c']}→{m['k']} {m['kernel']}, {m['h']}x{m['w']}{m['rest']}"


def _layer(case: str) -> str:
    """The layer of a conv case: its id, without the suffix of a batch-1 twin."""
    return case.removesuffix(BATCH1_SUFFIX)


def _conv_panels(sel: list[Row]) -> list[tuple[str, list[Row]]]:
    """The panels of a conv2d plot, each (title, rows): each pass at the layers' batch, then each pass at batch 1
    when the run has batch-1 twins."""
    panels = []
    for batch1 in (False, True):
        for pass_ in _order((r["pass"] for r in sel), PASSES):
            in_panel = [r for r in sel if r["pass"] == pass_ and is_batch1(r["case"]) == batch1]
            batches = sorted({int(m["n"]) for r in in_panel if (m := LAYER_LABEL.fullmatch(r["label"]))})
            if in_panel:
                panels.append((pass_ + (", batch " + " or ".join(map(str, batches)) if batches else ""), in_panel))
    return panels


def _panel_figure(n_panels: int, n_layers: int, n_series: int) -> tuple[Figure, Any]:
    """A Figure (Agg canvas, constrained layout) of ``n_panels`` panels side by side that share one x axis and
    one y axis of ``n_layers`` rows of ``n_series`` markers, with room for the layer names and a legend below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.8 + 3.2 * n_panels, 1.9 + n_layers * (0.2 + 0.04 * n_series)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, sharex=True, sharey=True, squeeze=False)[0]


def _dots(ax, layers: list[str], series: list[tuple[str, str, dict[str, float]]]) -> None:
    """One row per layer, top to bottom; in each, one marker per series (legend name, colour, {layer: value}),
    offset a little from the others; a layer without a value has no marker."""
    step = 0.6 / max(1, len(series))
    for i, (name, color, values) in enumerate(series):
        rows = [(j + (i - (len(series) - 1) / 2) * step, values[layer]) for j, layer in enumerate(layers)
                if values.get(layer)]
        ax.plot([v for _, v in rows], [y for y, _ in rows], linestyle="none", marker=MARKERS[i % len(MARKERS)],
                markersize=5, color=color, label=name)
    for j in range(len(layers)):
        ax.axhline(j, color="#e4e4e4", linewidth=0.6, zorder=0)
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3, which="both")


def _layer_ticks(ax, layers: list[str], sel: list[Row]) -> None:
    """Name each row by its layer's shape (``layer_name``)."""
    labels = {_layer(r["case"]): r["label"] for r in sorted(sel, key=lambda r: not is_batch1(r["case"]))}
    ax.set_yticks(range(len(layers)), [layer_name(labels[layer]) for layer in layers], fontsize=8)


def _log_if_wide(ax, values: list[float], limit: float) -> None:
    """Log x axis (with plain-number labels) when ``values`` span more than ``limit`` times."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > limit:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        wide = max(values) / min(values) > 300  # several decades: label the decades only

        def minor(v: float, _: Any) -> str:  # label 2 and 5 within a decade
            return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""

        ax.xaxis.set_minor_formatter(NullFormatter() if wide else FuncFormatter(minor))
        ax.tick_params(axis="x", which="minor", labelsize=7)


def _legend(fig) -> None:
    """The figure's legend, below the panels: one entry per series any panel drew."""
    handles = {}
    for panel in fig.axes:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(5, len(handles)), fontsize=8)


def speedup_figure(all_rows: list[Row], dtype: str) -> Figure | None:
    """Speed-up of fastconv auto over naive, NumPy, PyTorch and ONNX Runtime per conv layer (the peer's time over
    auto's; right of the line at 1: fastconv is faster), one panel per pass and batch; None without records."""
    auto = [r for r in all_rows if r["suite"] == "conv2d" and r["impl"] == "auto" and r["dtype"] == dtype]
    panels = _conv_panels(auto)
    if not panels:
        return None
    layers = sorted({_layer(r["case"]) for r in auto}, key=_case_key)
    peers = [(key, f"over {impl_name(peer)}", COLORS[peer]) for peer, key in
             (("naive", "speedup_naive"), ("numpy", "speedup_numpy"), ("pytorch", "ratio_pytorch"),
              ("onnxruntime", "ratio_onnxruntime")) if any(r[key] for r in auto)]
    fig, axes = _panel_figure(len(panels), len(layers), len(peers))
    for ax, (title, sel) in zip(axes, panels):
        _dots(ax, layers, [(name, color, {_layer(r["case"]): r[key] for r in sel}) for key, name, color in peers])
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("speed-up (x, > 1: faster)")
    _log_if_wide(axes[0], [r[key] for r in auto for key, _, _ in peers] + [1.0], 30.0)
    _layer_ticks(axes[0], layers, auto)
    no_torch = "" if any(key == "ratio_pytorch" for key, _, _ in peers) else " (no PyTorch records in this run)"
    fig.suptitle(f"Speed-up of fastconv auto per conv2d layer, {dtype}{no_torch}")
    _legend(fig)
    return fig


def conv_gflops_figure(all_rows: list[Row], dtype: str, peak: float | None) -> Figure | None:
    """GFLOP/s per conv layer of each fastconv algorithm, PyTorch and ONNX Runtime, with the measured peak as a
    dashed line, one panel per pass and batch; None without records."""
    sel = [r for r in all_rows if r["suite"] == "conv2d" and r["dtype"] == dtype
           and r["impl"] not in ("auto", "naive", "numpy") and r["gflops"]]
    panels = _conv_panels(sel)
    if not panels:
        return None
    layers = sorted({_layer(r["case"]) for r in sel}, key=_case_key)
    impls = _order((r["impl"] for r in sel), IMPLS)
    fig, axes = _panel_figure(len(panels), len(layers), len(impls))
    for ax, (title, in_panel) in zip(axes, panels):
        fastest = sorted(in_panel, key=lambda r: -r["time_s"])  # where a record repeats, the fastest is kept
        _dots(ax, layers, [(impl_name(impl), COLORS.get(impl, OTHER_COLOR),
                            {_layer(r["case"]): r["gflops"] for r in fastest if r["impl"] == impl})
                           for impl in impls])
        if peak:
            ax.axvline(peak, color="black", linestyle="--", linewidth=1, label=f"peak {fmt_num(peak)} GFLOP/s")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GFLOP/s")
    _log_if_wide(axes[0], [r["gflops"] for r in sel] + ([peak] if peak else []), 100.0)
    _layer_ticks(axes[0], layers, sel)
    fig.suptitle(f"conv2d GFLOP/s per layer, {dtype}")
    _legend(fig)
    return fig


def gemm_figure(all_rows: list[Row], dtype: str, peak: float | None) -> Figure | None:
    """GEMM GFLOP/s per square size for blas, packed, NumPy and PyTorch, with the peak line; None without records."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sel = [r for r in all_rows if r["suite"] == "gemm" and r["dtype"] == dtype and r["gflops"]
           and re.fullmatch(r"gemm-\d+", r["case"]) and r["impl"] in ("blas", "packed", "numpy", "pytorch")]
    if not sel:
        return None
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sizes = sorted({int(r["case"][5:]) for r in sel})
    for impl in _order((r["impl"] for r in sel), IMPLS):
        pts = sorted((int(r["case"][5:]), r["gflops"]) for r in sel if r["impl"] == impl)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl_name(impl),
                color=COLORS.get(impl, OTHER_COLOR))
    if peak:
        ax.axhline(peak, color="black", linestyle="--", linewidth=1, label=f"peak {fmt_num(peak)} GFLOP/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("square size n (n x n @ n x n)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"GEMM ({dtype})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plots(all_rows: list[Row], out_dir: Path) -> dict[str, Path] | None:
    """Write the PNG plots that have data: {name: path}; None without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    head = _headline_from_rows(all_rows)
    dtype, peak = head["dtype"], head["peak_gflops"]
    figures = {"speedup": speedup_figure(all_rows, dtype), "conv_gflops": conv_gflops_figure(all_rows, dtype, peak),
               "gemm_gflops": gemm_figure(all_rows, dtype, peak)}
    written = {}
    for name, fig in figures.items():
        if fig is not None:
            written[name] = out_dir / f"{name}.png"
            fig.savefig(written[name], dpi=PLOT_DPI)
    return written


# ------------------------------------------------------------------------------------- render

def render(results_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots (when matplotlib is installed) of
    the benchmark JSON at ``results_path`` into ``out_dir`` (created if needed); return the
    written paths, the two reports first."""
    results = load(results_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_rows = rows(results)
    plots = _plots(all_rows, out_dir)
    blocks = _report_blocks(results, all_rows, plots or {})
    if plots is None:
        plots = {}
        blocks.insert(1, ("p", [("text", "No plots: matplotlib is not installed ("),
                                ("code", "pip install matplotlib"), ("text", ").")]))
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(to_markdown(blocks), encoding="utf-8")
    html_path.write_text(to_html(blocks, "fastconv benchmark report"), encoding="utf-8")
    return [md_path, html_path, *plots.values()]


# ------------------------------------------------------------------------------------ compare

def _text_table(headers: list[str], body: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(headers, *body)]
    def line(cells: list[str]) -> str:  # the three numeric columns right-aligned
        return "  ".join(c.rjust(w) if i < 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(headers)] + [line(cells) for cells in body]
    return "\n".join("  " + line.rstrip() for line in lines)


def compare(old: dict, new: dict, threshold: float = 0.25) -> tuple[str, list[dict]]:
    """Compare two runs record by record, matched on (suite, case, pass, impl, dtype).

    ValueError when no record is in both runs (a gate that compared nothing must not pass).
    Returns a text report (slower then faster records, each sorted by the new/old time ratio, then
    the records found in only one run) and the regressions: fastconv's own (non-peer) records whose
    new time exceeds old * (1 + threshold), as dicts with suite, case, pass, impl, dtype, old_s,
    new_s and ratio (new / old), worst first.
    """
    key_names = ("suite", "case", "pass", "impl", "dtype")

    def index(results: dict) -> dict[tuple, Row]:
        out: dict[tuple, Row] = {}
        for r in rows(results):
            key = tuple(r[k] for k in key_names)
            if key not in out or r["time_s"] < out[key]["time_s"]:
                out[key] = r
        return out

    o, n = index(old), index(new)
    if not set(o) & set(n):
        raise ValueError(f"the two runs have no record in common (matched on {', '.join(key_names)}): nothing to "
                         "compare; compare runs of the same suite, cases and dtype")
    matched = []
    for key in [k for k in n if k in o]:
        entry = dict(zip(key_names, key))
        entry.update(old_s=o[key]["time_s"], new_s=n[key]["time_s"], peer=n[key]["peer"])
        entry["ratio"] = _ratio(entry["new_s"], entry["old_s"])
        entry["regression"] = (not entry["peer"] and entry["ratio"] is not None
                               and entry["new_s"] > entry["old_s"] * (1 + threshold))
        matched.append(entry)
    regressions = sorted((e for e in matched if e["regression"]), key=lambda e: -e["ratio"])

    def table(entries: list[dict]) -> str:
        body = [[fmt_ratio(e["ratio"]), fmt_time(e["old_s"]), fmt_time(e["new_s"]),
                 " ".join(str(e[k]) for k in key_names),
                 "REGRESSION" if e["regression"] else "(peer)" if e["peer"] else ""] for e in entries]
        return _text_table(["new/old", "old", "new", "suite case pass impl dtype", ""], body)

    valid = [e for e in matched if e["ratio"] is not None]
    slower = sorted((e for e in valid if e["ratio"] > 1), key=lambda e: -e["ratio"])
    faster = sorted((e for e in valid if e["ratio"] < 1), key=lambda e: e["ratio"])
    same = len(valid) - len(slower) - len(faster)
    lines = [f"compared {len(matched)} matching records (regression: a fastconv implementation more than "
             f"{threshold:.0%} slower): {len(slower)} slower, {len(faster)} faster, {same} unchanged, "
             f"{len(regressions)} regression{'s' if len(regressions) != 1 else ''}"]
    if slower:
        lines += ["", "slower:", table(slower)]
    if faster:
        lines += ["", "faster:", table(faster)]
    for title, only in (("only in old", [k for k in o if k not in n]), ("only in new", [k for k in n if k not in o])):
        if only:
            lines += ["", f"{title}: {len(only)}"] + ["  " + " ".join(map(str, k)) for k in only]
    return "\n".join(lines) + "\n", [{k: e[k] for k in (*key_names, "old_s", "new_s", "ratio")}
                                     for e in regressions]
