"""algo="auto": measured choices, remembered per process, persisted per machine."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import fastconv as fc
from fastconv._checks import conv2d_shape
from fastconv.conv import CONV2D
from fastconv import autotune


@pytest.fixture(autouse=True)
def fresh_tuner():
    fc.set_autotune(True, cache=None)
    yield
    fc.set_autotune(True, cache=None)


def sleeper(seconds: float, calls: list[str], name: str):
    def run():
        calls.append(name)
        time.sleep(seconds)
    return run


def test_the_fastest_candidate_wins_and_is_remembered():
    calls: list[str] = []
    candidates = {"slow": sleeper(0.004, calls, "slow"), "fast": sleeper(0.001, calls, "fast")}
    assert autotune.choose("k1", 1e9, "slow", candidates) == "fast"
    assert calls[0] == "slow" and calls.count("fast") == 1 + autotune.ROUNDS
    calls.clear()
    assert autotune.choose("k1", 1e9, "slow", candidates) == "fast"
    assert calls == []
    assert autotune.choices()["k1"] == "fast"


def test_a_much_slower_candidate_is_timed_once():
    calls: list[str] = []
    candidates = {"fast": sleeper(0.001, calls, "fast"), "slow": sleeper(0.01, calls, "slow")}
    assert autotune.choose("k2", 1e9, "fast", candidates) == "fast"
    assert calls.count("slow") == 2  # warm-up and one timed call


def test_small_problems_and_disabled_timing_take_the_default():
    def never():
        raise AssertionError("a candidate ran")
    assert autotune.choose("k3", autotune.MIN_FLOPS / 2, "a", {"a": never, "b": never}) == "a"
    fc.set_autotune(False, cache=None)
    assert autotune.choose("k4", 1e12, "b", {"a": never, "b": never}) == "b"
    assert "k4" not in autotune.choices()


def test_choices_persist_per_machine(tmp_path):
    path = tmp_path / "autotune.json"
    fc.set_autotune(True, cache=path)
    calls: list[str] = []
    assert autotune.choose("k5", 1e9, "a", {"a": sleeper(0.003, calls, "a"), "b": sleeper(0, calls, "b")}) == "b"
    stored = json.loads(path.read_text())
    assert list(stored.values()) == [{"k5": "b"}]
    fc.set_autotune(True, cache=path)  # a new process: memory cleared, file read back
    assert autotune.choose("k5", 1e9, "a", {"a": lambda: 1 / 0, "b": lambda: 1 / 0}) == "b"


def test_an_unreadable_cache_is_ignored(tmp_path):
    path = tmp_path / "autotune.json"
    path.write_text("{not json")
    fc.set_autotune(True, cache=path)
    with pytest.warns(RuntimeWarning, match="not valid JSON"):
        assert autotune.choose("k6", 1e9, "a", {"a": sleeper(0, [], "a"), "b": sleeper(0.003, [], "b")}) == "a"
    assert json.loads(path.read_text())  # rewritten whole
    assert (tmp_path / "autotune.json.damaged").read_text() == "{not json"


def test_conv2d_auto_records_its_choice_and_matches_the_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 20, 20)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    y = fc.conv2d(x, w, padding=1)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw, _ = fc.conv2d_backward(gy, x, w, padding=1)
    made = autotune.choices()
    assert {k.split(".")[1] for k in made} == {"forward", "backward_input", "backward_weight"}  # timed apart
    p = conv2d_shape(x, w, 1, 1, 1, 1)
    assert set(made.values()) <= set(CONV2D.candidates(p, 4))  # only what the records let auto time
    # auto may pick winograd_4x4 for y or grad_x: up to 20x a plain sum's rounding (its forward_rounding), 2e-4 here
    np.testing.assert_allclose(y, fc.conv2d(x, w, padding=1, algo="direct"), rtol=1e-3, atol=1e-3)
    ref_gx, ref_gw, _ = fc.conv2d_backward(gy, x, w, padding=1, algo="direct")
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-3, atol=1e-3)


def test_conv2d_backward_skips_grad_x_when_asked_and_times_records_sharing_a_pass_once():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 32, 20, 20)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((8, 32, 20, 20)).astype(np.float32)
    gx, gw, gb = fc.conv2d_backward(gy, x, w, padding=1, input_grad=False)
    assert gx is None
    made = autotune.choices()
    assert [k.split(".")[1] for k in made] == ["backward_weight"]  # grad_x neither timed nor run
    key = next(iter(made))
    timed = key.rsplit(".", 1)[1].split("|")
    assert "direct_simd" in timed and not {"winograd", "winograd_4x4"} & set(timed)  # their grad_w is direct_simd's
    np.testing.assert_allclose(gw, fc.conv2d_backward(gy, x, w, padding=1, algo="direct")[1], rtol=1e-3, atol=1e-3)
    with pytest.raises(TypeError, match="input_grad"):
        fc.conv2d_backward(gy, x, w, padding=1, input_grad="no")


def test_set_autotune_validates():
    with pytest.raises(TypeError):
        fc.set_autotune("yes")
