"""``fastconv predict MODEL INPUT``: fastconv model files, training checkpoints and ONNX files, on .npy/.npz
batches and folders of images."""
from __future__ import annotations

import csv

import numpy as np
import pytest

import fastconv as fc
from fastconv import cli, data


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A LeNet-5 file (fc.save) and 6 bundled MNIST test images, as uint8 and model-ready."""
    folder = tmp_path_factory.mktemp("predict")
    fc.manual_seed(0)
    model = fc.models.lenet5().eval()
    path = fc.save(model, folder / "lenet5.npz")
    images, labels = data.load_mnist(train=False)
    return model, path, images[:6], labels[:6], folder


def _rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_a_npy_batch_gives_the_models_top_classes(lenet, tmp_path, capsys):
    model, path, images, _, _ = lenet
    x = (images / 255.0).astype(np.float32)
    np.save(tmp_path / "batch.npy", x)
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(path), str(tmp_path / "batch.npy"), "--top-k", "3", "--out", str(out),
                     "--batch-size", "4", "--no-progress"]) == 0
    rows = _rows(out)
    assert rows[0] == ["item", "class1", "p1", "class2", "p2", "class3", "p3"] and len(rows) == 7
    probabilities = fc.nn.softmax(model.predict(x))
    for row, p in zip(rows[1:], probabilities):
        top = np.argsort(-p)[:3]
        assert [int(c) for c in row[1::2]] == top.tolist()
        np.testing.assert_allclose([float(v) for v in row[2::2]], p[top], rtol=1e-4)
    assert "batch.npy[0]:" in capsys.readouterr().out


def test_predict_a_folder_of_images_normalizes_as_the_checkpoint_says(lenet, tmp_path, capsys):
    from PIL import Image
    model, _, images, labels, _ = lenet
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(tmp_path / f"digit{i}.png")
    # a training checkpoint records the data set's mean and std and its class names
    from fastconv import optim, train
    fc.manual_seed(0)
    run_model = fc.models.lenet5()
    ckpt = train.save_checkpoint(tmp_path / "checkpoint.npz", run_model, optim.SGD(run_model.parameters(), lr=0.1),
                                 None, {"settings": {"model": "lenet5", "data": "mnist"}, "epochs_done": 0,
                                        "history": [], "classes": [f"digit {k}" for k in range(10)],
                                        "mean": [0.1307], "std": [0.3081]})
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(ckpt), str(tmp_path), "--top-k", "1", "--out", str(out), "--no-progress"]) == 0
    expected = run_model.eval().predict(data.normalize(images, (0.1307,), (0.3081,), np.float32))
    rows = _rows(out)
    assert [r[0] for r in rows[1:]] == [f"digit{i}.png" for i in range(6)]
    assert [r[1] for r in rows[1:]] == [f"digit {k}" for k in expected.argmax(axis=1)]


def test_predict_errors_name_what_is_wrong(lenet, tmp_path, capsys):
    _, path, _, _, folder = lenet
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 1, 28, 28)), b=np.zeros((1, 1, 28, 28)))
    (tmp_path / "empty").mkdir()
    cases = [([str(path), str(tmp_path / "bad.npy")], "shape (N, C, H, W)"),
             ([str(path), str(tmp_path / "two.npz")], "--key"),
             ([str(path), str(tmp_path / "empty")], "no PNG or JPEG"),
             ([str(tmp_path / "none.onnx"), str(tmp_path / "bad.npy")], "no model at"),
             ([str(path), str(tmp_path / "bad.npy"), "--top-k", "0"], "--top-k"),
             ([str(path), str(tmp_path / "empty"), "--size", "28by28"], "--size must be HxW"),
             ([str(path), str(tmp_path / "empty"), "--std", "0"], "--std values must be positive")]
    for args, message in cases:
        assert cli.main(["predict", *args, "--no-progress"]) == 2, args
        assert message in capsys.readouterr().err, args


def test_predict_runs_an_onnx_file(lenet, tmp_path):
    pytest.importorskip("onnx")
    export = pytest.importorskip("fastconv.onnx.export")
    model, _, images, _, _ = lenet
    onnx_path = tmp_path / "lenet5.onnx"
    export.export(model, onnx_path, (1, 1, 28, 28))
    x = (images / 255.0).astype(np.float32)
    np.save(tmp_path / "batch.npy", x)
    assert cli.main(["predict", str(onnx_path), str(tmp_path / "batch.npy"), "--top-k", "1",
                     "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    top = [int(r[1]) for r in _rows(tmp_path / "p.csv")[1:]]
    assert top == model.predict(x).argmax(axis=1).tolist()
