"""fastconv.onnx's operators (``fastconv.onnx.ops.OPS``) on ONNX's own node test cases, through the Backend.

Every case of ``onnx.backend.test.case.node`` about an operator of OPS is run: the cases named for it
(test_<op>, test_<op>_*, BatchNormalization's test_batchnorm_*), the other cases whose graph is one node of it
(test_basic_conv_*, test_edge_pad, ...) and the *_expanded variants of both (graphs of other operators). Each
case either passes (the outputs' dtypes and values, within the case's rtol/atol) or is unsupported with a clear
error (``ops.UnsupportedCase`` naming the operator: a 1-D or 3-D form, a dtype the operator does not take here;
or load's ValueError for operators or types fastconv does not read). Anything else fails the operator's test.

Most cases declare opset 22 to 28, beyond the 7 to 21 fastconv runs. Each is run at opset 21 when every operator
in it has the same signature (attributes with their defaults, inputs and outputs) at its declared opset as at
21, which is so for all of OPS (their versions after 21 add types only); it is noted "at opset 21".

    python -m tests.test_onnx_ops     # the table: passed / unsupported / failed by operator

The unit tests after it check, against ``onnx.reference.ReferenceEvaluator`` on one-node models, what the node
cases leave out: auto_pad with strides and dilations, uneven pads, MaxPool's Indices, the forms of the older
opsets, dtypes kept and the errors.
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import defs, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from fastconv.onnx.backend import Backend  # noqa: E402
from fastconv.onnx.graph import MAX_OPSET  # noqa: E402
from fastconv.onnx.ops import OPS, UnsupportedCase  # noqa: E402

CASE_STEMS = {op: op.lower() for op in OPS} | {"BatchNormalization": "batchnorm"}
# load's ValueError for what fastconv does not read or run (graph.read); anything else is a failure
UNSUPPORTED_AT_LOAD = re.compile(r"operators fastconv does not run|fastconv does not read|a type fastconv reads")


@dataclass(frozen=True)
class Outcome:
    case: str
    op: str
    status: str  # "passed", "unsupported" or "failed"
    detail: str = ""


def _operator_of(case, selected: dict[str, str]) -> str | None:
    """The operator of OPS a case is about, or None (see the module's docstring)."""
    if "_expanded" in case.name:
        return selected.get(case.name.split("_expanded")[0])
    nodes = case.model.graph.node
    if len(nodes) == 1 and nodes[0].op_type in OPS and nodes[0].domain in ("", "ai.onnx"):
        return nodes[0].op_type
    named = [op for op, stem in CASE_STEMS.items() if re.match(rf"test_{stem}(_|$)", case.name)]
    return max(named, key=len) if named else None


def _signature(schema) -> tuple:
    attributes = sorted((a.name, a.type, a.required, a.default_value.SerializeToString())
                        for a in schema.attributes.values())
    return (attributes, [(i.name, i.option) for i in schema.inputs], [(o.name, o.option) for o in schema.outputs])


def _at_supported_opset(model):
    """(the model, note): at opset 21 when its opset is higher and every node's operator has the same signature
    there; else as it is (load then refuses the opset, and the case fails)."""
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset <= MAX_OPSET:
        return model, ""
    for node in model.graph.node:
        try:
            same = _signature(defs.get_schema(node.op_type, opset, node.domain)) == \
                _signature(defs.get_schema(node.op_type, MAX_OPSET, node.domain))
        except defs.SchemaError:
            same = False
        if not same:
            return model, ""
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    for o in lowered.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = MAX_OPSET
    return lowered, f"at opset {MAX_OPSET} (declared {opset})"


def _run_case(case, op: str) -> Outcome:
    model, note = _at_supported_opset(case.model)
    try:
        rep = Backend.prepare(model)
        for inputs, expected in case.data_sets:
            outputs = rep.run(list(inputs))
            assert len(outputs) == len(expected), f"{len(outputs)} outputs, expected {len(expected)}"
            for got, want in zip(outputs, expected):
                assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
                np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)
    except UnsupportedCase as error:
        if str(error).strip() and op in str(error):
            return Outcome(case.name, op, "unsupported", str(error))
        return Outcome(case.name, op, "failed", f"UnsupportedCase without naming {op}: {error!r}")
    except ValueError as error:
        if UNSUPPORTED_AT_LOAD.search(str(error)):
            return Outcome(case.name, op, "unsupported", str(error))
        return Outcome(case.name, op, "failed", f"ValueError: {error}")
    except Exception as error:  # noqa: BLE001 (an assertion, or any error, is this case's failure)
        return Outcome(case.name, op, "failed", f"{type(error).__name__}: {str(error)[:500]}")
    return Outcome(case.name, op, "passed", note)


@functools.cache
def outcomes() -> tuple[Outcome, ...]:
    """Every node case about an operator of OPS, run once per process (collecting them takes about 9 s)."""
    from onnx.backend.test.case.node import collect_testcases
    with np.errstate(all="ignore"):  # the cases' own generators divide by zero on purpose
        cases = [c for c in collect_testcases() if c.model is not None and c.data_sets]
    selected: dict[str, str] = {}
    for case in cases:
        if "_expanded" not in case.name and (op := _operator_of(case, selected)):
            selected[case.name] = op
    chosen = [(case, _operator_of(case, selected)) for case in cases]
    return tuple(_run_case(case, op) for case, op in chosen if op)


def summary(results: tuple[Outcome, ...] | None = None) -> str:
    """A table of passed / unsupported / failed cases by operator, then the unsupported and failed cases."""
    results = outcomes() if results is None else results
    lines = [f"{'operator':20} {'passed':>6} {'unsupported':>11} {'failed':>6}   (passed at opset 21, declared later)"]
    for op in [*sorted(OPS), None]:
        mine = [r for r in results if op is None or r.op == op]
        counts = [sum(r.status == s for r in mine) for s in ("passed", "unsupported", "failed")]
        lowered = sum(r.status == "passed" and r.detail.startswith("at opset") for r in mine)
        lines.append(f"{op or 'total':20} {counts[0]:6} {counts[1]:11} {counts[2]:6}   ({lowered})")
    for status in ("unsupported", "failed"):
        lines += ["", f"{status}:"] + [f"  {r.case} ({r.op}): {r.detail.splitlines()[0][:160]}"
                                       for r in results if r.status == status]
    return "\n".join(lines)


@pytest.mark.parametrize("op", sorted(OPS))
def test_node_cases(op):
    """No case of `op` fails, and at least one runs and passes."""
    mine = [r for r in outcomes() if r.op == op]
    failed = [f"{r.case}: {r.detail}" for r in mine if r.status == "failed"]
    assert not failed, "\n".join(failed)
    assert any(r.status == "passed" for r in mine), f"no node case of {op} passed: {[r.case for r in mine]}"


# ---- unit tests: one-node models against ONNX's reference evaluator ----------------------------------------------

def _model(op: str, inputs: dict[str, np.ndarray], outputs: int | list[str] = 1, opset: int = MAX_OPSET,
           **attributes):
    """A one-node model of `op` on graph inputs `inputs` (name -> array; '' for an omitted input)."""
    names = list(outputs) if isinstance(outputs, list) else [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, list(inputs), names, **attributes)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for name, a in inputs.items() if name],
        [helper.make_empty_tensor_value_info(name) for name in names if name])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _onnxruntime(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check(op: str, inputs: dict[str, np.ndarray], outputs: int | list[str] = 1, opset: int = MAX_OPSET,
           rtol: float = 1e-5, oracle: str = "reference", **attributes) -> list[np.ndarray]:
    """Run the one-node model on fastconv and on ReferenceEvaluator (or ONNX Runtime, where the reference
    departs from the specification): same dtypes, shapes and values."""
    model = _model(op, inputs, outputs, opset, **attributes)
    feeds = {name: a for name, a in inputs.items() if name}
    got = Backend.prepare(model).run(feeds)
    want = ReferenceEvaluator(model).run(None, feeds) if oracle == "reference" else _onnxruntime(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)
    return got


def _random(*shape: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_auto_pad_with_stride_and_dilation(auto_pad, dtype):
    x, w, b = _random(2, 4, 9, 8, dtype=dtype), _random(6, 2, 3, 2, dtype=dtype, seed=1), _random(6, dtype=dtype)
    y, = _check("Conv", {"x": x, "w": w, "b": b}, auto_pad=auto_pad, strides=[2, 3], dilations=[2, 1], group=2)
    if auto_pad != "VALID":
        assert y.shape == (2, 6, 5, 3)  # ceil(9 / 2), ceil(8 / 3)


def test_conv_same_lower_puts_the_odd_pad_first():
    x, w = np.zeros((1, 1, 4, 4), np.float32), np.ones((1, 1, 2, 2), np.float32)
    x[0, 0, 0, 0] = 1
    lower = Backend.prepare(_model("Conv", {"x": x, "w": w}, auto_pad="SAME_LOWER")).run([x, w])[0]
    upper = Backend.prepare(_model("Conv", {"x": x, "w": w}, auto_pad="SAME_UPPER")).run([x, w])[0]
    assert lower[0, 0, 0, 0] == 1 and lower[0, 0, 1, 1] == 1 and upper[0, 0, 0, 0] == 1 and upper[0, 0, 1, 1] == 0


@pytest.mark.parametrize("pads", [[1, 0, 0, 2], [0, 2, 1, 0], [2, 2, 0, 0]])
def test_conv_uneven_pads(pads):
    _check("Conv", {"x": _random(1, 3, 7, 6), "w": _random(4, 3, 3, 3, seed=1)}, pads=pads, strides=[2, 1])


@pytest.mark.parametrize("pads, strides, storage_order", [
    ([1, 0, 0, 1], [2, 2], 0), ([0, 1, 1, 0], [2, 1], 1), ([1, 1, 1, 1], [2, 2], 1), ([2, 1, 2, 0], [2, 2], 0)])
def test_max_pool_indices_with_padding(pads, strides, storage_order):
    x = _random(2, 3, 6, 5)
    y, indices = _check("MaxPool", {"x": x}, 2, kernel_shape=[3, 2], pads=pads, strides=strides,
                        storage_order=storage_order)
    assert indices.dtype == np.int64
    flat = x.ravel() if storage_order == 0 else x.transpose(0, 1, 3, 2).ravel()
    np.testing.assert_array_equal(flat[indices], y)


@pytest.mark.parametrize("attributes", [
    {"pads": [1, 0, 0, 1], "strides": [2, 2], "ceil_mode": 1},
    {"pads": [2, 0, 1, 1], "strides": [3, 2], "ceil_mode": 1, "dilations": [2, 1]},
    {"pads": [0, 0, 1, 1], "strides": [2, 2], "dilations": [2, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 1]},
])
def test_max_pool_forms(attributes):
    _check("MaxPool", {"x": _random(1, 2, 7, 6)}, kernel_shape=[3, 3], **attributes)


def test_max_pool_same_lower_with_stride():
    """Output ceil(H / stride), as the specification and ONNX Runtime say (ReferenceEvaluator's MaxPool takes
    floor(H / stride) for SAME_LOWER)."""
    y, indices = _check("MaxPool", {"x": _random(1, 2, 7, 6)}, 2, kernel_shape=[3, 3], auto_pad="SAME_LOWER",
                        strides=[2, 2], oracle="onnxruntime")
    assert y.shape == (1, 2, 4, 3)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("attributes", [
    {"pads": [1, 0, 0, 1], "strides": [2, 2]},
    {"pads": [2, 1, 2, 1], "strides": [1, 2]},
    {"pads": [1, 1, 1, 1], "strides": [2, 2], "dilations": [2, 1]},
    {"pads": [0, 1, 1, 0], "strides": [2, 2], "ceil_mode": 1},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
])
def test_average_pool_forms(count_include_pad, attributes):
    _check("AveragePool", {"x": _random(2, 2, 7, 6)}, kernel_shape=[3, 3], count_include_pad=count_include_pad,
           **attributes)


@pytest.mark.parametrize("opset, split", [(11, [1, 4]), (13, None), (18, None)])
def test_split_forms(opset, split):
    x = _random(5, 6)
    inputs = {"x": x} if split is None or opset < 13 else {"x": x, "split": np.array(split, np.int64)}
    extra = {"split": split} if opset < 13 and split else {}
    count = 2 if split else 3 if opset < 18 else 4
    parts = _check("Split", inputs, count, opset=opset, axis=1 if split is None else 0,
                   **extra, **({"num_outputs": 4} if opset >= 18 else {}))
    assert [p.shape for p in parts] == ([(1, 6), (4, 6)] if split else [(5, 2)] * 3 if opset < 18 else
                                        [(5, 2), (5, 2), (5, 2), (5, 0)])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset, axis", [(11, 1), (11, -2), (13, 1), (13, -1)])
def test_softmax_coerced_to_2d_before_opset_13(op, opset, axis):
    """Against ONNX Runtime: ReferenceEvaluator normalizes along axis at every opset."""
    _check(op, {"x": _random(2, 3, 4)}, opset=opset, axis=axis, oracle="onnxruntime")


def test_older_forms_of_clip_pad_squeeze_unsqueeze_dropout():
    x = _random(2, 1, 3)
    assert _check("Clip", {"x": x}, opset=7, min=-0.5, max=0.25)[0].dtype == np.float32
    assert _check("Pad", {"x": x}, opset=7, pads=[0, 0, 1, 1, 0, 2], mode="constant", value=1.5)[0].dtype == \
        np.float32
    _check("Pad", {"x": x}, opset=10, pads=[0, 0, 2, 0, 0, 2], mode="reflect")
    _check("Squeeze", {"x": x}, opset=11, axes=[-2])
    _check("Unsqueeze", {"x": x}, opset=11, axes=[0, -1])
    y, mask = Backend.prepare(_model("Dropout", {"x": x}, 2, opset=7, ratio=0.3)).run([x])
    assert y is x or np.array_equal(y, x)
    assert mask.dtype == np.float32 and (mask == 1).all()  # Dropout-7's mask has x's type, bool from opset 10


def test_newer_forms_of_clip_and_pad():
    x = _random(2, 3, 4)
    _check("Clip", {"x": x, "": None, "hi": np.array(0.1, np.float32)}, opset=13)
    _check("Pad", {"x": x, "pads": np.array([1, 1, 2, 0], np.int64), "v": np.array(2, np.float32),
                   "axes": np.array([0, -1], np.int64)}, opset=18)
    # negative pads cut (against ONNX Runtime: ReferenceEvaluator refuses them)
    _check("Pad", {"x": x, "pads": np.array([1, -1, 2, -2], np.int64), "v": np.array(2, np.float32),
                   "axes": np.array([0, 2], np.int64)}, opset=18, oracle="onnxruntime")
    _check("Pad", {"x": x, "pads": np.array([0, 2, 1, 0, 1, 3], np.int64)}, opset=19, mode="wrap")


@pytest.mark.parametrize("op, inputs, attributes", [
    ("Gemm", {"a": _random(3, 4), "b": _random(5, 4, seed=1), "c": _random(5, seed=2)},
     {"alpha": 0.5, "beta": 2.0, "transB": 1}),
    ("MatMul", {"a": _random(2, 3, 4), "b": _random(4, 5, seed=1)}, {}),
    ("LeakyRelu", {"x": _random(3, 4)}, {"alpha": 0.3}),
    ("HardSigmoid", {"x": _random(3, 4)}, {"alpha": 0.3, "beta": 0.4}),
    ("BatchNormalization", {"x": _random(2, 3, 4), "s": _random(3, seed=1), "b": _random(3, seed=2),
                            "m": _random(3, seed=3), "v": np.abs(_random(3, seed=4))}, {"epsilon": 1e-3}),
    # an even size (the window reaches one channel further after than before); batch = channels, as
    # ReferenceEvaluator's LRN loops over the batch where it means the channels
    ("LRN", {"x": _random(5, 5, 3, 3)}, {"size": 4, "alpha": 0.01}),
])
def test_float32_stays_float32(op, inputs, attributes):
    y, = _check(op, inputs, **attributes)
    assert y.dtype == np.float32


@pytest.mark.parametrize("op, inputs, attributes, words", [
    ("Conv", {"x": _random(1, 2, 5), "w": _random(3, 2, 3)}, {}, "1-D form"),
    ("MaxPool", {"x": _random(1, 2, 3, 4, 5)}, {"kernel_shape": [2, 2, 2]}, "3-D form"),
    ("MaxPool", {"x": _random(1, 2, 4, 4).astype(np.float16)}, {"kernel_shape": [2, 2]}, "dtype float16"),
    ("BatchNormalization", {"x": _random(2, 3, 4, 4), "s": _random(3), "b": _random(3), "m": _random(3),
                            "v": np.ones(3, np.float32)}, {"training_mode": 1}, "training"),
])
def test_unsupported_cases_say_why(op, inputs, attributes, words):
    with pytest.raises(UnsupportedCase, match=f"{op}.*{words}"):
        Backend.prepare(_model(op, inputs, **attributes)).run(inputs)


@pytest.mark.parametrize("op, attributes, words", [
    ("Conv", {"strides": [0, 1]}, "attribute strides must be at least 1"),
    ("Conv", {"auto_pad": "SAME"}, "attribute auto_pad must be one of"),
    ("Conv", {"pads": [1, 1]}, "attribute pads must have 4 values"),
    ("Conv", {"kernel_shape": [2, 2]}, "kernel_shape \\[2, 2\\] is not the weight's"),
    ("Conv", {"auto_pad": "VALID", "pads": [1, 1, 1, 1]}, "cannot be used with auto_pad"),
])
def test_malformed_attributes_name_op_and_attribute(op, attributes, words):
    inputs = {"x": _random(1, 2, 5, 5), "w": _random(3, 2, 3, 3)}
    with pytest.raises(ValueError, match=f"{op}.*{words}"):
        Backend.prepare(_model(op, inputs, **attributes)).run(inputs)


def test_since_is_the_version_at_opset_21():
    wrong = {op: (d.since, defs.get_schema(op, MAX_OPSET).since_version) for op, d in OPS.items()
             if d.since != defs.get_schema(op, MAX_OPSET).since_version}
    assert not wrong, wrong


def test_backend_devices_and_run_node():
    assert Backend.supports_device("CPU") and not Backend.supports_device("CUDA")
    node = helper.make_node("Add", ["a", "a"], ["y"])
    a = _random(2, 3)
    y, = Backend.run_node(node, [a, a])
    np.testing.assert_array_equal(y, a + a)


if __name__ == "__main__":
    start = time.perf_counter()
    print(summary())
    print(f"\n({time.perf_counter() - start:.1f} s)")
