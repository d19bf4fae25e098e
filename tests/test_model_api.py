"""What a PyTorch user reaches for around a model: inference mode (no_grad, predict), saving and loading
whole models (fc.save / fc.load), named_modules and apply, and PyTorch CPU tensors as inputs."""
from __future__ import annotations

import io
import json
import threading
import zipfile

import numpy as np
import pytest

import fastconv as fc
from fastconv import nn


def _lenet(seed: int = 0) -> nn.Sequential:
    fc.manual_seed(seed)
    return fc.models.lenet5()


def _images(n: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


# --- no_grad -------------------------------------------------------------------------------------------

KEPT = {nn.Conv2d: ("x",), nn.Linear: ("x",), nn.ReLU: ("y",), nn.MaxPool2d: ("x", "indices"),
        nn.BatchNorm2d: ("xhat", "invstd"), nn.AvgPool2d: ("x",), nn.GlobalAvgPool2d: ("x",)}


def _kept(model: nn.Module) -> list[str]:
    """'layer.attribute' for every array a layer keeps for backward."""
    return [f"{name}.{a}" for name, m in model.named_modules() for a in KEPT.get(type(m), ())
            if getattr(m, a, None) is not None]


@pytest.mark.parametrize("build", [fc.models.lenet5, fc.models.resnet20])
def test_no_grad_keeps_nothing_and_gives_the_same_outputs(build):
    fc.manual_seed(0)
    model = build().eval()
    x = np.random.default_rng(0).standard_normal((2, *((1, 28, 28) if build is fc.models.lenet5 else (3, 32, 32))))
    x = x.astype(np.float32)
    y = model(x)
    assert _kept(model)  # a plain forward keeps its inputs for backward
    with fc.no_grad():
        assert not fc.is_grad_enabled()
        y_inference = model(x)
    assert fc.is_grad_enabled()
    np.testing.assert_array_equal(y_inference, y)
    assert _kept(model) == []
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(y))


def test_no_grad_is_nestable_per_thread_and_a_decorator():
    seen = {}

    @fc.no_grad()
    def inside() -> bool:
        return fc.is_grad_enabled()

    def other_thread() -> None:
        seen["other"] = fc.is_grad_enabled()

    with fc.no_grad():
        with fc.no_grad():
            assert not fc.is_grad_enabled()
        assert not fc.is_grad_enabled()
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert fc.is_grad_enabled() and seen["other"] is True and inside() is False and fc.is_grad_enabled()
    with pytest.raises(KeyError):
        with fc.no_grad():
            raise KeyError("x")
    assert fc.is_grad_enabled()


def test_eval_alone_still_differentiates_as_in_pytorch():
    model = _lenet().eval()
    x = _images(2)
    y = model(x)
    model.backward(np.ones_like(y))
    assert np.abs(model[0].weight.grad).sum() > 0


def test_a_forward_with_grad_after_no_grad_trains_again():
    model = _lenet()
    x = _images(2)
    with fc.no_grad():
        model(x)
    y = model(x)
    model.backward(np.ones_like(y))
    assert np.abs(model[0].weight.grad).sum() > 0


# --- predict -------------------------------------------------------------------------------------------

def test_predict_runs_in_eval_batches_and_restores_the_mode():
    fc.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(32, 10))
    x = _images(7)
    expected = model.eval()(x)
    model.train()
    out = model.predict(x, batch_size=3)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert _kept(model) == []
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="at least one input"):
        model.predict(x[:0])


# --- named_modules, apply ------------------------------------------------------------------------------

def test_named_modules_and_apply_follow_pytorch():
    fc.manual_seed(0)
    model = fc.models.resnet20()
    names = [name for name, _ in model.named_modules()]
    assert names[:7] == ["", "0", "1", "2", "3", "3.0", "3.0.body"]
    assert len(names) == len(set(names)) == len(list(model.modules()))
    order = []
    model[3][0].apply(lambda m: order.append(type(m).__name__))
    assert order[-1] == "Residual" and order[0] == "Conv2d"  # children first, as torch.nn.Module.apply
    assert model.apply(lambda m: None) is model


@pytest.mark.peers
def test_named_modules_equal_pytorchs_names():
    torch = pytest.importorskip("torch")
    fc.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Linear(2 * 26 * 26, 3)))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
                                 torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 26 * 26, 3)))
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]


# --- save / load ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lenet5", "cifar_cnn", "resnet20", "resnext_cifar"])
def test_save_load_round_trip_of_every_model(tmp_path, name):
    fc.manual_seed(0)
    model = fc.models.MODELS[name]()
    side = 28 if name == "lenet5" else 32
    x = np.random.default_rng(0).standard_normal((2, 1 if name == "lenet5" else 3, side, side)).astype(np.float32)
    model(x)  # batch norm's running statistics move
    model.eval()
    path = fc.save(model, tmp_path / "model.npz")
    state = np.random.get_state()
    loaded = fc.load(path)
    assert type(loaded) is type(model) and not loaded.training
    assert repr(loaded) == repr(model)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert np.random.get_state()[1].tolist() == state[1].tolist()


def test_load_draws_nothing_from_fastconvs_generator(tmp_path):
    path = fc.save(_lenet(), tmp_path / "m.npz")
    fc.manual_seed(3)
    expected = fc.models.lenet5()[0].weight.data.copy()
    fc.manual_seed(3)
    fc.load(path)
    np.testing.assert_array_equal(fc.models.lenet5()[0].weight.data, expected)


def test_save_load_keeps_dtype_mode_and_layer_arguments(tmp_path):
    fc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, (3, 5), stride=2, padding=(1, 2), groups=1, bias=False),
                          nn.BatchNorm2d(4, eps=1e-3, momentum=0.2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                          nn.AvgPool2d(1), nn.Dropout(0.25), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(4, 2))
    model.to(np.float64)
    loaded = fc.load(fc.save(model, tmp_path / "m.npz"))
    assert loaded[0].weight.data.dtype == np.float64 and loaded[0].bias is None
    assert (loaded[0].stride, loaded[0].padding, loaded[1].eps, loaded[1].momentum, loaded[5].p) == \
        ((2, 2), (1, 2), 1e-3, 0.2, 0.25)
    assert loaded.training
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9))
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded(x), model(x))


class Scaled(nn.Module):
    """A user's own layer: y = x * factor."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def backward(self, grad_y):
        return grad_y * self.factor


def test_a_users_own_layer_loads_when_named(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2), Scaled(2.0))
    path = fc.save(model, tmp_path / "m.npz")
    with pytest.raises(ValueError, match="unknown module class 'Scaled'.*modules="):
        fc.load(path)
    loaded = fc.load(path, modules={"Scaled": Scaled})
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_save_refuses_a_model_changed_after_construction(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    model.layers[0] = nn.Linear(3, 4)
    setattr(model, "0", model.layers[0])
    with pytest.raises(ValueError, match="changed after it was constructed"):
        fc.save(model, tmp_path / "m.npz")
    with pytest.raises(TypeError, match="fastconv.nn.Module"):
        fc.save(object(), tmp_path / "m.npz")


def _rewrite_meta(path, change) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    meta_path = path.with_name("meta.npy")
    meta_path.write_bytes(members["meta.npy"])
    meta = json.loads(str(np.load(meta_path)))
    change(meta)
    arrays = {name[:-4]: np.load(io.BytesIO(blob)) for name, blob in members.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("change, match", [
    (lambda m: m["architecture"].update(type="Module"), "Module"),
    (lambda m: m["architecture"].update(type="os.system"), "unknown module class"),
    (lambda m: m["architecture"]["args"][0]["module"]["args"].__setitem__(0, 2**31 - 2), "weights"),
    (lambda m: m["architecture"]["args"][0]["module"]["args"].__setitem__(1, 60_000), "weights"),
    (lambda m: m["architecture"]["args"][0]["module"]["args"].__setitem__(0, {"pickle": 1}), "argument"),
    (lambda m: m["architecture"]["args"][0]["module"]["kwargs"].update(bias="yes"), "Linear"),
    (lambda m: m["architecture"].update(args=[{"dtype": "object"}]), "dtype"),
    (lambda m: m.update(dtype="int8"), "dtype"),
    (lambda m: m.update(training="yes"), "training"),
    (lambda m: m.update(architecture=[1]), "described"),
])
def test_load_refuses_a_hostile_architecture(tmp_path, change, match):
    path = fc.save(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), tmp_path / "m.npz")
    _rewrite_meta(path, change)
    with pytest.raises(ValueError, match=match) as error:
        fc.load(path)
    assert str(path) in str(error.value)


def test_load_refuses_weights_that_do_not_fit(tmp_path):
    path = fc.save(nn.Sequential(nn.Linear(3, 2)), tmp_path / "m.npz")
    np.savez(tmp_path / "other.npz", **{"model/0.weight": np.zeros((2, 4), np.float32),
                                        "model/0.bias": np.zeros(2, np.float32),
                                        "meta": np.load(path)["meta"]})
    with pytest.raises(ValueError, match="do not fit") as error:
        fc.load(tmp_path / "other.npz")
    assert "other.npz" in str(error.value)


def test_load_reads_a_training_checkpoint(tmp_path):
    from fastconv import data, optim, train
    fc.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    images = np.random.default_rng(0).integers(0, 255, (8, 1, 2, 2)).astype(np.uint8)
    labels = np.arange(8) % 2
    loader = data.DataLoader(images, labels, 4, mean=[0.5], std=[0.25])
    train.fit(model, optim.SGD(model.parameters(), lr=0.1), loader, loader, 1, num_classes=2, out_dir=tmp_path,
              progress=False, log=lambda *a: None)
    loaded = fc.load(tmp_path / "checkpoint.npz")
    np.testing.assert_array_equal(loaded[1].weight.data, model[1].weight.data)


# --- PyTorch CPU tensors -------------------------------------------------------------------------------

@pytest.mark.peers
def test_pytorch_cpu_tensors_are_read_as_arrays():
    torch = pytest.importorskip("torch")
    model = _lenet()
    x = _images(2)
    np.testing.assert_array_equal(model(torch.from_numpy(x)), model(x))
    w = np.ones((2, 1, 3, 3), np.float32)
    np.testing.assert_array_equal(fc.conv2d(torch.from_numpy(x), torch.from_numpy(w)), fc.conv2d(x, w))
    np.testing.assert_array_equal(fc.max_pool2d(torch.from_numpy(x), 2), fc.max_pool2d(x, 2))
    logits = np.zeros((2, 3), np.float32)
    assert nn.cross_entropy(torch.from_numpy(logits), torch.tensor([0, 2]))[0] == pytest.approx(np.log(3))
    with pytest.raises(TypeError, match="x cannot be read as a NumPy array.*detach"):
        fc.conv2d(torch.from_numpy(x).requires_grad_(), w)


def test_objects_with_array_interface_are_read_lists_are_not():
    class Wrapped:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    x = _images(1)
    np.testing.assert_array_equal(fc.max_pool2d(Wrapped(x), 2), fc.max_pool2d(x, 2))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        fc.max_pool2d(x.tolist(), 2)
