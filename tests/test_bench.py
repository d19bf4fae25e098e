"""The benchmark harness on its tiny case, end to end: suite -> results.json -> report -> compare."""
import importlib.util
import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib", reason="the bench extra is not installed")
pytest.importorskip("tqdm", reason="the bench extra is not installed")

import fastconv as fc  # noqa: E402

CONTRACT = {"suite", "case", "label", "pass", "impl", "peer", "library", "flops", "scale", "scaled_from",
            "first_call_s", "compile_s", "peak_memory_bytes", "threads", "dtype", "device", "is_peak"}


def _fastconv(*args):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = _fastconv("bench", "--size", "tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr + (out / "pytest.log").read_text()
    return out


def test_tiny_run_measures_every_implementation(tiny_run):
    """Every conv2d algorithm whose record takes the tiny layer (depthwise does not: it is not depthwise)."""
    from fastconv.benchmarks.cases import TINY_CONV
    from fastconv.benchmarks.test_conv_bench import takes
    records = json.loads((tiny_run / "results.json").read_text())["benchmarks"]
    infos = [r["extra_info"] for r in records]
    for info in infos:
        assert CONTRACT <= set(info), CONTRACT - set(info)
        assert info["flops"] > 0 and info["scale"] >= 1
    conv = {(i["pass"], i["impl"]) for i in infos if i["suite"] == "conv2d"}
    for p in ("forward", "backward"):
        expected = {a for a in fc.algorithms("conv2d") if a != "naive" and takes(a, TINY_CONV)} | {"auto", "naive", "numpy"}
        assert {impl for pass_, impl in conv if pass_ == p} >= expected
    networks = {"models"} if importlib.util.find_spec("onnx") else set()  # the networks' files need onnx
    assert {i["suite"] for i in infos} == {"conv2d", "max_pool2d", "avg_pool2d", "gemm", "train_step"} | networks
    assert sum(bool(i["is_peak"]) for i in infos) == 1
    assert all(r["stats"]["median"] > 0 for r in records)


def test_tiny_run_times_a_training_step(tiny_run):
    infos = [r["extra_info"] for r in json.loads((tiny_run / "results.json").read_text())["benchmarks"]]
    steps = [i for i in infos if i["suite"] == "train_step"]
    assert {i["impl"] for i in steps} >= {"auto"} and {i["impl"] for i in steps} <= {"auto", "pytorch"}
    lenet_flops_per_image = 3 * 2 * (6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    for info in steps:
        assert (info["case"], info["pass"], info["images"]) == ("lenet5-b8", "step", 8)
        assert info["flops"] == 8 * lenet_flops_per_image
        assert info["peer"] == (info["impl"] == "pytorch")
        assert (info["compile_s"] is None) == info["peer"] and info["first_call_s"] > 0
    markdown = (tiny_run / "report.md").read_text()
    assert "**training step** at batch 8: lenet5 " in markdown and "img/s" in markdown
    assert "`lenet5-b8`" in markdown and "| fastconv auto |" in markdown


def test_tiny_run_writes_a_report_with_plots(tiny_run):
    markdown = (tiny_run / "report.md").read_text()
    assert "PyTorch" in markdown and "naive" in markdown
    assert (tiny_run / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    pngs = list(tiny_run.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_report_rerenders_and_compare_flags_a_regression(tiny_run, tmp_path):
    results = tiny_run / "results.json"
    assert _fastconv("report", str(results), "--out", str(tmp_path / "again")).returncode == 0
    assert (tmp_path / "again" / "report.md").is_file()
    assert _fastconv("compare", str(results), str(results)).returncode == 0
    data = json.loads(results.read_text())
    for record in data["benchmarks"]:
        if not record["extra_info"]["peer"]:
            record["stats"]["median"] *= 3
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(data))
    done = _fastconv("compare", str(results), str(slower))
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"train_step lenet5-b8 step auto float32 +REGRESSION", done.stdout), done.stdout
    for record in data["benchmarks"]:
        record["extra_info"]["case"] += "-elsewhere"
    disjoint = tmp_path / "disjoint.json"
    disjoint.write_text(json.dumps(data))
    done = _fastconv("compare", str(results), str(disjoint))
    assert done.returncode == 2 and "no record in common" in done.stderr, done.stdout + done.stderr


def test_report_renders_a_run_without_training_steps(tiny_run, tmp_path):
    from fastconv.benchmarks import report
    data = json.loads((tiny_run / "results.json").read_text())
    data["benchmarks"] = [r for r in data["benchmarks"] if r["extra_info"]["suite"] != "train_step"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert report.headline(data)["train_step"] == []
    report.render(old, tmp_path / "old")
    markdown = (tmp_path / "old" / "report.md").read_text()
    assert "conv2d" in markdown and "training step" not in markdown


def test_bench_cli_rejects_bad_input(tmp_path):
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"benchmarks": 3}')
    assert _fastconv("report", str(bogus)).returncode == 2
    assert _fastconv("compare", str(bogus), str(tmp_path / "missing.json")).returncode != 0


def test_bench_size_defaults_to_full_and_quick_selects_quick():
    from fastconv.cli import build_parser
    assert build_parser().parse_args(["bench"]).size == "full"
    assert build_parser().parse_args(["bench", "--quick"]).size == "quick"
    assert build_parser().parse_args(["bench", "--size", "tiny"]).size == "tiny"


def _has_gpu() -> bool:
    """A real GPU (not the simulator) that fastconv can use, asked in a process without the simulator."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = "import fastconv.device as d; print(d.cuda_available())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip() == "True"


def test_bench_on_cuda_without_a_gpu_exits_2_before_running(tmp_path):
    import os
    if _has_gpu():
        pytest.skip("a GPU is available here")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-m", "fastconv", "bench", "--device", "cuda", "--size", "tiny",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("fastconv bench: CUDA is not available: "), done.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_suite_tiny_runs():
    """The GPU suite's tiny cases end to end: on the GPU when there is one, else under the CUDA simulator
    (tests/conftest.py set NUMBA_ENABLE_CUDASIM for this process, and the subprocess inherits it)."""
    from pathlib import Path
    from fastconv import benchmarks
    suite = Path(benchmarks.__file__).parent
    done = subprocess.run([sys.executable, "-m", "pytest", str(suite / "test_cuda_bench.py"), f"--rootdir={suite}",
                           "-o", "addopts=", "-p", "no:cacheprovider", "-q", "--fc-device", "cuda",
                           "--fc-size", "tiny"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout  # torch peers skip without CUDA


def test_report_headline_of_gpu_records(tiny_run, tmp_path):
    """CPU tiny records relabelled as a GPU run, with PyTorch records made from ours (half the speed), so the
    test needs no PyTorch: the headline's fractions of cuBLAS/cuDNN and the train step."""
    from fastconv.benchmarks import report
    data = json.loads((tiny_run / "results.json").read_text())
    gpu = []
    for record in data["benchmarks"]:
        info = record["extra_info"]
        if info["impl"] == "auto":
            ours = json.loads(json.dumps(record))
            ours["extra_info"].update(suite="cuda_" + info["suite"], device="cuda",
                                      impl="tiled" if info["suite"] == "gemm" else "auto",
                                      case="vgg" if info["suite"] == "conv2d" else info["case"])
            peer = json.loads(json.dumps(ours))
            peer["extra_info"].update(impl="pytorch", peer=True)
            peer["stats"]["median"] = ours["stats"]["median"] / 2
            gpu += [ours, peer]
    data["benchmarks"] += gpu
    data["machine_info"]["fastconv"]["gpu"] = "NVIDIA H100"
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(data))
    cuda = report.headline(data)["cuda"]
    assert cuda["gemm"]["case"] == "gemm-64" and cuda["gemm"]["fraction"] == pytest.approx(0.5)
    assert cuda["conv_forward"]["vgg"]["fraction"] == pytest.approx(0.5) and cuda["conv_forward"]["resnet"] is None
    assert cuda["train_step"][0]["cpu_images_per_s"] > 0 and cuda["train_step"][0]["ratio_pytorch"] == pytest.approx(0.5)
    report.render(path, tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "**GPU GEMM vs cuBLAS:** gemm-64: 50% (tiled; target 50%: met)" in markdown
    assert "## GPU conv2d" in markdown and "--device cuda" in markdown
    assert report.headline(data)["forward"] == report.headline(json.loads((tiny_run / "results.json").read_text()))["forward"]


def test_bench_selects_records_with_k_and_op(tmp_path):
    done = _fastconv("bench", "--size", "tiny", "--op", "gemm", "-k", "auto or blas", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr + (tmp_path / "pytest.log").read_text()
    infos = [r["extra_info"] for r in json.loads((tmp_path / "results.json").read_text())["benchmarks"]]
    assert sorted((i["suite"], i["impl"]) for i in infos) == [("gemm", "auto"), ("gemm", "blas")]
    assert _fastconv("bench", "--size", "tiny", "-k", "no_such_case", "--out", str(tmp_path / "none")).returncode == 2
    assert _fastconv("bench", "--op", "conv3d").returncode == 2


def test_peer_workers_load_neither_fastconv_nor_numba():
    """Each library alone in its process: the NumPy worker (like the PyTorch and ONNX Runtime ones) has not
    imported fastconv or Numba, the fastconv worker not PyTorch or ONNX Runtime."""
    from fastconv.benchmarks.harness import Worker
    numpy_worker, fastconv_worker = Worker("numpy", 1), Worker("fastconv", 1)
    try:
        assert numpy_worker.info["loaded"] == [] and numpy_worker.info["pid"] != fastconv_worker.info["pid"]
        assert fastconv_worker.info["loaded"] == ["fastconv", "numba"]
        assert fastconv_worker.info["threads"] == 1 and fastconv_worker.info["threading_layer"] in ("omp", "tbb")
    finally:
        numpy_worker.close()
        fastconv_worker.close()


def test_worker_reports_a_failed_request_and_stays_up():
    from fastconv.benchmarks.harness import Worker, WorkerError
    from fastconv.benchmarks.cases import case_to_dict, square_gemm
    worker = Worker("numpy", 1)
    try:
        with pytest.raises(WorkerError, match="numpy has no conv3d forward implementation"):
            worker.request({"op": "prepare", "id": "x", "suite": "conv3d", "case": case_to_dict(square_gemm(8)),
                            "pass": "forward", "impl": "numpy", "dtype": "float32"})
        reply = worker.request({"op": "prepare", "id": "y", "suite": "gemm", "case": case_to_dict(square_gemm(8)),
                                "pass": "forward", "impl": "numpy", "dtype": "float32"})
        assert reply["first_call_s"] > 0 and len(worker.request({"op": "time", "id": "y", "calls": 3})["seconds"]) == 3
    finally:
        worker.close()


def test_harness_interleaves_and_rotates_the_implementations(monkeypatch):
    """Every implementation of a group is timed in each round, the order rotated from round to round."""
    from fastconv.benchmarks import harness
    from fastconv.benchmarks.cases import case_to_dict, square_gemm
    order = []
    real = harness.Worker.request

    def spy(self, message):
        if message["op"] == "time":
            order.append(message["id"])
        return real(self, message)
    monkeypatch.setattr(harness.Worker, "request", spy)
    timer = harness.Harness(1, harness.Plan(rounds=3, block_s=0.0))
    request = {"suite": "gemm", "case": case_to_dict(square_gemm(16)), "pass": "forward", "dtype": "float32"}
    try:
        results = timer.measure([harness.Entry(impl, harness.library_of(impl), {**request, "impl": impl})
                                 for impl in ("packed", "numpy", "naive")])
    finally:
        timer.close()
    assert order == ["packed", "numpy", "naive", "numpy", "naive", "packed", "naive", "packed", "numpy"]
    assert all(r.error is None and len(r.seconds) == 3 for r in results.values())
    assert results["naive"].threads == 1 and results["packed"].first_call_s > 0


@pytest.mark.peers
def test_tiny_run_times_pytorch_and_onnxruntime_each_where_it_applies(tiny_run):
    pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0")
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install onnx onnxruntime")
    infos = [r["extra_info"] for r in json.loads((tiny_run / "results.json").read_text())["benchmarks"]]
    ort = {(i["suite"], i["pass"]) for i in infos if i["impl"] == "onnxruntime"}
    torch = {(i["suite"], i["pass"]) for i in infos if i["impl"] == "pytorch"}
    assert ort == {("conv2d", "forward"), ("max_pool2d", "forward"), ("avg_pool2d", "forward"), ("gemm", "forward"),
                   ("models", "forward")}
    assert ("conv2d", "backward") in torch and ("train_step", "step") in torch
    assert all(i["library"] == i["impl"] and i["threads"] >= 1 for i in infos if i["impl"] in ("pytorch", "onnxruntime"))


def _record(case: str, pass_: str, impl: str, median: float, suite: str = "conv2d", iqr: float | None = None) -> dict:
    """A record in the suite's JSON layout, its label the case's own (benchmarks/cases.py)."""
    from fastconv.benchmarks import cases
    info = {"suite": suite, "case": case, "label": cases.find(suite, case).label, "pass": pass_, "impl": impl,
            "peer": impl in ("naive", "numpy", "pytorch", "onnxruntime"), "flops": 1e8, "dtype": "float32"}
    if suite == "train_step":
        info["images"] = 64
    return {"name": f"{case}-{pass_}-{impl}", "extra_info": info,
            "stats": {"median": median, "min": 0.9 * median, "iqr": 0.1 * median if iqr is None else iqr, "rounds": 60}}


def _synthetic(layers=("lenet1", "cifar2")) -> dict:
    """conv2d records of fastconv auto and its four peers on `layers` (ONNX Runtime forward only), and LeNet-5's
    training step, every record quiet (IQR 10% of the median)."""
    records = []
    for layer in layers:
        for pass_ in ("forward", "backward"):
            for impl, ms in (("auto", 1.0), ("naive", 900.0), ("numpy", 3.0), ("pytorch", 0.5), ("onnxruntime", 0.6)):
                if not (impl == "onnxruntime" and pass_ == "backward"):
                    records.append(_record(layer, pass_, impl, ms * 1e-3))
    records += [_record("lenet5", "step", "auto", 5.8e-3, "train_step"),
                _record("lenet5", "step", "pytorch", 5.6e-3, "train_step")]
    return {"machine_info": {"fastconv": {"cpu": "test CPU"}}, "benchmarks": records}


def test_report_warns_of_noisy_records_and_marks_them(tmp_path):
    """The busy-machine run: LeNet-5's step at 112 images/s, its calls spread over twice their median."""
    from fastconv.benchmarks import report
    quiet = _synthetic()
    busy = _synthetic()
    step = next(r for r in busy["benchmarks"] if r["name"] == "lenet5-step-auto")
    step["stats"].update(median=64 / 112, iqr=2 * 64 / 112)
    assert [r["name"] for r in report.rows(busy) if r["noisy"]] == [step["name"]]
    assert not any(r["noisy"] for r in report.rows(quiet))
    for name, results in (("busy", busy), ("quiet", quiet)):
        (tmp_path / f"{name}.json").write_text(json.dumps(results))
        report.render(tmp_path / f"{name}.json", tmp_path / name)
    busy_md = (tmp_path / "busy" / "report.md").read_text()
    first = busy_md.split("\n\n")[1]
    assert first.startswith("> **Warning: 1 of 20 records are noisy**") and "more than 50% of their median" in first
    assert "the noisiest: train\\_step lenet5 step auto, IQR 200% of the median" in first
    assert "| fastconv auto | 571 ms † | 200% | 112 |" in busy_md
    assert "lenet5 112 img/s †" in busy_md and "† noisy record" in busy_md
    busy_html = (tmp_path / "busy" / "report.html").read_text()
    assert '<p class="warn"><strong>Warning: 1 of 20 records are noisy' in busy_html
    quiet_md = (tmp_path / "quiet" / "report.md").read_text()
    assert quiet_md.split("\n\n")[1].startswith("No noisy record in this run (a record is noisy when the interquartile "
                                                "range of its timed calls is more than 50% of their median)")
    assert "†" not in quiet_md


def test_report_tables_scroll_in_their_own_box_and_name_the_shape(tmp_path):
    from fastconv.benchmarks import report
    (tmp_path / "run.json").write_text(json.dumps(_synthetic()))
    report.render(tmp_path / "run.json", tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<table>") > 3 and page.count('<div class="table-wrap"><table>') == page.count("<table>")
    assert re.search(r"\.table-wrap \{[^}]*overflow-x: auto", page)
    assert '<td><code>lenet1</code><br><span class="sub">LeNet-5 conv1 64x1x28x28 -&gt; 6 5x5 pad 2</span></td>' in page
    assert "| `cifar2` CIFAR conv2 64x32x15x15 -> 64 3x3 |" in (tmp_path / "report.md").read_text()


def test_report_plots_name_layers_by_shape_and_keep_titles_apart():
    """Small (one layer) and large (every layer, batch-1 twins too) runs: rows named by the layer's shape, the
    panel titles, suptitle and legend clear of each other, every peer in the legend."""
    from fastconv.benchmarks import cases, report
    layers = [c.name for c in cases.CONV]
    for names in (["lenet1"], layers):
        results = _synthetic(names)
        results["benchmarks"] = [r for r in results["benchmarks"] if not (cases.is_batch1(r["extra_info"]["case"])
                                                                         and r["extra_info"]["pass"] == "backward")]
        fig = report.speedup_figure(report.rows(results), "float32")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        panels = fig.axes
        titles = ["forward, batch 8 or 64", "backward, batch 8 or 64", "forward, batch 1"]
        assert [ax.get_title() for ax in panels] == (["forward, batch 64", "backward, batch 64"] if len(names) == 1
                                                     else titles)
        ticks = [t.get_text() for t in panels[0].get_yticklabels()]
        assert ticks[0] == "LeNet-5 conv1\n1→6 5x5, 28x28 pad 2" and len(ticks) == len(names) - 15 * (len(names) > 1)
        texts = [ax.title for ax in panels] + [fig._suptitle] + fig.legends
        boxes = [t.get_window_extent(renderer) for t in texts]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["over naive", "over NumPy", "over PyTorch",
                                                                      "over ONNX Runtime"]


def test_report_orders_batch1_twins_after_the_layers():
    from fastconv.benchmarks import report
    cases = ["lenet1-b1", "vgg", "lenet1", "stem7", "vgg-b1"]
    assert sorted(cases, key=report._case_key) == ["lenet1", "vgg", "stem7", "lenet1-b1", "vgg-b1"]


# ------------------------------------------------------------------------------------ whole networks

@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    pytest.importorskip("onnx", reason="onnx is not installed: pip install onnx (it reads the networks)")
    out = tmp_path_factory.mktemp("models")
    done = _fastconv("bench", "--op", "models", "--size", "tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr + (out / "pytest.log").read_text()
    return out


def test_models_tiny_run_times_squeezenet_and_reports_it(models_run):
    """--op models --size tiny: SqueezeNet at batch 1 by fastconv (and ONNX Runtime where installed), its FLOPs
    counted on the graph (SqueezeNet 1.1: 349 million multiply-adds), and the report's "Whole networks" section."""
    records = json.loads((models_run / "results.json").read_text())["benchmarks"]
    infos = [r["extra_info"] for r in records]
    ort = {"onnxruntime"} if importlib.util.find_spec("onnxruntime") else set()
    assert {i["impl"] for i in infos} == {"auto"} | ort
    for info in infos:
        assert CONTRACT <= set(info), CONTRACT - set(info)
        assert (info["suite"], info["case"], info["pass"], info["images"]) == ("models", "squeezenet-b1", "forward", 1)
        assert info["flops"] == 698_303_872
        assert info["library"] == ("fastconv" if info["impl"] == "auto" else "onnxruntime")
        assert info["peer"] == (info["impl"] == "onnxruntime") and info["first_call_s"] > 0
    assert all(r["stats"]["median"] > 0 for r in records)
    markdown = (models_run / "report.md").read_text()
    assert "## Whole networks" in markdown
    assert "| network | batch | fastconv | ONNX Runtime | x ONNX Runtime |" in markdown
    assert re.search(r"\| `squeezenet-b1` SqueezeNet inference, batch 1x3x224x224 \| 1 \| [\d.]+ ms( †)? \|",
                     markdown)
    if ort:
        assert re.search(r"\*\*whole networks:\*\* fastconv against ONNX Runtime .* geometric mean: [\d.]+x at batch 1 "
                         r"\(1 network\)", markdown), markdown
        assert re.search(r"Geometric mean of x ONNX Runtime: batch 1: [\d.]+x over 1 of 1 network\.", markdown)


def test_report_of_whole_networks_gives_the_geometric_mean_per_batch(tmp_path):
    """Two networks at batch 1 and 16, fastconv at half and at twice ONNX Runtime's speed: 1x at each batch;
    images/s from the batch; the rows in the suite's order (network, then batch)."""
    from fastconv.benchmarks import report
    records = []
    for case, ours, theirs in (("resnet50-b16", 0.4, 0.8), ("squeezenet-b1", 0.001, 0.002),
                               ("resnet50-b1", 0.04, 0.02), ("squeezenet-b16", 0.02, 0.01)):
        for impl, median in (("auto", ours), ("onnxruntime", theirs)):
            record = _record(case, "forward", impl, median, suite="models")
            record["extra_info"]["images"] = int(case.rsplit("-b", 1)[1])
            records.append(record)
    results = {"machine_info": {"fastconv": {"cpu": "test CPU"}}, "benchmarks": records}
    assert report.headline(results)["networks"] == [
        {"images": 1, "networks": 2, "with_onnxruntime": 2, "ratio_onnxruntime_geomean": pytest.approx(1.0)},
        {"images": 16, "networks": 2, "with_onnxruntime": 2, "ratio_onnxruntime_geomean": pytest.approx(1.0)}]
    (tmp_path / "run.json").write_text(json.dumps(results))
    report.render(tmp_path / "run.json", tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["resnet50-b1", "resnet50-b16", "squeezenet-b1", "squeezenet-b16"]
    assert rows[1].startswith("| `resnet50-b16` ResNet-50 inference, batch 16x3x224x224 | 16 | 400 ms | 800 ms | "
                              "2.00x | 40.0 | 20.0 |")
    assert "Geometric mean of x ONNX Runtime: batch 1: 1.00x over 2 of 2 networks; batch 16: 1.00x over 2 of 2 " \
           "networks." in markdown
    assert "**whole networks:** fastconv against ONNX Runtime (its time over ours, > 1: faster), geometric mean: " \
           "1.00x at batch 1 (2 networks), 1.00x at batch 16 (2 networks)" in markdown


def test_network_cases_by_size():
    from fastconv.benchmarks.cases import NETWORK, network_cases
    assert [c.name for c in network_cases("tiny")] == ["squeezenet-b1"]
    assert 1 < len(network_cases("quick")) < len(NETWORK) == 14
    assert {(c.model, c.n) for c in network_cases("full")} == {
        (m, n) for m in ("bvlc_alexnet", "vgg19", "inception_v1", "resnet50", "squeezenet", "shufflenet", "densenet121")
        for n in (1, 16)}


def test_flops_count_the_conv_and_gemm_multiply_adds():
    """AlexNet (bvlc, 224x224: conv1 gives 54x54), by hand: its five convolutions (two grouped) and three Gemms."""
    pytest.importorskip("onnx", reason="onnx is not installed: pip install onnx")
    from fastconv.benchmarks import onnx_models
    macs = (96 * 54 * 54 * 3 * 11 * 11 + 256 * 26 * 26 * 48 * 5 * 5 + 384 * 12 * 12 * 256 * 9 + 384 * 12 * 12 * 192 * 9
            + 256 * 12 * 12 * 192 * 9 + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert onnx_models.flops(onnx_models.light_model("bvlc_alexnet")) == 2 * macs
    squeezenet = onnx_models.light_model("squeezenet")
    assert onnx_models.flops(onnx_models.random_weights(squeezenet, batch=16)) == \
        16 * onnx_models.flops(onnx_models.random_weights(squeezenet))


@pytest.mark.peers
@pytest.mark.parametrize("name", ["shufflenet", "resnet50"])
def test_random_weights_at_batch_16_give_16_times_the_batch_1_logits(name):
    """ShuffleNet's channel-shuffle Reshapes and every classifier's Reshape follow the batch: 16 copies of one image
    give 16 copies of its batch-1 logits (through ONNX Runtime)."""
    pytest.importorskip("onnx", reason="onnx is not installed: pip install onnx")
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install onnxruntime")
    import numpy as np
    from fastconv.benchmarks import onnx_models
    light = onnx_models.light_model(name)
    image = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    logits = {}
    for batch in (1, 16):
        model = onnx_models.random_weights(light, seed=3, batch=batch)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        logits[batch] = session.run(None, {model.graph.input[0].name: np.repeat(image, batch, axis=0)})[0]
    assert logits[1].shape == (1, 1000) and logits[16].shape == (16, 1000)
    assert np.std(logits[1]) > 1e-3  # logits, not the Softmax's probabilities: the weights make a difference
    np.testing.assert_allclose(logits[16], np.repeat(logits[1], 16, axis=0), rtol=1e-5,
                               atol=1e-5 * np.abs(logits[1]).max())


@pytest.mark.peers
def test_random_weights_without_logits_keep_the_softmax():
    pytest.importorskip("onnx", reason="onnx is not installed: pip install onnx")
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install onnxruntime")
    import numpy as np
    from fastconv.benchmarks import onnx_models
    model = onnx_models.random_weights(onnx_models.light_model("squeezenet"), batch=2, logits=False)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"data_0": np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert probabilities.shape == (2, 1000, 1, 1) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.peers
def test_network_workers_load_only_their_library(tmp_path):
    """After each has loaded SqueezeNet: the fastconv worker no ONNX Runtime, the ONNX Runtime worker no fastconv."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install onnx onnxruntime")
    from fastconv.benchmarks.cases import case_to_dict, network_cases
    from fastconv.benchmarks.harness import Worker
    from fastconv.benchmarks.onnx_models import prepared
    case = network_cases("tiny")[0]
    request = {"op": "prepare", "suite": "models", "case": case_to_dict(case), "pass": "forward", "dtype": "float32",
               "onnx_file": prepared(case.model, case.n, tmp_path)["path"]}
    for library, impl, loaded in (("fastconv", "auto", ["fastconv", "numba"]), ("onnxruntime", "onnxruntime",
                                                                                ["onnxruntime"])):
        worker = Worker(library, 1)
        try:
            assert worker.request({**request, "id": impl, "impl": impl})["first_call_s"] > 0
            assert worker.request({"op": "hello"})["loaded"] == loaded
        finally:
            worker.close()
