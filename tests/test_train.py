"""The trainer and its CLI: training runs end to end, history, checkpoints, resuming, evaluate, visualize."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fastconv as fc
from fastconv import cli, data, train

SMALL = ["--train-size", "192", "--test-size", "96", "--batch-size", "32", "--no-progress"]


def run_cli(*args: str) -> int:
    return cli.main([str(a) for a in args])


def test_lenet5_learns_mnist_in_two_epochs():
    settings = dict(train_size=2000, test_size=500, epochs=2, lr=3e-3)
    run = train.build_run(settings)
    history = train.fit(run.model, run.optimizer, run.train_loader, run.test_loader, 2, progress=False,
                        log=lambda s: None)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.8  # PyTorch with the same run: 0.836


def test_train_writes_history_checkpoint_and_curves(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", 2, "--out", out, *SMALL) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "train_seconds",
            "images_per_second"} <= set(history[0])
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss")
    assert len((out / "history.csv").read_text().splitlines()) == 3
    assert (out / "curves.png").stat().st_size > 1000
    with np.load(out / "checkpoint.npz", allow_pickle=False) as npz:
        assert "model/0.weight" in npz.files and "optimizer/0.exp_avg" in npz.files
    assert "epoch 2/2" in capsys.readouterr().out


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    args = ["--dtype", "float64", *SMALL]
    assert run_cli("train", "--epochs", 2, "--out", tmp_path / "straight", *args) == 0
    assert run_cli("train", "--epochs", 1, "--out", tmp_path / "split", *args) == 0
    assert run_cli("train", "--resume", tmp_path / "split" / "checkpoint.npz", "--epochs", 2, "--no-progress") == 0
    straight, straight_parts = train.load_checkpoint(tmp_path / "straight" / "checkpoint.npz")
    meta, parts = train.load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert meta["epochs_done"] == 2 and len(meta["history"]) == 2
    for key, value in straight_parts["model"].items():
        np.testing.assert_allclose(parts["model"][key], value, rtol=1e-12, atol=1e-14, err_msg=key)
    for a, b in zip(straight["history"], meta["history"]):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-10)


def test_evaluate_prints_accuracy_and_confusion_matrix(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", 1, "--out", out, *SMALL) == 0
    capsys.readouterr()
    assert run_cli("evaluate", out / "checkpoint.npz") == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix" in text
    confusion = np.loadtxt(out / "confusion.csv", delimiter=",", dtype=np.int64)
    assert confusion.shape == (10, 10) and confusion.sum() == 96
    history = json.loads((out / "history.json").read_text())
    assert np.trace(confusion) / 96 == pytest.approx(history[-1]["test_accuracy"])
    assert (out / "confusion.png").stat().st_size > 1000


def test_visualize_writes_filters_and_feature_maps(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", 1, "--out", out, *SMALL) == 0
    assert run_cli("visualize", out / "checkpoint.npz", "--index", 3, "--out", tmp_path / "pics") == 0
    assert (tmp_path / "pics" / "filters.png").stat().st_size > 1000
    assert (tmp_path / "pics" / "feature_maps_3.png").stat().st_size > 1000
    assert run_cli("visualize", out / "checkpoint.npz", "--index", 96) != 0


def cifar_folder(tmp_path, n_train: int = 96, n_test: int = 64):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    labels = rng.integers(0, 10, n_train + n_test)
    images = rng.integers(0, 256, (n_train + n_test, 3, 32, 32), dtype=np.uint8)
    images[:, labels % 3] //= 4  # a learnable signal: the class darkens one colour plane
    data.write_cifar10(folder, images[:n_train], labels[:n_train], "data_batch_1.bin")
    data.write_cifar10(folder, images[n_train:], labels[n_train:], "test_batch.bin")
    return tmp_path


def test_cifar_cnn_trains_on_cifar10_format_files(tmp_path):
    root = cifar_folder(tmp_path)
    out = tmp_path / "run"
    assert run_cli("train", "--model", "cifar_cnn", "--data", "cifar10", "--data-dir", root, "--epochs", 2,
                   "--batch-size", 32, "--optimizer", "sgd", "--lr", 0.05, "--schedule", "step", "--step-size", 1,
                   "--out", out, "--no-progress") == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.005])
    meta, parts = train.load_checkpoint(out / "checkpoint.npz")
    assert meta["settings"]["augment"] is True and meta["classes"][0] == "airplane"
    assert parts["model"]["0.weight"].shape == (32, 3, 3, 3)


def test_cifar10_needs_a_data_dir(capsys, tmp_path):
    assert run_cli("train", "--data", "cifar10", "--no-progress", "--out", tmp_path / "run") == 2
    assert "--data-dir is needed for CIFAR-10" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["resnet20", "resnext_cifar"])
def test_residual_models_run_a_training_step_on_cifar_format(tmp_path, name):
    root = cifar_folder(tmp_path, 16, 8)
    settings = dict(model=name, data="cifar10", data_dir=str(root), epochs=1, batch_size=8)
    run = train.build_run(settings)
    history = train.fit(run.model, run.optimizer, run.train_loader, run.test_loader, 1, progress=False,
                        log=lambda s: None)
    assert np.isfinite(history[0]["train_loss"])


def test_diverging_training_stops_with_a_clear_error(capsys):
    assert run_cli("train", "--optimizer", "sgd", "--lr", 1e30, "--epochs", 1, *SMALL, "--out", "/nonexistent/x") == 2
    assert "lower the learning rate" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", np.random.default_rng(0).bytes(4096)])
def test_load_checkpoint_refuses_non_checkpoints(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.npz"):
        train.load_checkpoint(path)


def test_load_checkpoint_never_unpickles(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, meta=np.array([{"version": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        train.load_checkpoint(path)
    np.savez(path, meta=np.array(json.dumps({"version": 99})))
    with pytest.raises(ValueError, match="version"):
        train.load_checkpoint(path)


def test_build_run_validates_settings():
    with pytest.raises(ValueError, match="unknown"):
        train.build_run({"learning_rate": 1})
    with pytest.raises(ValueError, match="model"):
        train.build_run({"model": "vgg99"})
    with pytest.raises(ValueError, match="epochs"):
        train.build_run({"epochs": 0})
    with pytest.raises(ValueError, match="cifar10"):
        train.build_run({"data": "imagenet"})


def test_fit_on_the_public_api_mirrors_pytorch_style():
    fc.manual_seed(0)
    model = fc.models.lenet5()
    opt = fc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = data.load_mnist()
    loader = data.DataLoader(images[:128], labels[:128], 64, mean=data.MNIST_MEAN, std=data.MNIST_STD)
    before = model.state_dict()["0.weight"].copy()
    history = train.fit(model, opt, loader, loader, 1, progress=False, log=lambda s: None)
    assert len(history) == 1 and not np.array_equal(before, model.state_dict()["0.weight"])


@pytest.mark.parametrize("settings", [
    dict(optimizer="sgd", lr=0.05, momentum=0.5, nesterov=True, weight_decay=1e-4, schedule="step", step_size=3),
    dict(optimizer="adam", lr=2e-3, schedule="cosine", augment=True, batch_size=16, seed=7, dtype="float64"),
    dict(optimizer="adam", dropout=0.25, schedule="none"),
])
def test_fit_settings_are_the_settings_build_run_made_the_run_from(settings):
    run = train.build_run({"train_size": 32, "test_size": 16, "epochs": 4, **settings})
    derived = train.fit_settings(run.model, run.optimizer, run.scheduler, run.train_loader, 4)
    common = {"model", "epochs", "batch_size", "seed", "augment", "dtype", "device", "lr", "weight_decay", "dropout"}
    assert set(derived) == common | set(settings)  # the data set is what fit cannot know
    assert derived == {k: run.settings[k] for k in derived}


def test_fit_settings_leave_out_what_build_run_cannot_make():
    model = fc.models.lenet5()
    images, labels = data.load_mnist()
    loader = data.DataLoader(images[:8], labels[:8], 4, mean=data.MNIST_MEAN, std=data.MNIST_STD, crop_padding=2)
    opt = fc.optim.Adam(model.parameters(), eps=1e-6)
    derived = train.fit_settings(model, opt, fc.optim.StepLR(opt, 2, gamma=0.5), loader, 3)
    assert {"optimizer", "schedule", "augment"}.isdisjoint(derived) and derived["model"] == "lenet5"
    other = fc.nn.Sequential(fc.nn.Flatten(), fc.nn.Linear(784, 10))
    assert "model" not in train.fit_settings(other, fc.optim.SGD(other.parameters()), None, loader, 3)
