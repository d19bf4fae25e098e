"""What ``fastconv.onnx`` fuses at load (``fastconv/onnx/fused.py``, ``model._fold_channel_affine``): chains of
per-channel affine nodes folded into a Conv or run as one ScaleShift pass, Add (+ Relu) as one AddRelu pass, results
written into inputs that die: each graph against its nodes run one by one, unfused (``fastconv.onnx.ops``, which
ONNX's node test cases check; ONNX's ReferenceEvaluator gets this file's BatchNormalization wrong, ONNX Runtime
agrees with both), and the fallbacks where the shapes that arrive are not those the pattern assumed."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastconv.onnx as fx  # noqa: E402
from fastconv.onnx.graph import read  # noqa: E402
from fastconv.onnx.ops import OPS  # noqa: E402

RNG = np.random.default_rng(7)


def _model(nodes, inits, inputs, outputs=("y",), opset=13):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                                           for name in inputs],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _unfused(blob, feeds):
    """The graph's outputs, its nodes run one by one as the file lists them."""
    graph = read(blob, OPS)
    values = {**graph.constants, **{k: v.copy() for k, v in feeds.items()}}
    for node in graph.nodes:
        outputs = OPS[node.op_type].run([values[n] if n else None for n in node.inputs], node.attributes,
                                        graph.opset, len(node.outputs))
        values.update(zip(node.outputs, outputs))
    return [values[name] for name in graph.outputs]


def _check(blob, feeds, rtol=1e-5, atol=1e-6):
    model = fx.load(blob)
    got = model.run(dict(feeds))
    for name, value in zip(model.output_names, _unfused(blob, feeds)):
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol)
    return model


def _bn_params(c, prefix):
    return {f"{prefix}_s": RNG.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}_b": RNG.standard_normal(c).astype(np.float32),
            f"{prefix}_m": RNG.standard_normal(c).astype(np.float32),
            f"{prefix}_v": RNG.uniform(0.5, 1.5, c).astype(np.float32)}


def _densenet_block(c=5):
    """DenseNet's pre-activation: BatchNormalization, Mul, Add (Caffe's Scale), Relu, on a Concat of the input and
    a Conv's output (so that nothing before the chain is a Conv), then a Conv, Mul, Add, Relu (folded into it)."""
    inits = {**_bn_params(2 * c, "bn"), "scale": RNG.uniform(0.5, 1.5, (2 * c, 1, 1)).astype(np.float32),
             "shift": RNG.standard_normal((2 * c, 1, 1)).astype(np.float32),
             "w0": RNG.standard_normal((c, c, 3, 3)).astype(np.float32),
             "w1": RNG.standard_normal((4, 2 * c, 1, 1)).astype(np.float32),
             "s1": RNG.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32), "t1": np.float32([0.5])}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["x", "c0"], ["cat"], axis=1),
             helper.make_node("BatchNormalization", ["cat", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
             helper.make_node("Mul", ["bn", "scale"], ["m"]),
             helper.make_node("Add", ["shift", "m"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["c1"]),
             helper.make_node("Mul", ["c1", "s1"], ["m1"]),
             helper.make_node("Sub", ["m1", "t1"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    return _model(nodes, inits, ["x"])


def test_affine_chains_fold_into_a_conv_or_run_as_one_pass():
    blob = _densenet_block()
    model = _check(blob, {"x": RNG.standard_normal((2, 5, 6, 7)).astype(np.float32)})
    assert [n.op_type for n in model.nodes] == ["Conv", "Concat", "ScaleShift", "Conv"]
    assert model.folded["scale_shift"] == 3 and model.folded["affine"] == 2 and model.folded["relu"] == 2
    assert model.nodes[2].fused.relu and model.nodes[3].relu_in_place


def test_nan_and_inf_pass_through_the_fused_relu_as_in_the_nodes():
    blob = _densenet_block()
    x = RNG.standard_normal((1, 5, 4, 4)).astype(np.float32)
    x[0, 1, 2, 2], x[0, 3, 0, 1] = np.nan, np.inf
    got = fx.load(blob).run({"x": x})["y"]
    expected = _unfused(blob, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(expected), rtol=1e-5, atol=1e-5)


def test_a_chain_whose_constants_assume_another_rank_runs_its_nodes():
    """(C, 1, 1) constants broadcast per channel only for 4-D inputs: a 3-D input gets the nodes' own broadcast
    (and a shape the nodes refuse, their error)."""
    inits = {"s": RNG.uniform(0.5, 1.5, (3, 1, 1)).astype(np.float32),
             "t": RNG.standard_normal((3, 1, 1)).astype(np.float32)}
    blob = _model([helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
                   helper.make_node("Relu", ["a"], ["y"])], inits, ["x"])
    model = _check(blob, {"x": RNG.standard_normal((3, 4, 5)).astype(np.float32)})
    assert [n.op_type for n in model.nodes] == ["ScaleShift"]
    _check(blob, {"x": RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)})
    with pytest.raises(ValueError, match="broadcast"):
        model.run({"x": RNG.standard_normal((2, 4, 4, 5)).astype(np.float32)})


def test_add_relu_writes_into_a_dying_input_but_never_into_a_live_view():
    """a = Relu(x) and its Reshape r (a view of a) are both read after the Add of a and b: the Add must not write
    into a; the second Add may write into its dying inputs."""
    inits = {"shape": np.array([2, 3, 16], np.int64)}
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Relu", ["s"], ["sr"]),
             helper.make_node("Tanh", ["r"], ["rs"]),
             helper.make_node("Flatten", ["sr"], ["f"], axis=1),
             helper.make_node("Flatten", ["rs"], ["g"], axis=1),
             helper.make_node("Add", ["f", "g"], ["y"])]
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    model = _check(_model(nodes, inits, ["x"]), {"x": x})
    assert "AddRelu" in [n.op_type for n in model.nodes]
    before = x.copy()
    model.run({"x": x})
    np.testing.assert_array_equal(x, before)  # a graph input is never written


def test_add_of_broadcast_shapes_runs_the_node():
    blob = _model([helper.make_node("Add", ["x", "z"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], {},
                  ["x", "z"])
    model = _check(blob, {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32),
                          "z": RNG.standard_normal((3, 1)).astype(np.float32)})
    assert [n.op_type for n in model.nodes] == ["AddRelu"]
    with pytest.raises(ValueError, match="Add: shapes"):
        model.run({"x": np.zeros((2, 3), np.float32), "z": np.zeros((4, 1, 2), np.float32)})


def test_batch_normalization_of_a_graph_input_is_one_pass_and_leaves_the_input_alone():
    inits = _bn_params(4, "bn")
    blob = _model([helper.make_node("BatchNormalization", ["x", "bn_s", "bn_b", "bn_m", "bn_v"], ["y"])], inits,
                  ["x"])
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)  # BatchNormalization reads any rank from 2
    before = x.copy()
    model = _check(blob, {"x": x})
    assert [n.op_type for n in model.nodes] == ["ScaleShift"]
    np.testing.assert_array_equal(x, before)
    _check(blob, {"x": RNG.standard_normal((3, 4)).astype(np.float32)})
