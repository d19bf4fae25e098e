"""fastconv.onnx.load on hostile and unsupported files: one test per rule (the fuzz harness's `onnx` reader,
tests/fuzz_files.py, feeds it thousands of damaged files)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastconv.onnx as fx  # noqa: E402


def _model(nodes, inits=(), opset: int = 13, inputs=None, outputs=("y",)):
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outputs], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _external(tmp_path, location: str, nbytes: int = 24):
    """A model whose weight W (2x3 float32) is stored externally at `location`, and its path in tmp_path/model."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    w = numpy_helper.from_array(np.zeros(0, np.float32), "W")
    w.dims[:] = [2, 3]
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        w.external_data.add(key=key, value=value)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w])
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_is_read_from_the_models_folder(tmp_path):
    path = _external(tmp_path, "w.bin")
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    (path.parent / "w.bin").write_bytes(weights.tobytes())
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(fx.load(path)(x), x @ weights)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "link.bin", "sub/../../secret.bin", ""])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\1" * 24)
    path = _external(tmp_path, location)
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ValueError, match="external data") as error:
        fx.load(path)
    assert str(path) in str(error.value)


def test_external_data_of_another_size_or_from_bytes_is_refused(tmp_path):
    path = _external(tmp_path, "w.bin", nbytes=4096)
    (path.parent / "w.bin").write_bytes(b"\0" * 24)
    with pytest.raises(ValueError, match="exactly 24 bytes"):
        fx.load(path)
    path = _external(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="holds only 8"):
        fx.load(path)
    with pytest.raises(ValueError, match="given as bytes"):
        fx.load(path.read_bytes())


def test_truncated_and_garbage_files_are_refused(tmp_path):
    blob = _model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString()
    for i, bad in enumerate([blob[:len(blob) // 2], b"\x08\x07garbage", b"", b"\xff" * 64]):
        path = tmp_path / f"bad{i}.onnx"
        path.write_bytes(bad)
        with pytest.raises(ValueError, match="not an ONNX model") as error:
            fx.load(path)
        assert str(path) in str(error.value)


def test_every_unsupported_operator_is_listed_at_once():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"), helper.make_node("Foo", ["a"], ["b"], name="first"),
             helper.make_node("Loop", ["b"], ["c"], name="second"),
             helper.make_node("Relu", ["c"], ["y"], name="other_domain", domain="com.example")]
    with pytest.raises(ValueError, match=r"3 node\(s\).*opset 13: Foo \(node 'first'\), Loop \(node 'second'\), "
                                         r"Relu \(node 'other_domain'\)"):
        fx.load(_model(nodes).SerializeToString())


@pytest.mark.parametrize("opset", [6, 22])
def test_opsets_outside_7_to_21_are_refused(opset):
    with pytest.raises(ValueError, match=f"opset {opset} is outside the 7 to 21"):
        fx.load(_model([helper.make_node("Relu", ["x"], ["y"])], opset=opset).SerializeToString())


def test_cycles_missing_inputs_and_twice_produced_values_are_refused():
    cycle = [helper.make_node("Relu", ["b"], ["a"], name="r1"), helper.make_node("Relu", ["a"], ["b"], name="r2"),
             helper.make_node("Add", ["x", "b"], ["y"], name="add")]
    with pytest.raises(ValueError, match="cycle through nodes"):
        fx.load(_model(cycle).SerializeToString())
    with pytest.raises(ValueError, match="reads 'nowhere'"):
        fx.load(_model([helper.make_node("Add", ["x", "nowhere"], ["y"], name="add")]).SerializeToString())
    twice = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ValueError, match="produced twice"):
        fx.load(_model(twice).SerializeToString())


def test_tensors_whose_data_does_not_match_their_dims_are_refused():
    w = numpy_helper.from_array(np.zeros((2, 3), np.float32), "W")
    w.dims[:] = [2**10, 2**10]
    with pytest.raises(ValueError, match="declares 1048576 values of float32 but holds 24 bytes"):
        fx.load(_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w]).SerializeToString())
    w.dims[:] = [2**20, 2**20]
    with pytest.raises(ValueError, match="declares 4398046511104 bytes, more than"):
        fx.load(_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w]).SerializeToString())


def test_constants_beyond_the_budget_are_refused_before_they_are_made():
    shape = numpy_helper.from_array(np.array([2**16, 2**16], np.int64), "s")
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["W"]), helper.make_node("MatMul", ["x", "W"], ["y"])]
    with pytest.raises(ValueError, match="max_constant_bytes"):
        fx.load(_model(nodes, [shape]).SerializeToString(), max_constant_bytes=2**20)


def test_inputs_are_checked_against_the_declared_type():
    model = fx.load(_model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString())
    np.testing.assert_array_equal(model(np.array([[-1, 2]], np.float32)), [[0, 2]])
    with pytest.raises(TypeError, match="must be float32, got float64"):
        model(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"must have shape \?x2"):
        model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="missing"):
        model.run({})
