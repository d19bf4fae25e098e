"""The benchmark harness on its tiny case, end to end: suite -> results.json -> report -> compare."""
import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("pytest_benchmark", reason="the bench extra is not installed")
pytest.importorskip("matplotlib", reason="the bench extra is not installed")
pytest.importorskip("tqdm", reason="the bench extra is not installed")

import fastconv as fc  # noqa: E402

CONTRACT = {"suite", "case", "label", "pass", "impl", "peer", "flops", "scale", "scaled_from",
            "first_call_s", "compile_s", "peak_memory_bytes", "threads", "dtype", "is_peak"}


def _fastconv(*args):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = _fastconv("bench", "--size", "tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr + (out / "pytest.log").read_text()
    return out


def test_tiny_run_measures_every_implementation(tiny_run):
    records = json.loads((tiny_run / "results.json").read_text())["benchmarks"]
    infos = [r["extra_info"] for r in records]
    for info in infos:
        assert CONTRACT <= set(info), CONTRACT - set(info)
        assert info["flops"] > 0 and info["scale"] >= 1
    conv = {(i["pass"], i["impl"]) for i in infos if i["suite"] == "conv2d"}
    for p in ("forward", "backward"):
        expected = {a for a in fc.algorithms("conv2d") if a != "naive"} | {"auto", "naive", "numpy"}
        assert {impl for pass_, impl in conv if pass_ == p} >= expected
    assert {i["suite"] for i in infos} == {"conv2d", "max_pool2d", "avg_pool2d", "gemm", "train_step"}
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
