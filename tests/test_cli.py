"""The command line as a new user meets it (issue 17): checkpoints written by fit, messages that name the flag,
help for every argument, progress and speed of evaluation, a missing PyTorch, --threads, --algo, --no-autotune."""
from __future__ import annotations

import json
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastconv as fc
from fastconv import autotune, cli, config, data, nn, optim, runtime, train

TINY = ["--train-size", "64", "--test-size", "32", "--batch-size", "32", "--no-progress"]


def run_cli(*args: object) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture(autouse=True)
def process_settings():
    """The CLI sets process-wide state (threads, a fixed algorithm, autotuning): put it back after each test."""
    fc.set_autotune(True, cache=None)
    yield
    config.set_conv2d_algorithm("auto")
    fc.set_autotune(True, cache=None)
    fc.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def _loaders(n_train: int = 64, n_test: int = 32) -> tuple[data.DataLoader, data.DataLoader]:
    images, labels = data.load_mnist()
    args = dict(mean=data.MNIST_MEAN, std=data.MNIST_STD)
    return (data.DataLoader(images[:n_train], labels[:n_train], 32, shuffle=True, **args),
            data.DataLoader(images[-n_test:], labels[-n_test:], 32, **args))


def _fit_run(out, model=None, optimizer=None) -> None:
    fc.manual_seed(0)
    model = model or fc.models.lenet5()
    optimizer = optimizer or optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train.fit(model, optimizer, *_loaders(), 1, out_dir=out, progress=False, log=lambda s: None)


# ---- 1. checkpoints written by fit -------------------------------------------------------------------

def test_a_checkpoint_of_fit_works_with_evaluate_visualize_and_resume(tmp_path, capsys):
    _fit_run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.npz"
    settings = train.read_meta(path)["settings"]
    assert settings["model"] == "lenet5" and settings["optimizer"] == "sgd" and settings["momentum"] == 0.9
    assert "data" not in settings  # a loader does not know where its images came from
    capsys.readouterr()
    assert run_cli("evaluate", path, "--test-size", 32, "--no-progress") == 0
    captured = capsys.readouterr()
    assert "lenet5 on 32 mnist test images" in captured.out
    assert "does not say which data set" in captured.err and "--data" in captured.err
    assert run_cli("visualize", path, "--out", tmp_path / "pics") == 0
    assert (tmp_path / "pics" / "filters.png").is_file()
    assert run_cli("train", "--resume", path, "--epochs", 2, *TINY) == 0
    meta = train.read_meta(path)
    assert meta["epochs_done"] == 2 and meta["settings"]["data"] == "mnist" and meta["settings"]["train_size"] == 64


def test_a_fit_checkpoint_the_cli_cannot_rebuild_is_a_clear_error(tmp_path, capsys):
    custom = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    _fit_run(tmp_path / "custom", model=custom)
    capsys.readouterr()
    assert run_cli("evaluate", tmp_path / "custom" / "checkpoint.npz", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "checkpoint.npz" in err and "'settings.model'" in err and "fastconv.load" in err and "Traceback" not in err

    model = fc.models.lenet5()
    _fit_run(tmp_path / "betas", model=model, optimizer=optim.Adam(model.parameters(), betas=(0.5, 0.9)))
    path = tmp_path / "betas" / "checkpoint.npz"
    assert run_cli("evaluate", path, "--test-size", 32, "--no-progress") == 0  # the model alone is needed
    capsys.readouterr()
    assert run_cli("train", "--resume", path, "--epochs", 2, *TINY) == 2  # its optimizer cannot be rebuilt
    err = capsys.readouterr().err
    assert "'settings.optimizer'" in err and "KeyError" not in err


def test_fit_refuses_meta_settings_it_would_write_broken():
    model = fc.models.lenet5()
    loader, test = _loaders()
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, optim.SGD(model.parameters()), loader, test, 1, meta={"settings": {"epochs": "3"}},
                  progress=False, log=lambda s: None)


# ---- 2. sizes beyond the data ------------------------------------------------------------------------

def test_a_train_size_beyond_the_data_names_the_flag_and_the_largest_value(capsys, tmp_path):
    assert run_cli("train", "--train-size", 20000, "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "--train-size must be at most 9,999" in err and "n_test" not in err
    assert run_cli("train", "--test-size", 5000, "--out", tmp_path / "b") == 2
    assert "--test-size must be at most 2,000" in capsys.readouterr().err
    with pytest.raises(ValueError, match="^train_size must be at most 9,999"):
        train.load_dataset("mnist", train_size=20000)
    with pytest.raises(ValueError, match="^train_size must be at most 9,999"):
        train.build_run({"train_size": 20000})
    images, labels = data.load_mnist()
    with pytest.raises(ValueError, match="^n_train must be at most 9,999"):
        data.split(images, labels, 20000)
    with pytest.raises(ValueError, match="^n_test must be at most 2,000"):
        data.split(images, labels, 8000, 2001)


def test_sizes_beyond_a_data_dir_are_refused_not_truncated(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1.bin", 8), ("test_batch.bin", 4)):
        data.write_cifar10(folder, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10, name)
    with pytest.raises(ValueError, match="^train_size must be at most 8,"):
        train.load_dataset("cifar10", tmp_path, train_size=9)
    with pytest.raises(ValueError, match="^test_size must be at most 4,"):
        train.load_dataset("cifar10", tmp_path, test_size=5)


# ---- 3. and 5. what --resume can and cannot do -------------------------------------------------------

def test_resume_with_another_model_says_the_checkpoint_holds_a_different_one(tmp_path, capsys):
    assert run_cli("train", "--epochs", 1, "--out", tmp_path / "run", *TINY) == 0
    capsys.readouterr()
    path = tmp_path / "run" / "checkpoint.npz"
    assert run_cli("train", "--resume", path, "--model", "cifar_cnn", "--epochs", 2, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "--model cifar_cnn does not match" in err and "holds a lenet5 model" in err and "--out" in err
    assert "missing" not in err and "unexpected" not in err


def test_resume_of_a_run_that_reached_its_epochs_says_so_and_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", 2, "--out", out, *TINY) == 0
    history = (out / "history.json").read_text()
    capsys.readouterr()
    assert run_cli("train", "--resume", out / "checkpoint.npz", "--epochs", 2, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "already holds 2" in err and "counts every epoch" in err and "--epochs 3 or more" in err
    assert run_cli("train", "--resume", out / "checkpoint.npz", "--no-progress") == 2
    assert "the checkpoint's own" in capsys.readouterr().err
    assert (out / "history.json").read_text() == history


# ---- 4. help ------------------------------------------------------------------------------------------

def test_every_argument_of_every_command_has_help():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0]  # the subcommands
    assert {"evaluate", "visualize", "report", "bench", "compare"} <= set(commands.choices)
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"fastconv {name}: {action.dest} has no help"


# ---- 6. evaluation: progress bar, no_grad, the training's batch size ---------------------------------

def test_evaluate_shows_a_progress_bar_unless_told_not_to(tmp_path, capsys):
    assert run_cli("train", "--epochs", 1, "--out", tmp_path / "run", *TINY[:-1]) == 0
    assert "test 1/1" in capsys.readouterr().err  # fit's evaluation after the epoch
    assert run_cli("evaluate", tmp_path / "run" / "checkpoint.npz") == 0
    assert "evaluate" in capsys.readouterr().err
    assert run_cli("evaluate", tmp_path / "run" / "checkpoint.npz", "--no-progress") == 0
    assert "evaluate" not in capsys.readouterr().err


def test_evaluation_keeps_nothing_for_backward_and_meets_only_the_training_problems():
    run = train.build_run({"train_size": 64, "test_size": 96, "batch_size": 64})
    assert run.test_loader.batch_size == 64  # the problems the epoch tuned and compiled
    result = train.evaluate(run.model, run.test_loader, 10)
    assert all(getattr(m, name, None) is None for m in run.model.modules() for name in ("x", "y", "indices"))
    assert fc.is_grad_enabled()
    assert _conv_choices() and not [k for k in _conv_choices() if ".x32x" in k]  # the last 32 ran padded to 64
    ds = run.dataset
    exact = data.DataLoader(ds.test_images, ds.test_labels, 32, mean=ds.mean, std=ds.std)  # no partial batch
    assert train.evaluate(run.model, exact, 10)["confusion"].tolist() == result["confusion"].tolist()


# ---- 7. train_peer without PyTorch -------------------------------------------------------------------

def test_train_peer_without_torch_says_how_to_install_it():
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['train_peer', '--epochs', '1']; "
            "runpy.run_module('fastconv.benchmarks.train_peer', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install torch==2.13.0" in done.stderr and "Traceback" not in done.stderr


# ---- 8. --threads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [0, numba.config.NUMBA_NUM_THREADS + 1])
def test_threads_out_of_range_name_the_flag_and_the_limit(capsys, count):
    assert run_cli("evaluate", "missing.npz", "--threads", count) == 2
    err = capsys.readouterr().err
    assert "--threads must be between 1 and" in err and str(numba.config.NUMBA_NUM_THREADS) in err


def test_threads_set_the_kernels_count_and_reach_the_peers(tmp_path, monkeypatch, capsys):
    assert run_cli("train", "--threads", 1, "--epochs", 1, "--out", tmp_path / "run", *TINY) == 0
    assert fc.get_num_threads() == 1
    fc.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    from fastconv import demo
    seen = []
    monkeypatch.setattr(demo, "LAYERS", [("tiny", (2, 2, 8, 8), 3, 3, 1)])
    monkeypatch.setattr(demo, "_torch_seconds", lambda *args: seen.append(runtime.num_threads()))
    assert run_cli("demo", "--threads", 1, "--repeat", 1) == 0
    assert seen == [1]  # PyTorch's worker is started with fastconv's thread count

    import pytest as pytest_module
    calls = []
    monkeypatch.setattr(pytest_module, "main", lambda args, plugins: calls.append(args) or 5)  # 5: nothing ran
    assert run_cli("bench", "--threads", 1, "--size", "tiny", "--out", tmp_path / "bench") == 2
    assert "--fc-threads=1" in calls[0]  # every library's worker process gets the count


# ---- 9. --algo and --no-autotune ---------------------------------------------------------------------

def _conv_choices() -> list[str]:
    return [k for k in autotune.choices() if k.startswith("conv2d.")]


def test_algo_fixes_the_algorithm_of_every_convolution(tmp_path):
    assert run_cli("train", "--epochs", 1, "--out", tmp_path / "auto", *TINY) == 0
    assert _conv_choices()  # auto timed candidates
    fc.set_autotune(True, cache=None)
    assert run_cli("train", "--algo", "direct", "--epochs", 1, "--out", tmp_path / "direct", *TINY) == 0
    assert config.conv2d_algorithm() == "direct" and _conv_choices() == []  # nothing timed: direct ran


def test_algo_that_cannot_run_a_layer_stops_with_a_clear_error(tmp_path, capsys):
    assert run_cli("train", "--algo", "winograd", "--epochs", 1, "--out", tmp_path / "run", *TINY) == 2
    err = capsys.readouterr().err
    assert "fixed to 'winograd'" in err and "--algo" in err and "3x3" in err and "Traceback" not in err


def test_set_conv2d_algorithm_applies_to_layers_and_is_validated():
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    layer = nn.Conv2d(3, 4, 3)
    config.set_conv2d_algorithm("naive")
    np.testing.assert_array_equal(layer(x), fc.conv2d(x, layer.weight.data, layer.bias.data, algo="naive"))
    config.set_conv2d_algorithm("depthwise")
    with pytest.raises(ValueError, match="fixed to 'depthwise'.*one input channel per group"):
        layer(x)
    with pytest.raises(ValueError, match="'auto' or one of"):
        config.set_conv2d_algorithm("fastest")
    assert config.conv2d_algorithm() == "depthwise"


def test_no_autotune_times_nothing(tmp_path):
    assert run_cli("train", "--no-autotune", "--epochs", 1, "--out", tmp_path / "run", *TINY) == 0
    assert autotune.choices() == {}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert np.isfinite(history[0]["train_loss"])
