"""Reliability (issue 13): nothing read from disk crashes fastconv or changes its results, and training
survives interruption and neighbours. One test (or a few) per finding of the issue, in its order:
1. the autotune cache, 2. checkpoint bombs, 3. concurrent writers, 4. interruption, 5. optimizer steps,
6. inputs changed in place and threads, 7. Winograd near the float32 maximum, 8. malformed meta and odd
arrays. The kill-at-random test runs FASTCONV_KILL_TRIALS trials (3 by default; the issue's 50 on request).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastconv as fc
from fastconv import autotune, cli, nn, optim, train
from fastconv.conv import CONV2D

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_files  # noqa: E402
import op_check  # noqa: E402

SMALL = ["--train-size", "256", "--test-size", "64", "--batch-size", "64", "--no-progress"]
KILL_TRIALS = int(os.environ.get("FASTCONV_KILL_TRIALS", "3"))


def rand(*shape: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run_cli(*args: object) -> int:
    return cli.main([str(a) for a in args])


def fastconv_process(*args: object, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "FASTCONV_COMPILE_NOTICE": "0", **kwargs.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "fastconv", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.fixture
def tuner(tmp_path):
    """A fresh autotune cache file for the test, memory cleared before and after."""
    path = tmp_path / "autotune.json"
    fc.set_autotune(True, cache=path)
    yield path
    fc.set_autotune(True, cache=None)


# ---- 1. the autotune cache ---------------------------------------------------------------------------

def _poison(path: Path, name: str) -> None:
    """Every remembered choice in the cache file replaced by `name`."""
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({m: {k: name for k in entries} for m, entries in stored.items()}))


def test_a_cache_naming_winograd_for_a_strided_problem_neither_crashes_nor_changes_results(tmp_path):
    """The issue's heap corruption (exit 134) and its silently wrong dilation-2 result, each in a fresh process."""
    script = f"""
import json, sys, numpy as np, fastconv as fc
from fastconv import autotune
path = {str(tmp_path / 'autotune.json')!r}
x = np.random.default_rng(0).standard_normal((8, 32, 30, 30)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((32, 32, 3, 3)).astype(np.float32)
for kwargs, marker in ((dict(stride=2), ".s(2, 2)."), (dict(dilation=2), ".d(2, 2).")):
    fc.set_autotune(True, cache=path)
    fc.conv2d(x, w, **kwargs)
    stored = json.load(open(path))
    json.dump({{m: {{k: "winograd" for k in e}} for m, e in stored.items()}}, open(path, "w"))
    fc.set_autotune(True, cache=path)
    y = fc.conv2d(x, w, **kwargs)
    ref = fc.conv2d(x, w, **kwargs, algo="direct")
    assert np.abs(y - ref).max() <= 1e-3 * np.abs(ref).max(), kwargs
    assert all(v != "winograd" for k, v in autotune.choices().items() if marker in k), autotune.choices()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FASTCONV_COMPILE_NOTICE": "0"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _assert_auto_close(y: np.ndarray, direct: np.ndarray, w: np.ndarray) -> None:
    """auto's y against direct's: auto may pick any CPU record, whose float32 forward carries up to its
    forward_rounding times a plain sum's rounding (Winograd F(4x4, 3x3): 20), over sums of C*R*S products."""
    rounding = max(record.forward_rounding for record in CONV2D.records("cpu"))
    op_check.assert_close(y, direct, terms=round(w[0].size * rounding))


@pytest.mark.parametrize("name", ["no_such_algo", "", "__class__", "naive", "im2col", "auto"])
def test_a_remembered_name_that_is_not_a_candidate_is_timed_afresh(tuner, name):
    x, w = rand(8, 16, 20, 20), rand(16, 16, 3, 3, seed=1)
    reference = fc.conv2d(x, w, padding=1, algo="direct")
    fc.conv2d(x, w, padding=1)
    _poison(tuner, name)
    fc.set_autotune(True, cache=tuner)
    t0 = time.perf_counter()
    y = fc.conv2d(x, w, padding=1)
    assert time.perf_counter() - t0 < 2.0  # naive would take minutes
    _assert_auto_close(y, reference, w)
    assert set(autotune.choices().values()) <= {"direct", "direct_simd", "im2col_packed", "winograd"}


@pytest.mark.parametrize("content", ['{"%s": null}', "[1, 2]", '"a string"', "[" * 100_000, '{"%s": {"k": [1]}}',
                                     '{"%s": {"k": "' + "x" * 500 + '"}}', "\xff\xfe{", "{not json"])
def test_a_damaged_cache_is_set_aside_with_a_warning_and_training_still_runs(tuner, content, tmp_path):
    def damage() -> None:
        tuner.write_text(content.replace("%s", autotune._machine()), encoding="latin-1")
    damage()
    done = subprocess.run([sys.executable, "-m", "fastconv", "train", "--epochs", "1", "--out", tmp_path / "run",
                           *SMALL], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FASTCONV_AUTOTUNE_CACHE": str(tuner), "FASTCONV_COMPILE_NOTICE": "0"})
    assert done.returncode == 0 and "autotune cache" in done.stderr, done.stderr[-2000:]
    damage()
    x, w = rand(8, 16, 20, 20), rand(16, 16, 3, 3, seed=1)
    with pytest.warns(RuntimeWarning, match="autotune cache"):
        y = fc.conv2d(x, w, padding=1)
    _assert_auto_close(y, fc.conv2d(x, w, padding=1, algo="direct"), w)
    assert (tmp_path / "autotune.json.damaged").is_file()
    assert isinstance(autotune.read_cache(tuner), dict)  # rewritten whole with the new choice


def test_an_oversized_cache_is_not_read(tuner):
    """The issue's 500 MB cache (1.7 GB of memory, 5-8 s per new shape): read no further than the bound."""
    with open(tuner, "wb") as f:
        f.write(b'{"m": {"')
        f.truncate(500 << 20)  # sparse: no disk used
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="larger than"):
        autotune.choices()
    seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * autotune.MAX_CACHE_BYTES and seconds < 1, (peak, seconds)


def _fake_choices(prefix: str, count: int) -> None:
    for i in range(count):
        autotune.choose(f"{prefix}{i}", 1e9, "a", {"a": lambda: None, "b": lambda: None})


def test_two_threads_saving_choices_lose_none(tuner):
    threads = [threading.Thread(target=_fake_choices, args=(f"t{t}.", 40)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(autotune.read_cache(tuner)[autotune._machine()]) == 80


def test_two_processes_saving_choices_lose_none(tuner):
    script = ("import sys; sys.path.insert(0, {tests!r}); import fastconv as fc, test_reliability as t; "
              "fc.set_autotune(True, cache={path!r}); t._fake_choices(sys.argv[1], 120)")
    code = script.format(tests=str(Path(__file__).parent), path=str(tuner))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"p{k}."]) for k in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(autotune.read_cache(tuner)[autotune._machine()]) == 240


# ---- 2. checkpoint bombs -----------------------------------------------------------------------------

def _lenet_checkpoint(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", 1, "--out", out, *SMALL) == 0
    return out / "checkpoint.npz"


def _replace_entry(path: Path, name: str, header: bytes, zeros: int) -> None:
    """Rewrite checkpoint `path` with entry `name` (.npy) replaced by `header` + `zeros` zero bytes, deflated:
    a file of a few hundred kB that declares and holds hundreds of MB."""
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist() if i.filename != name]
    with zipfile.ZipFile(path, "w") as zf:
        for member, blob in members:
            zf.writestr(member, blob)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(header)
            chunk = bytes(1 << 20)
            for _ in range(zeros >> 20):
                f.write(chunk)


def test_a_small_checkpoint_declaring_a_huge_entry_is_refused_before_decompressing(tmp_path):
    path = _lenet_checkpoint(tmp_path)
    zeros = 256 << 20
    _replace_entry(path, "model/0.weight.npy", fuzz_files.npy("<f4", (zeros // 4,), b""), zeros)
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"0\.weight.*the model needs"):
        train.restore(path)
    seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 5 and peak < 64 << 20, (seconds, peak)
    assert run_cli("evaluate", path) == 2


def test_without_a_model_the_declared_bytes_are_bounded(tmp_path, monkeypatch):
    path = _lenet_checkpoint(tmp_path)
    monkeypatch.setattr(train, "MAX_CHECKPOINT_BYTES", 100_000)
    with pytest.raises(ValueError, match="more than the"):
        train.load_checkpoint(path)


# ---- 3. concurrent writers ---------------------------------------------------------------------------

def test_concurrent_saves_to_one_path_never_fail_or_leave_a_damaged_file(tmp_path):
    model = fc.models.lenet5()
    opt = optim.Adam(model.parameters())
    path = tmp_path / "checkpoint.npz"
    errors: list[BaseException] = []

    def save() -> None:
        try:
            for _ in range(40):
                train.save_checkpoint(path, model, opt, None, {"settings": {}, "epochs_done": 0, "history": []})
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    def read() -> None:
        try:
            for _ in range(40):
                train.load_checkpoint(path)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    save()
    threads = [threading.Thread(target=f) for f in (save, save, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


def test_a_second_run_into_a_locked_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_cli("train", "--epochs", 1, "--out", out, *SMALL) == 2
        assert "another fastconv run is writing" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "checkpoint.npz").exists()


# ---- 4. interruption ---------------------------------------------------------------------------------

def test_an_existing_run_is_not_replaced_without_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", 2, "--out", out, *SMALL) == 0
    assert run_cli("train", "--epochs", 1, "--out", out, *SMALL) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert train.read_meta(out / "checkpoint.npz")["epochs_done"] == 2
    assert run_cli("train", "--epochs", 1, "--out", out, "--overwrite", *SMALL) == 0
    assert train.read_meta(out / "checkpoint.npz")["epochs_done"] == 1
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_stale_temporaries_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in (".checkpoint.npz.abc.tmp", ".history.json.x.tmp", "checkpoint.npz.tmp.npz"):
        (out / name).write_bytes(b"partial")
    assert run_cli("train", "--epochs", 1, "--out", out, *SMALL) == 0
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.npz", "curves.png", "history.csv",
                                                     "history.json"]


def _train_args(out: Path, epochs: int = 3) -> list[object]:
    return ["train", "--epochs", epochs, "--out", out, "--dtype", "float64", *SMALL]


def _final_state(out: Path) -> tuple[dict, dict]:
    meta, parts = train.load_checkpoint(out / "checkpoint.npz")
    return meta, parts["model"]


def _consistent(out: Path, stale_temporaries: bool = False) -> None:
    """The files describe the checkpoint's run: the history files equal to its history or one epoch behind
    (the process died between the writes); no temporaries unless a killed write left them (the next run
    removes them)."""
    meta = train.read_meta(out / "checkpoint.npz")
    path = out / "history.json"
    history = json.loads(path.read_text()) if path.exists() else []
    assert history == meta["history"][:len(history)] and len(history) >= meta["epochs_done"] - 1, (history, meta)
    if not stale_temporaries:
        assert not list(out.glob(".*.tmp")), list(out.iterdir())


def test_ctrl_c_ends_the_epoch_saves_it_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = fastconv_process(*_train_args(out, epochs=50))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 1/50"):
            proc.send_signal(signal.SIGINT)
            break
    text = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "continue with fastconv train --resume" in text, text
    meta = train.read_meta(out / "checkpoint.npz")
    assert 1 <= meta["epochs_done"] <= 3 and f"stopped after epoch {meta['epochs_done']} of 50" in text
    _consistent(out)
    assert len(json.loads((out / "history.json").read_text())) == meta["epochs_done"]


def test_a_second_ctrl_c_stops_at_once_and_says_what_is_saved(tmp_path):
    """Both Ctrl-C inside epoch 2 (of 2,048 images: about half a second), after epoch 1 was saved."""
    out = tmp_path / "run"
    proc = fastconv_process(*_train_args(out, epochs=50)[:-len(SMALL)], "--train-size", "2048", "--test-size", "64",
                            "--batch-size", "64", "--no-progress")
    for line in proc.stdout:
        if line.startswith("epoch 1/50"):
            time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            break
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "interrupted in epoch" in text, text
    if (out / "checkpoint.npz").exists():  # else the second Ctrl-C came inside the first save
        saved = train.read_meta(out / "checkpoint.npz")["epochs_done"]
        assert f"holds epoch {saved}" in text
        _consistent(out)
    else:
        assert "no epoch saved" in text


def test_a_run_killed_at_random_moments_resumes_to_the_uninterrupted_run(tmp_path):
    """Kill `fastconv train` (SIGKILL) at random moments, weighted towards the saves (right after an epoch's
    line, which comes just before its checkpoint is written), then resume until done: the final weights
    and history equal the run that was never interrupted, and the files on disk always describe one run."""
    cache = {"FASTCONV_AUTOTUNE_CACHE": str(tmp_path / "autotune.json")}  # the same algorithms in every process
    reference = tmp_path / "reference"
    done = fastconv_process(*_train_args(reference), env=cache)
    assert done.wait(timeout=300) == 0, done.stdout.read()
    ref_meta, ref_model = _final_state(reference)
    rng = random.Random(int(os.environ.get("FASTCONV_KILL_SEED", "0")))
    for trial in range(KILL_TRIALS):
        out = tmp_path / f"trial{trial}"
        kills = 0
        while True:
            resume = out / "checkpoint.npz"
            args = _train_args(out) + (["--resume", resume] if resume.exists() else [])
            proc = fastconv_process(*args, env=cache)
            if kills < 2:
                after = rng.choice(["lenet5", "epoch 1/3", "epoch 2/3", "epoch 3/3"])
                for line in proc.stdout:
                    if line.startswith(after):
                        time.sleep(rng.uniform(0, 0.03))
                        break
                proc.kill()
                proc.communicate()
                kills += 1
                if resume.exists():
                    _consistent(out, stale_temporaries=True)
                continue
            output = proc.communicate(timeout=300)[0]
            complete = "nothing is left to train" in output  # killed after its last save: the run was done
            assert proc.returncode == (2 if complete else 0), output
            break
        meta, model = _final_state(out)
        assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
        for key, value in ref_model.items():
            np.testing.assert_allclose(model[key], value, rtol=1e-12, atol=1e-15, err_msg=f"trial {trial}: {key}")
        for a, b in zip(ref_meta["history"], meta["history"]):
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-9)
        _consistent(out)


# ---- 5. optimizer steps ------------------------------------------------------------------------------

def test_adam_with_eps_zero_gives_nan_where_the_gradient_is_zero_and_updates_every_parameter():
    p1, p2 = nn.Parameter(np.ones(4, np.float32)), nn.Parameter(np.ones(3, np.float32))
    p1.grad[...] = [0.5, 0.0, 1.0, 2.0]
    p2.grad[...] = [1.0, 1.0, 1.0]
    opt = optim.Adam([p1, p2], lr=0.1, eps=0)
    opt.step()
    assert opt.steps == 1
    assert np.isnan(p1.data[1]) and np.allclose(p1.data[[0, 2, 3]], 0.9)
    assert np.allclose(p2.data, 0.9)  # PyTorch: the same


@pytest.mark.parametrize("make, match", [
    (lambda ps: optim.Adam(ps, lr=-1), "lr"), (lambda ps: optim.Adam(ps, eps=-1e-8), "eps"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.9)), "betas"), (lambda ps: optim.Adam(ps, betas=0.9), "betas"),
    (lambda ps: optim.Adam(ps, weight_decay=float("nan")), "weight_decay"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: optim.SGD(ps, lr=float("inf")), "lr"),
])
def test_optimizers_refuse_hyperparameters_outside_pytorchs_ranges(make, match):
    with pytest.raises(ValueError, match=match):
        make([nn.Parameter(np.ones(2, np.float32))])


def test_setting_a_bad_learning_rate_is_refused_before_any_step():
    p = nn.Parameter(np.ones(2, np.float32))
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == 0.1


# ---- 6. inputs changed in place, threads -------------------------------------------------------------

def test_an_input_changed_in_place_between_forward_and_backward_raises():
    fc.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    x = rand(2, 3, 8, 8)
    y = conv(x)
    x *= 2
    with pytest.raises(RuntimeError, match="modified in place"):
        conv.backward(np.ones_like(y))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    out = model(x)
    out *= 2  # ReLU keeps its output for backward
    with pytest.raises(RuntimeError, match="modified in place"):
        model.backward(np.ones_like(out))
    out = model(x.copy())
    model.backward(np.ones_like(out))  # unchanged: fine


def test_backward_in_another_thread_than_forward_raises():
    model = nn.Sequential(nn.Linear(4, 3))
    y = model(rand(2, 4))
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, model.backward, np.ones_like(y))))
    t.start()
    t.join()
    assert errors and "another thread" in str(errors[0].value)


class _Gate(nn.Module):
    """Waits in forward until released: makes two threads' calls overlap for certain."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(10)
        return x

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return grad_y


def test_a_model_called_from_two_threads_at_once_in_training_raises():
    gate = _Gate()
    model = nn.Sequential(gate, nn.Linear(4, 3))
    t = threading.Thread(target=model, args=(rand(2, 4),))
    t.start()
    gate.entered.wait(10)
    with pytest.raises(RuntimeError, match="running in another thread"):
        model(rand(2, 4))
    with pytest.raises(RuntimeError, match="running in another thread"):
        model.backward(np.ones((2, 3), np.float32))
    gate.release.set()
    t.join()


def test_eval_mode_calls_may_overlap_but_backward_after_them_raises():
    gate = _Gate()
    model = nn.Sequential(gate, nn.Linear(4, 3)).eval()
    results = []
    t = threading.Thread(target=lambda: results.append(model(rand(2, 4))))
    t.start()
    gate.entered.wait(10)
    t2 = threading.Thread(target=lambda: results.append(model(rand(2, 4, seed=1))))
    t2.start()
    time.sleep(0.05)
    gate.release.set()
    t.join()
    t2.join()
    assert len(results) == 2
    with pytest.raises(RuntimeError, match="overlapped|another thread"):
        model.backward(np.ones((2, 3), np.float32))


# ---- 7. Winograd near the float32 maximum ------------------------------------------------------------

@pytest.mark.parametrize("algo", ["winograd", "auto", "direct", "direct_simd", "im2col_packed"])
def test_finite_inputs_near_the_float32_maximum_give_what_the_exact_result_is(algo):
    x = np.full((2, 2, 10, 10), 3e38, np.float32)
    w = np.empty((4, 2, 3, 3), np.float32)
    w[:, 0], w[:, 1] = 1 / 16, -1 / 16  # each output: 9 * 3e38/16 - 9 * 3e38/16 = 0 exactly
    y = fc.conv2d(x, w, algo=algo)
    assert np.isfinite(y).all() and np.abs(y).max() <= 1e33  # rounding of 1.7e38-sized partial sums


# ---- 8. malformed meta, odd arrays -------------------------------------------------------------------

def _rewrite_meta(path: Path, change) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("change, match", [
    (lambda m: m["settings"].update(dtype="float16"), "dtype"),
    (lambda m: m["settings"].update(epochs="3"), "epochs"),
    (lambda m: m["settings"].update(seed="abc"), "seed"),
    (lambda m: m.pop("settings"), "settings"),
    (lambda m: m.update(history="a string"), "history"),
    (lambda m: m.update(history=[{"x": 1}]), "history"),
    (lambda m: m.update(epochs_done=True), "epochs_done"),
    (lambda m: m.update(classes=[1, 2]), "classes"),
])
def test_malformed_checkpoint_meta_is_refused_naming_the_field(tmp_path, capsys, change, match):
    path = _lenet_checkpoint(tmp_path)
    _rewrite_meta(path, change)
    with pytest.raises(ValueError, match=match):
        train.restore(path)
    capsys.readouterr()
    assert run_cli("evaluate", path) == 2
    assert run_cli("train", "--resume", path, "--epochs", 2, "--no-progress") == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_masked_arrays_and_float16_logits_get_clear_errors():
    x = np.ma.masked_array(rand(1, 2, 5, 5), mask=False)
    with pytest.raises(TypeError, match="masked"):
        fc.conv2d(x, rand(3, 2, 3, 3))
    with pytest.raises(TypeError, match="float16"):
        nn.cross_entropy(np.zeros((2, 3), np.float16), np.array([0, 1]))
    memmap_like = rand(1, 2, 5, 5).view(type("Sub", (np.ndarray,), {}))
    np.testing.assert_allclose(fc.conv2d(memmap_like, rand(3, 2, 3, 3)),
                               fc.conv2d(np.asarray(memmap_like).view(np.ndarray), rand(3, 2, 3, 3)))
