"""Adding an algorithm is adding one record: a throwaway conv2d record, added here and nowhere else, appears in
fc.algorithms, in auto's candidates where it applies, runs by name and under auto, and gets the generated
correctness tests of tests/test_conv.py (which then fail when it is wrong)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv as fc
from fastconv import autotune
from fastconv._checks import conv2d_shape
from fastconv.algorithm import REGISTRIES, Algorithm
from fastconv.conv import CONV2D, _candidates
from op_check import assert_close

TESTS = Path(__file__).resolve().parent


def throwaway(shift: float = 0.0, on_forward=lambda: None) -> Algorithm:
    """A CPU conv2d record 'throwaway' for 1x1 kernels only (any stride, padding, groups), in NumPy einsum;
    `shift` is added to its forward's result (non-zero: a wrong algorithm); on_forward() runs on each forward."""

    def columns(x: np.ndarray, p) -> np.ndarray:
        """The (N, C, OH, OW) input elements the 1x1 kernel meets (zero in the padding)."""
        top, bottom, left, right = p.padding
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        return xp[:, :, ::p.stride[0], ::p.stride[1]][:, :, :p.oh, :p.ow]

    def forward(x, weight, bias, p):
        on_forward()
        g = p.groups
        cols = columns(x, p).reshape(p.n, g, p.c // g, p.oh, p.ow)
        y = np.einsum("gkc,ngchw->ngkhw", weight.reshape(g, p.k // g, p.c // g), cols).reshape(p.y_shape)
        y = y + (0 if bias is None else bias[:, None, None]) + shift
        return np.ascontiguousarray(y, x.dtype)

    def backward_input(grad_y, weight, p):
        g, (top, _, left, _) = p.groups, p.padding
        gy = grad_y.reshape(p.n, g, p.k // g, p.oh, p.ow)
        padded = np.zeros((p.n, p.c, p.h + sum(p.padding[:2]), p.w + sum(p.padding[2:])), grad_y.dtype)
        padded[:, :, ::p.stride[0], ::p.stride[1]][:, :, :p.oh, :p.ow] = np.einsum(
            "gkc,ngkhw->ngchw", weight.reshape(g, p.k // g, p.c // g), gy).reshape(p.n, p.c, p.oh, p.ow)
        return np.ascontiguousarray(padded[:, :, top:top + p.h, left:left + p.w])

    def backward_weight(grad_y, x, p):
        g = p.groups
        gy = grad_y.reshape(p.n, g, p.k // g, p.oh, p.ow)
        cols = columns(x, p).reshape(p.n, g, p.c // g, p.oh, p.ow)
        return np.ascontiguousarray(np.einsum("ngkhw,ngchw->gkc", gy, cols).reshape(p.w_shape), x.dtype)

    def unsupported(p):
        return None if (p.r, p.s) == (1, 1) else f"runs 1x1 kernels only, got {p.r}x{p.s}"

    return Algorithm("throwaway", "cpu", forward, backward_input, backward_weight=backward_weight,
                     unsupported=unsupported)


@pytest.fixture
def forwards():
    """The throwaway record in CONV2D while the test runs (removed after); yields the list its forwards append
    to."""
    calls = []
    CONV2D.add(throwaway(on_forward=lambda: calls.append(1)))
    try:
        yield calls
    finally:
        CONV2D.remove("throwaway", "cpu")


def _problem(r: int, n: int = 2, c: int = 8, size: int = 10):
    rng = np.random.default_rng(r)
    x = rng.standard_normal((n, c, size, size)).astype(np.float32)
    w = rng.standard_normal((6, c // 2, r, r)).astype(np.float32)
    return x, w, conv2d_shape(x, w, 2, 1, 1, 2)  # stride 2, padding 1, 2 groups


def test_a_new_record_is_listed_and_offered_to_auto_where_it_applies(forwards):
    """fc.algorithms lists it (on the CPU only); auto's candidates hold it for a 1x1 problem, not for a 3x3."""
    assert fc.algorithms("conv2d")[-1] == "throwaway"
    assert "throwaway" not in fc.algorithms("conv2d", device="cuda")
    assert "throwaway" in _candidates(_problem(1)[2], 4)
    assert "throwaway" not in _candidates(_problem(3)[2], 4)


def test_a_new_record_runs_by_name_and_refuses_what_it_does_not_take(forwards):
    x, w, _ = _problem(1)
    y = fc.conv2d(x, w, stride=2, padding=1, groups=2, algo="throwaway")
    assert forwards
    assert_close(y, fc.conv2d(x, w, stride=2, padding=1, groups=2, algo="naive"), w.shape[1] + 1)
    x, w, _ = _problem(3)
    with pytest.raises(ValueError, match="algo='throwaway' runs 1x1 kernels only"):
        fc.conv2d(x, w, stride=2, padding=1, groups=2, algo="throwaway")


def test_auto_times_a_new_record_and_runs_it_when_it_wins(forwards, monkeypatch):
    """auto hands the record to the timing (autotune.choose, here a stand-in that declares it the winner) for a
    1x1 problem, runs it when it wins, and does not offer it for a 3x3 problem."""
    offered = []

    def choose(key, flops, default, candidates):
        offered.append(sorted(candidates))
        return "throwaway" if "throwaway" in candidates else default

    monkeypatch.setattr(autotune, "choose", choose)
    x, w, _ = _problem(1)
    y = fc.conv2d(x, w, stride=2, padding=1, groups=2)
    assert "throwaway" in offered[-1] and forwards
    assert_close(y, fc.conv2d(x, w, stride=2, padding=1, groups=2, algo="naive"), w.shape[1] + 1)
    x, w, _ = _problem(3)
    fc.conv2d(x, w, stride=2, padding=1, groups=2)
    assert "throwaway" not in offered[-1] and len(forwards) == 1


PLUGIN = """
import dataclasses
import os
from pathlib import Path

from fastconv.conv import CONV2D
from test_registry import throwaway

log = Path(os.environ["THROWAWAY_LOG"])
CONV2D.add(throwaway(float(os.environ["THROWAWAY_SHIFT"]), on_forward=lambda: log.open("a").write("forward\\n")))
"""


def _run_generated_tests(tmp_path: Path, shift: float) -> tuple[subprocess.CompletedProcess, int]:
    """tests/test_conv.py's tests matching 'throwaway', in a pytest with a plugin that adds the throwaway record
    (its forward shifted by `shift`): the run, and how many forwards the record ran."""
    (tmp_path / "throwaway_plugin.py").write_text(PLUGIN)
    log = tmp_path / f"forwards-{shift}"
    log.touch()
    env = dict(os.environ, THROWAWAY_SHIFT=str(shift), THROWAWAY_LOG=str(log),
               HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / ".hypothesis"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "throwaway_plugin",
                           "-p", "no:cacheprovider",
                           "--hypothesis-seed=0", "-v", "-k", "throwaway", str(TESTS / "test_conv.py")],
                          cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)
    return done, len(log.read_text().splitlines())


def test_the_generated_tests_check_a_record_added_by_a_plugin(tmp_path):
    """A record added by a pytest plugin (no test file touched) gets tests/test_conv.py's generated tests: they
    run it and pass, and fail when its forward is off by one."""
    done, forwards = _run_generated_tests(tmp_path, 0.0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_conv2d[throwaway] PASSED" in done.stdout, done.stdout
    assert "test_empty_batch[1-throwaway] PASSED" in done.stdout, done.stdout
    assert forwards > 0, "no generated problem had a 1x1 kernel"
    done, _ = _run_generated_tests(tmp_path, 1.0)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_conv2d[throwaway] FAILED" in done.stdout, done.stdout


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "gemm"])
def test_every_op_refuses_a_named_record_where_it_says_it_cannot_run(op):
    """pool.py and gemm.py read a record's ``unsupported`` too, as conv2d does: asked for by name where it
    cannot run, an algorithm raises its own words instead of computing."""
    registry = REGISTRIES[op]
    picky = dataclasses.replace(registry["cpu", "direct" if op != "gemm" else "packed"], name="picky",
                                unsupported=lambda p: "runs nothing")
    registry.add(picky)
    try:
        x = np.ones((1, 1, 6, 6), np.float32)
        call = {"max_pool2d": lambda: fc.max_pool2d(x, 3, algo="picky"),
                "avg_pool2d": lambda: fc.avg_pool2d(x, 3, algo="picky"),
                "gemm": lambda: fc.gemm(x[0, 0], x[0, 0], algo="picky")}[op]
        with pytest.raises(ValueError, match="algo='picky' runs nothing"):
            call()
    finally:
        registry.remove("picky", "cpu")
