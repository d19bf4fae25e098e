"""``fastconv.distributed.predict``: batch inference on a local Dask cluster of two worker processes, equal bit for
bit to the single-process ``fastconv.predict.logits_in_batches``; and ``fastconv predict/evaluate --workers``."""
from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("distributed")

import dask.array as da  # noqa: E402

import fastconv as fc  # noqa: E402
from fastconv import autotune, cli, config, data, train  # noqa: E402
from fastconv import distributed as fd  # noqa: E402
from fastconv.predict import kernels_by_rule, load_predictor, logits_in_batches, module_predictor  # noqa: E402

N = 300  # MNIST-sized test images
BATCH = 64


@pytest.fixture(scope="module")
def client():
    """One local cluster of 2 worker processes for the whole file (each worker: cores/2 kernel threads)."""
    with fd.cluster(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A seeded LeNet-5, N bundled MNIST test images scaled to [0, 1], and the model as an fc.save file."""
    folder = tmp_path_factory.mktemp("distributed")
    fc.nn.manual_seed(0)
    model = fc.models.lenet5().eval()
    images, labels = data.load_mnist(train=False)
    x = (images[:N] / 255.0).astype(np.float32)
    return model, x, labels[:N], fc.save(model, folder / "lenet5.npz"), folder


def _reference(model, x, batch_size=BATCH) -> np.ndarray:
    predictor = model if hasattr(model, "logits") else (
        module_predictor(model) if isinstance(model, fc.nn.Module) else load_predictor(model))
    return logits_in_batches(predictor, x, batch_size)


def test_a_modules_logits_and_classes_equal_the_single_process_ones(client, lenet):
    model, x, _, _, _ = lenet
    expected = _reference(model, x)
    # chunks that are no multiple of the batch size, uneven ones, and a chunk smaller than one batch
    for chunks in [100, (37, 100, 63, 100), N, (10,) * 30]:
        images = da.from_array(x, chunks=(chunks, 1, 28, 28))
        logits = fd.predict(model, images, client=client, batch_size=BATCH)
        assert logits.shape == (N, 10) and logits.dtype == np.float32 and logits.chunks[0] == images.chunks[0]
        got = fd.gather(logits, client)
        assert got.dtype == np.float32 and np.array_equal(got, expected), chunks
    classes = fd.predict(model, da.from_array(x, chunks=(70, 1, 28, 28)), client=client, output="classes")
    assert classes.dtype == np.int64 and classes.shape == (N,)
    assert np.array_equal(classes.compute(), expected.argmax(axis=1))  # the client is the default one


def test_a_numpy_batch_and_another_batch_size(client, lenet):
    model, x, _, _, _ = lenet
    got = fd.gather(fd.predict(model, x[:150].astype(np.float64), client=client, batch_size=32), client)
    assert got.dtype == np.float32 and np.array_equal(got, _reference(model, x[:150], 32))


def test_model_files_and_checkpoints_equal_the_single_process_ones(client, lenet):
    model, x, _, path, folder = lenet
    run = train.build_run({"model": "lenet5", "data": "mnist", "test_size": 100})
    checkpoint = train.save_checkpoint(folder / "checkpoint.npz", run.model, run.optimizer, run.scheduler,
                                       {**run.meta, "epochs_done": 0, "history": []})
    images = da.from_array(x, chunks=(90, 1, 28, 28))
    for source in (path, str(checkpoint)):
        expected = _reference(load_predictor(type(path)(source)), x)
        assert np.array_equal(fd.predict(source, images, client=client).compute(), expected), source
        classes = fd.predict(source, images, client=client, output="classes").compute()
        assert np.array_equal(classes, expected.argmax(axis=1)), source


def test_an_onnx_file_equals_the_single_process_one(client, lenet):
    pytest.importorskip("onnx")
    model, x, _, _, folder = lenet
    path = folder / "lenet5.onnx"
    fc.onnx.export(model, path, (1, 1, 28, 28))
    expected = _reference(load_predictor(path), x)
    images = da.from_array(x, chunks=(75, 1, 28, 28))
    assert np.array_equal(fd.predict(path, images, client=client, batch_size=BATCH).compute(), expected)
    assert np.array_equal(fd.predict(path, images, client=client, output="classes").compute(),
                          expected.argmax(axis=1))


def test_the_model_travels_once_and_each_worker_loads_it_once(client, lenet):
    _, x, _, _, _ = lenet
    fc.nn.manual_seed(7)
    model = fc.models.lenet5()  # new weights: a model no worker has seen
    before = client.run(fd.loads)
    images = da.from_array(x, chunks=(25, 1, 28, 28))  # 12 chunks: both workers run some
    first = fd.gather(fd.predict(model, images, client=client), client)
    model.predict(x[:3])  # a forward pass leaves attributes on the layers: still the same model
    logits = fd.predict(model, images, client=client)
    # the payload was broadcast: every worker holds it, whether or not it runs a chunk
    has_what = client.has_what()
    payloads = {key for keys in has_what.values() for key in keys if str(key).startswith("_Payload")}
    assert any(all(key in keys for keys in has_what.values()) for key in payloads), has_what
    assert np.array_equal(first, fd.gather(logits, client))
    after = client.run(fd.loads)
    new = {worker: {d: n - before.get(worker, {}).get(d, 0) for d, n in loads.items()
                    if n != before.get(worker, {}).get(d, 0)} for worker, loads in after.items()}
    assert len(new) == 2 and all(len(loaded) <= 1 and set(loaded.values()) <= {1} for loaded in new.values()), new
    assert sum(len(loaded) for loaded in new.values()) >= 1


def test_results_depend_on_neither_the_thread_count_nor_a_rows_place_in_its_batch(lenet):
    model, x, _, _, _ = lenet
    predictor = module_predictor(model)
    threads = fc.get_num_threads()
    try:
        fc.set_num_threads(1)
        one = logits_in_batches(predictor, x[:130], BATCH)
    finally:
        fc.set_num_threads(threads)
    assert np.array_equal(one, logits_in_batches(predictor, x[:130], BATCH))
    shifted = logits_in_batches(predictor, x[10:140], BATCH)  # rows 10.. at other places in other batches
    assert np.array_equal(shifted, logits_in_batches(predictor, x[:140], BATCH)[10:])


def test_the_driver_keeps_its_own_settings_and_sends_its_fixed_algorithm(client, lenet):
    model, x, _, _, _ = lenet
    fc.set_autotune(True, cache=None)  # conftest's (a CLI test run before may have turned it off)
    model.predict(x[:64])  # auto times LeNet's convolutions at batch 64
    choices = autotune.choices()
    assert choices
    key = next(iter(choices))
    timed = []
    candidates = {name: lambda name=name: timed.append(name) for name in ("rule", "other", choices[key])}
    with kernels_by_rule():
        with kernels_by_rule():
            pass
        # the rule's pick, even for a problem auto has tuned: nothing timed, nothing remembered read
        assert autotune.choose(key, 1e12, "rule", candidates) == "rule" and not timed
    assert autotune.choices() == choices and autotune.choose(key, 1e12, "rule", candidates) == choices[key]
    fc.set_conv2d_algorithm("im2col_packed")
    try:
        expected = _reference(model, x[:100])
        got = fd.predict(model, da.from_array(x[:100], chunks=(50, 1, 28, 28)), client=client).compute()
    finally:
        fc.set_conv2d_algorithm("auto")
    assert np.array_equal(got, expected)
    assert config.conv2d_algorithm() == "auto"


def test_bad_arguments_are_refused_naming_them(client, lenet, monkeypatch):
    model, x, _, path, _ = lenet
    images = da.from_array(x, chunks=(100, 1, 28, 28))
    cases = [(dict(output="probabilities"), ValueError, "output"),
             (dict(batch_size=0), ValueError, "batch_size"),
             (dict(batch_size=2.5), TypeError, "batch_size"),
             (dict(batch_size=True), TypeError, "batch_size"),
             (dict(images=images[:, 0]), ValueError, "images must have 4 dimensions"),
             (dict(images=(images * 255).astype(np.uint8)), TypeError, "images must hold float32 or float64"),
             (dict(images=x.tolist()), TypeError, "images must be a dask.array.Array"),
             (dict(images=da.zeros((10, 3, 28, 28), chunks=5)), ValueError, "images have 3 channels"),
             (dict(model=object()), TypeError, "model must be a fastconv.nn.Module or the path"),
             (dict(model=path.with_name("none.npz")), FileNotFoundError, "no model at"),
             (dict(client="tcp://127.0.0.1:1"), TypeError, "client must be a distributed.Client")]
    for change, error, message in cases:
        arguments = {"model": model, "images": images, "client": client, **change}
        with pytest.raises(error, match=message):
            fd.predict(arguments.pop("model"), arguments.pop("images"), **arguments)
    import distributed

    def no_client():
        raise ValueError("No global client found and no address provided")
    monkeypatch.setattr(distributed, "get_client", no_client)
    with pytest.raises(ValueError, match="pass client=, or call fastconv.distributed.connect"):
        fd.predict(model, images)


def _rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_cli_predict_on_workers_writes_the_same_csv(client, lenet, tmp_path, capsys):
    _, x, _, path, _ = lenet
    np.save(tmp_path / "batch.npy", x[:150])
    outputs = []
    for extra in ([], ["--workers", "2"]):
        out = tmp_path / f"p{len(outputs)}.csv"
        assert cli.main(["predict", str(path), str(tmp_path / "batch.npy"), "--out", str(out), "--batch-size", "32",
                         "--no-progress", *extra]) == 0
        outputs.append((_rows(out), capsys.readouterr().out.replace(str(out), "OUT")))
    assert len(outputs[0][0]) == 151 and outputs[0] == outputs[1]


def test_cli_evaluate_on_workers_prints_the_same(lenet, tmp_path, capsys):
    run = train.build_run({"model": "lenet5", "data": "mnist", "test_size": 150, "batch_size": 64})
    checkpoint = train.save_checkpoint(tmp_path / "checkpoint.npz", run.model, run.optimizer, run.scheduler,
                                       {**run.meta, "epochs_done": 0, "history": []})
    printed = []
    try:
        for extra in ([], ["--workers", "2"]):
            assert cli.main(["evaluate", str(checkpoint), "--no-autotune", "--no-progress", "--out", str(tmp_path),
                             *extra]) == 0
            printed.append(capsys.readouterr().out)
    finally:
        fc.set_autotune(True, cache=None)  # --no-autotune turned it off in this process
    assert "accuracy" in printed[0] and printed[0] == printed[1]


def test_cli_refuses_workers_with_scheduler_and_says_what_to_install(lenet, tmp_path, capsys, monkeypatch):
    _, x, _, path, _ = lenet
    np.save(tmp_path / "batch.npy", x[:4])
    checkpoint = tmp_path / "missing.npz"
    for command in (["predict", str(path), str(tmp_path / "batch.npy")], ["evaluate", str(checkpoint)]):
        assert cli.main([*command, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert "--workers" in error and "--scheduler" in error, error

    def missing():
        raise ImportError(fd.DISTRIBUTED_EXTRA)
    monkeypatch.setattr(fd, "_require_dask", missing)
    for command in (["predict", str(path), str(tmp_path / "batch.npy")], ["evaluate", str(checkpoint)]):
        assert cli.main([*command, "--workers", "2", "--no-progress"]) == 2
        assert fd.DISTRIBUTED_EXTRA in capsys.readouterr().err
