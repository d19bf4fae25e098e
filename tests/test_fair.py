"""Fair measurement: a library's figures in the benchmark suite match the same library timed alone in a
fresh process, and a process that imported and uses fastconv keeps PyTorch at its own speed.

Needs the optional peers (CI's second stage): skipped without PyTorch and ONNX Runtime.
"""
import json
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.peers
pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install onnx onnxruntime")
pytest.importorskip("matplotlib", reason="the bench extra is not installed")

# The old harness, every library in one process, reported PyTorch's LeNet-5 step 2-3x slower than alone.
GROUP_TOLERANCE = 0.3  # one library's suite/alone ratio against its group's (the old handicap: 2-3x)
DRIFT = 1.6  # the machine's own drift between two moments, alike for every library
SHARED_SPEED = 0.75  # the fault it guards against gives 0.4-0.5; this VM alone moves the fastest of five runs by up to 0.8

# A LeNet-5 training step of PyTorch, timed; with "fastconv-first" or "torch-first", a fastconv LeNet-5
# step runs before each timed PyTorch step, in the same process, fastconv imported in that order.
WORKLOAD = """
import sys, time
import numpy as np
order = sys.argv[1]
if order == "fastconv-first":
    import fastconv as fc
import torch
if order == "torch-first":
    import fastconv as fc
torch.set_num_threads(2)
from torch import nn
model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                      nn.Linear(84, 10))
opt = torch.optim.Adam(model.parameters(), 1e-3)
rng = np.random.default_rng(0)
x, y = rng.standard_normal((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
xt, yt = torch.from_numpy(x), torch.from_numpy(y)

def torch_step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(xt), yt).backward()
    opt.step()

fastconv_step = lambda: None
if order != "clean":
    fc.set_autotune(True, cache=None)
    fc.manual_seed(0)
    net = fc.models.lenet5()
    fopt = fc.optim.Adam(net.parameters(), lr=1e-3)

    def fastconv_step():
        fopt.zero_grad()
        _, grad = fc.nn.cross_entropy(net(x), y)
        net.backward(grad)
        fopt.step()
times = []
for i in range(50):
    fastconv_step()
    t0 = time.perf_counter()
    torch_step()
    times.append(time.perf_counter() - t0)
print(float(np.percentile(times[5:], 20)))
"""


def _torch_step_seconds(order: str) -> float:
    done = subprocess.run([sys.executable, "-c", WORKLOAD, order], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


@pytest.mark.parametrize("order", ["fastconv-first", "torch-first"])
def test_pytorch_keeps_its_speed_in_a_process_that_uses_fastconv(order):
    """PyTorch's LeNet-5 Adam step, with fastconv training between its steps, against PyTorch alone: each
    run's 20th percentile step, the fastest of five alternating runs each, at least SHARED_SPEED of the clean
    speed. The fastest run, not the median: this 2-core VM moves one run by up to 40% (medians of five gave
    0.80 on CI with no fault), while the fault this guards against slows every step of every run (0.4-0.5x
    before fastconv kept Numba's OpenMP runtime at one level of parallelism)."""
    clean, shared = [], []
    for _ in range(5):
        clean.append(_torch_step_seconds("clean"))
        shared.append(_torch_step_seconds(order))
    speed = min(clean) / min(shared)
    print(f"{order}: PyTorch at {speed:.2f}x its speed alone", file=sys.stderr)
    assert speed >= SHARED_SPEED, f"PyTorch beside fastconv ({order}) at {speed:.2f}x its speed alone: " \
                                  f"{[round(s * 1e3, 2) for s in shared]} ms against {[round(s * 1e3, 2) for s in clean]} ms"


def test_suite_figures_match_each_library_timed_alone(tmp_path):
    """fastconv's, PyTorch's and ONNX Runtime's medians in the suite (each in its worker process, interleaved)
    against each timed alone in a fresh process among its case's rounds (``fastconv bench --alone``), on a conv
    layer and a training step, in two runs (the geometric mean of their suite/alone ratios). This VM flips
    between a fast state and one ~1.5x slower for seconds at a time, alike for every library, so each
    ratio is compared with its group's (same case and pass): such drift leaves that alone, a harness
    that handicaps one library does not (the old one: PyTorch's step at 2-3x)."""
    selection = "(lenet5 and step) or (cifar2 and forward and (auto or pytorch or onnxruntime))"
    ratios: dict[str, list[float]] = {}
    for attempt in range(2):
        out = tmp_path / str(attempt)
        done = subprocess.run([sys.executable, "-m", "fastconv", "bench", "--size", "quick", "--alone", "--op", "conv2d",
                               "--op", "train_step", "-k", selection, "--out", str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr + (out / "pytest.log").read_text()
        for record in json.loads((out / "results.json").read_text())["benchmarks"]:
            ratios.setdefault(record["name"], []).append(record["stats"]["median"] / record["extra_info"]["alone_s"])
    assert sorted(ratios) == sorted(
        ["test_conv[cifar2-forward-auto]", "test_conv[cifar2-forward-pytorch]", "test_conv[cifar2-forward-onnxruntime]",
         "test_train_step[lenet5-step-auto]", "test_train_step[lenet5-step-pytorch]"])
    ratio = {name: statistics.geometric_mean(r) for name, r in ratios.items()}
    lines = "\n".join(f"{name}: suite/alone {[round(x, 2) for x in ratios[name]]}" for name in ratios)
    for group in ("test_conv", "test_train_step"):
        in_group = [r for name, r in ratio.items() if name.startswith(group)]
        assert all(abs(r / statistics.median(in_group) - 1) <= GROUP_TOLERANCE for r in in_group), lines
    assert all(1 / DRIFT <= r <= DRIFT for r in ratio.values()), lines
    libraries = json.loads((out / "results.json").read_text())["machine_info"]["fastconv"]["harness"]
    assert libraries.startswith("each library in its own worker process (fastconv, onnxruntime, pytorch)")
