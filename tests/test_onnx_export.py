"""``fastconv.onnx.export``: fastconv.nn models written as ONNX graphs that compute the model's outputs.

Every exported graph passes ``onnx.checker.check_model(full_check=True)``. Its outputs are compared with the
model's (eval mode, batch norm's running statistics made non-trivial by training forwards): by ONNX Runtime
(a peer) for the four models at batch 1 and 3 and for every layer type alone, and by onnx's own
``ReferenceEvaluator`` (needs only onnx) for the small models, float64 and a few layers, and by
``fastconv.onnx.load`` for the four models and every layer whose operators it runs.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import fastconv as fc  # noqa: E402
from fastconv import nn  # noqa: E402
from fastconv.onnx.export import EXPORTERS, export  # noqa: E402

MODELS = {"lenet5": (1, 28, 28), "cifar_cnn": (3, 32, 32), "resnet20": (3, 32, 32), "resnext_cifar": (3, 32, 32)}


def _trained(model: nn.Module, shape: tuple[int, ...], dtype: type = np.float32) -> nn.Module:
    """`model` after three training forwards on random batches (batch norm's running statistics move away from
    0 and 1), then in eval mode."""
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(3):
        model((rng.standard_normal((4, *shape)) * 2 + 0.5).astype(dtype))
    return model.eval()


def _model(name: str) -> nn.Module:
    fc.manual_seed(0)
    return _trained(fc.models.MODELS[name](), MODELS[name])


def _fastconv(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with fc.no_grad():
        return model(x)


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """The largest error within rtol of the largest magnitude (the relative error of the tests of fastconv.onnx)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape,
                                                                                 actual.dtype, expected.dtype)
    scale = max(float(np.abs(expected).max()), 1e-30)
    assert np.abs(actual - expected).max() <= rtol * scale, (np.abs(actual - expected).max(), scale)


@pytest.fixture
def ort():
    return pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install onnxruntime")


def _onnx_runtime(ort, proto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 2
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {proto.graph.input[0].name: x})[0]


def _reference(proto, x: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x})[0]


# ---- the four models ------------------------------------------------------------------------------------------

@pytest.mark.peers
@pytest.mark.parametrize("name", list(MODELS))
def test_models_match_onnx_runtime_at_batch_1_and_3(ort, name):
    model = _model(name)
    proto = export(model, None, (1, *MODELS[name]))
    onnx.checker.check_model(proto, full_check=True)
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        x = rng.standard_normal((batch, *MODELS[name])).astype(np.float32)
        expected = _fastconv(model, x)
        _close(_onnx_runtime(ort, proto, x), expected)
        assert np.std(expected) > 1e-3  # the weights make a difference


@pytest.mark.parametrize("name", ["lenet5", "cifar_cnn"])
def test_small_models_match_onnx_reference_evaluator(name):
    model = _model(name)
    proto = export(model, None, (2, *MODELS[name]))
    x = np.random.default_rng(2).standard_normal((3, *MODELS[name])).astype(np.float32)
    _close(_reference(proto, x), _fastconv(model, x))


def test_float64_model_gives_float64_graph_matching_reference_evaluator():
    """ONNX Runtime has no float64 Conv; the reference evaluator runs the graph in float64."""
    fc.manual_seed(0)
    model = _trained(fc.models.lenet5().to(np.float64), MODELS["lenet5"], np.float64)
    proto = export(model, None, (1, *MODELS["lenet5"]))
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.DOUBLE}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = np.random.default_rng(3).standard_normal((2, *MODELS["lenet5"]))
    _close(_reference(proto, x), _fastconv(model, x), rtol=1e-10)


def test_resnet_graph_is_named_after_the_module_paths():
    model = _model("resnet20")
    proto = export(model, None, (1, 3, 32, 32))
    nodes = {n.name: n for n in proto.graph.node}
    modules = dict(model.named_modules())
    assert nodes["3.0.body.1"].op_type == "BatchNormalization" and "3.0.body.1" in modules
    assert nodes["3.0"].op_type == "Add" and isinstance(modules["3.0"], nn.Residual)
    assert nodes["6.0.shortcut.0"].op_type == "Conv"    # stage 2 entry: a projection shortcut
    assert list(nodes["6.0.shortcut.0"].input[1:]) == ["6.0.shortcut.0.weight"]   # bias=False: no bias input
    state = model.state_dict()
    for t in proto.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), state[t.name])
    assert {n.op_type for n in proto.graph.node} == {"Conv", "BatchNormalization", "Relu", "Add",
                                                     "GlobalAveragePool", "Flatten", "Gemm"}
    assert proto.graph.output[0].name == "output" and proto.graph.node[-1].output[0] == "output"


def test_export_writes_the_file_it_returns(tmp_path):
    model = _model("lenet5")
    proto = export(model, tmp_path / "lenet5.onnx", (1, 1, 28, 28), input_name="image", output_name="logits")
    assert onnx.load(str(tmp_path / "lenet5.onnx")) == proto
    assert export(model, str(tmp_path / "again.onnx"), (1, 1, 28, 28)).SerializeToString() == \
        (tmp_path / "again.onnx").read_bytes()
    assert [v.name for v in proto.graph.input] == ["image"] and [v.name for v in proto.graph.output] == ["logits"]
    assert proto.opset_import[0].version == 17 and proto.ir_version == 8 and proto.producer_name == "fastconv"


def _attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_dynamic_batch_names_the_batch_dimension_else_fixes_it():
    model = _model("lenet5")
    proto = export(model, None, (5, 1, 28, 28))
    assert _dims(proto.graph.input[0]) == ["N", 1, 28, 28] and _dims(proto.graph.output[0]) == ["N", 10]
    fixed = export(model, None, (5, 1, 28, 28), dynamic_batch=False, opset=13)
    assert _dims(fixed.graph.input[0]) == [5, 1, 28, 28] and _dims(fixed.graph.output[0]) == [5, 10]
    assert fixed.opset_import[0].version == 13


@pytest.mark.parametrize("name", list(MODELS))
def test_load_of_export_gives_the_models_outputs(name):
    from fastconv.onnx import load
    model = _model(name)
    loaded = load(export(model, None, (1, *MODELS[name])).SerializeToString())
    x = np.random.default_rng(4).standard_normal((3, *MODELS[name])).astype(np.float32)
    _close(loaded(x), _fastconv(model, x))


# ---- each layer type alone -------------------------------------------------------------------------------------

def _randomized(model: nn.Module) -> nn.Module:
    """Batch and layer norms with random scales, shifts and running statistics (all four away from 1 and 0)."""
    rng = np.random.default_rng(5)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.data[...] = rng.uniform(0.5, 1.5, p.data.shape)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[...] = rng.uniform(-1, 1, m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2, m.num_features)
    return model.eval()


LAYERS = {  # id: (module, input shape)
    "conv": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 9, 8)),
    "conv-strided-padded-pairs": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0)), (2, 3, 9, 8)),
    "conv-same-even-kernel-dilated": (lambda: nn.Conv2d(4, 6, 4, padding="same", dilation=2, groups=2), (2, 4, 9, 8)),
    "conv-valid-no-bias": (lambda: nn.Conv2d(3, 5, 3, padding="valid", bias=False), (2, 3, 7, 7)),
    "conv-depthwise": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4), (2, 4, 6, 6)),
    "conv-transpose": (lambda: nn.ConvTranspose2d(4, 6, 3), (2, 4, 5, 5)),
    "conv-transpose-strided": (lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, output_padding=1,
                                                          groups=2, dilation=(1, 2)), (2, 4, 5, 6)),
    "conv-transpose-padded-dilated": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=(2, 3), padding=1, output_padding=1,
                                                                 dilation=(2, 1)), (2, 3, 5, 4)),
    "conv-transpose-no-bias": (lambda: nn.ConvTranspose2d(3, 2, 2, stride=2, bias=False), (2, 3, 4, 4)),
    "max-pool": (lambda: nn.MaxPool2d(2), (2, 3, 8, 7)),
    "max-pool-padded-dilated-ceil": (lambda: nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True),
                                     (2, 3, 10, 9)),
    "max-pool-ceil-last-window-dropped": (lambda: nn.MaxPool2d(2, 2, padding=1, ceil_mode=True), (2, 3, 5, 5)),
    "max-pool-ceil-window-dropped-on-one-axis-overhanging-on-the-other":
        (lambda: nn.MaxPool2d((2, 3), (3, 2), padding=1, ceil_mode=True), (2, 3, 7, 6)),
    "avg-pool": (lambda: nn.AvgPool2d(2), (2, 3, 8, 7)),
    "avg-pool-ceil-last-window-dropped": (lambda: nn.AvgPool2d(2, 2, padding=1, ceil_mode=True), (2, 3, 5, 5)),
    "avg-pool-ceil-exclude-pad-dropped-and-overhanging":
        (lambda: nn.AvgPool2d((2, 3), (3, 2), padding=1, ceil_mode=True, count_include_pad=False), (2, 3, 7, 6)),
    "avg-pool-padded-ceil": (lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), (2, 3, 8, 7)),
    "avg-pool-padded-exclude-pad": (lambda: nn.AvgPool2d((3, 2), (2, 1), padding=1, count_include_pad=False),
                                    (2, 3, 8, 7)),
    "global-avg-pool": (lambda: nn.GlobalAvgPool2d(), (2, 3, 5, 6)),
    "adaptive-avg-pool-global": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 7)),
    "adaptive-avg-pool-tiling": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 8, 9)),
    "adaptive-avg-pool-keep-width": (lambda: nn.AdaptiveAvgPool2d((2, None)), (2, 3, 6, 5)),
    "linear": (lambda: nn.Linear(7, 5), (3, 7)),
    "linear-no-bias": (lambda: nn.Linear(7, 5, bias=False), (3, 7)),
    "relu": (lambda: nn.ReLU(), (2, 3, 4, 5)),
    "leaky-relu": (lambda: nn.LeakyReLU(0.2), (2, 3, 4, 5)),
    "sigmoid": (lambda: nn.Sigmoid(), (2, 3, 4, 5)),
    "tanh": (lambda: nn.Tanh(), (2, 7)),
    "identity": (lambda: nn.Identity(), (2, 3, 4)),
    "dropout": (lambda: nn.Dropout(0.5), (2, 3, 4, 5)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 4, 5)),
    "batch-norm-2d": (lambda: nn.BatchNorm2d(3, eps=0.1), (2, 3, 4, 5)),
    "batch-norm-1d": (lambda: nn.BatchNorm1d(6), (3, 6)),
    "batch-norm-1d-sequence": (lambda: nn.BatchNorm1d(4), (3, 4, 5)),
    "layer-norm": (lambda: nn.LayerNorm(6), (3, 6)),
    "layer-norm-2-axes": (lambda: nn.LayerNorm((4, 5)), (2, 3, 4, 5)),
    "layer-norm-no-affine": (lambda: nn.LayerNorm(5, eps=1e-3, elementwise_affine=False), (2, 3, 5)),
    "layer-norm-no-bias": (lambda: nn.LayerNorm(5, bias=False), (2, 3, 5)),
    "residual-identity-shortcut": (lambda: nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())),
                                   (2, 3, 5, 5)),
    "residual-projection": (lambda: nn.Residual(nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                                nn.Sequential(nn.Conv2d(3, 4, 1, stride=2), nn.BatchNorm2d(4))),
                            (2, 3, 6, 6)),
    "relu-then-max-pool": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)), (2, 3, 7, 8)),
    "empty-sequential": (lambda: nn.Sequential(), (2, 3)),
}


def test_every_exporter_has_a_layer_case():
    covered = {type(m) for make, _ in LAYERS.values() for m in make().modules()}
    assert set(EXPORTERS) <= covered, set(EXPORTERS) - covered


def _layer_case(case: str, dtype: type = np.float32):
    make, shape = LAYERS[case]
    fc.manual_seed(0)
    model = _randomized(make().to(dtype))
    proto = export(model, None, shape)
    x = np.random.default_rng(6).standard_normal(shape).astype(dtype)
    return model, proto, x


@pytest.mark.peers
@pytest.mark.parametrize("case", list(LAYERS))
def test_each_layer_matches_onnx_runtime(ort, case):
    model, proto, x = _layer_case(case)
    assert len(proto.graph.node) >= 1
    _close(_onnx_runtime(ort, proto, x), _fastconv(model, x))
    x5 = np.random.default_rng(7).standard_normal((5, *x.shape[1:])).astype(np.float32)   # another batch
    _close(_onnx_runtime(ort, proto, x5), _fastconv(model, x5))


@pytest.mark.parametrize("case", ["conv-same-even-kernel-dilated", "conv-transpose-padded-dilated",
                                  "max-pool-padded-dilated-ceil", "max-pool-ceil-last-window-dropped",
                                  "max-pool-ceil-window-dropped-on-one-axis-overhanging-on-the-other",
                                  "avg-pool-padded-ceil", "avg-pool-ceil-last-window-dropped",
                                  "adaptive-avg-pool-tiling", "layer-norm-2-axes", "residual-projection",
                                  "batch-norm-1d-sequence"])
def test_layers_match_onnx_reference_evaluator(case):
    """(The reference evaluator of onnx 1.23 cannot run a grouped ConvTranspose: ONNX Runtime checks those.)"""
    model, proto, x = _layer_case(case)
    _close(_reference(proto, x), _fastconv(model, x))


@pytest.mark.parametrize("case", ["conv-strided-padded-pairs", "avg-pool-padded-exclude-pad", "leaky-relu",
                                  "batch-norm-1d-sequence", "residual-projection"])
def test_float64_layers_match_onnx_reference_evaluator(case):
    """Float64 throughout; ONNX's float attributes (LeakyRelu's alpha, epsilon) are float32, hence 1e-7."""
    model, proto, x = _layer_case(case, np.float64)
    assert {t.data_type for t in proto.graph.initializer} <= {onnx.TensorProto.DOUBLE}
    _close(_reference(proto, x), _fastconv(model, x), rtol=1e-7)


@pytest.mark.peers
@pytest.mark.parametrize("case", ["layer-norm-2-axes", "layer-norm-no-bias", "linear", "batch-norm-2d"])
def test_float64_layers_match_onnx_runtime(ort, case):
    """LayerNormalization computes in float64 (stash_type 11), which the reference evaluator does not run;
    ONNX Runtime has no float64 Conv or AveragePool, so these layers."""
    model, proto, x = _layer_case(case, np.float64)
    _close(_onnx_runtime(ort, proto, x), _fastconv(model, x), rtol=1e-7)


@pytest.mark.parametrize("case", list(LAYERS))
def test_each_layer_round_trips_through_fastconv_onnx_load(case):
    from fastconv.onnx import load
    from fastconv.onnx.ops import OPS
    model, proto, x = _layer_case(case)
    missing = sorted({n.op_type for n in proto.graph.node} - set(OPS))
    if missing:
        pytest.skip(f"fastconv.onnx does not run {', '.join(missing)}")
    _close(load(proto.SerializeToString())(x), _fastconv(model, x))


def test_layer_nodes_carry_the_modules_arguments():
    conv = export(nn.Conv2d(4, 6, (4, 3), padding="same", dilation=2, groups=2), None, (1, 4, 9, 9)).graph.node[0]
    assert _attributes(conv) == {"kernel_shape": [4, 3], "strides": [1, 1], "pads": [3, 2, 3, 2], "dilations": [2, 2],
                          "group": 2}
    assert conv.name == "Conv2d" and conv.input[1:] == ["weight", "bias"]   # the model itself: its type's name
    leaky = export(nn.LeakyReLU(0.25), None, (2, 3))   # no parameters: float32
    assert leaky.graph.node[0].op_type == "LeakyRelu" and _attributes(leaky.graph.node[0]) == {"alpha": 0.25}
    assert leaky.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("pool, shape, pads, ceil_mode", [
    (nn.MaxPool2d(2, padding=1), (1, 1, 5, 5), [1, 1, 1, 1], 0),
    (nn.MaxPool2d(2, padding=1, ceil_mode=True), (1, 1, 5, 5), [1, 1, 1, 1], 0),     # the 4th window dropped
    (nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), (1, 1, 8, 7), [1, 1, 1, 1], 1),  # rows: a 5th window kept
    (nn.MaxPool2d((2, 3), (3, 2), padding=1, ceil_mode=True), (1, 1, 7, 6), [1, 1, 0, 2], 0),  # dropped, kept
])
def test_pooling_ceil_mode_is_written_as_onnx_shape_inference_reads_it(pool, shape, pads, ceil_mode):
    """ONNX's shape inference (which check_model runs) does not drop a ceil_mode window starting in the padding."""
    attributes = _attributes(export(pool, None, shape).graph.node[0])
    assert attributes["pads"] == pads and attributes["ceil_mode"] == ceil_mode


# ---- what export refuses ---------------------------------------------------------------------------------------

class Scale(nn.Module):
    def forward(self, x):
        return x * 2


class MyReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x) - 1


@pytest.mark.parametrize("model, shape, words", [
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), Scale())), (1, 1, 5, 5),
     ["'1.1'", "Scale", "no ONNX export"]),
    (lambda: nn.Sequential(nn.Residual(nn.Sequential(nn.Identity(), MyReLU()))), (1, 3),
     ["'0.body.1'", "MyReLU"]),
    (lambda: Scale(), (1, 3), ["the model (Scale)"]),
    (lambda: nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), (1, 1, 4, 4),
     ["'0'", "AvgPool2d", "divisor_override"]),
    (lambda: nn.Sequential(nn.AvgPool2d((2, 3), (3, 2), padding=1, ceil_mode=True)), (1, 1, 7, 6),
     ["'0'", "AvgPool2d", "ceil_mode and count_include_pad", "count_include_pad=False"]),
    (lambda: nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d((3, 2))), (1, 1, 7, 4),
     ["'1'", "AdaptiveAvgPool2d", "do not tile", "input_shape=(1, 1, 7, 4)"]),
])
def test_unsupported_modules_raise_value_error_naming_path_and_type(model, shape, words):
    with pytest.raises(ValueError) as error:
        export(model(), None, shape)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_layer_norm_needs_opset_17():
    with pytest.raises(ValueError, match=r"'1' \(LayerNorm\).*opset>=17"):
        export(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), None, (2, 3), opset=16)
    with pytest.raises(ValueError, match="batch axis too.*dynamic_batch=False"):
        export(nn.LayerNorm((2, 3)), None, (2, 3))
    assert export(nn.LayerNorm((2, 3)), None, (2, 3), dynamic_batch=False).graph.node[0].op_type == "LayerNormalization"


@pytest.mark.parametrize("input_shape, error, words", [
    ("1x1x28x28", TypeError, ["input_shape"]),
    ((1, 1, 28.0, 28), TypeError, ["input_shape"]),
    ((1, True, 28, 28), TypeError, ["input_shape"]),
    ((), ValueError, ["input_shape"]),
    ((0, 1, 28, 28), ValueError, ["input_shape"]),
    ((1, 3, 28, 28), ValueError, ["module '0' (Conv2d)", "input_shape=(1, 3, 28, 28)"]),
    ((1, 28, 28), ValueError, ["module '0' (Conv2d)", "(N, C, H, W)", "input_shape=(1, 28, 28)"]),
    ((1, 1, 32, 32), ValueError, ["module '7' (Linear)", "(N, 400)", "input_shape=(1, 1, 32, 32)"]),
    ((1, 1, 8, 8), ValueError, ["module '3' (Conv2d)", "input_shape=(1, 1, 8, 8)"]),
])
def test_bad_input_shape_raises_naming_it(input_shape, error, words):
    with pytest.raises(error) as caught:
        export(_model("lenet5"), None, input_shape)
    assert all(word in str(caught.value) for word in words), str(caught.value)


@pytest.mark.parametrize("kwargs, error, argument", [
    ({"model": "lenet5"}, TypeError, "model"),
    ({"opset": 12}, ValueError, "opset"),
    ({"opset": 99}, ValueError, "opset"),
    ({"opset": "17"}, TypeError, "opset"),
    ({"input_name": ""}, TypeError, "input_name"),
    ({"output_name": 3}, TypeError, "output_name"),
    ({"output_name": "input"}, ValueError, "input_name and output_name"),
    ({"input_name": "3"}, ValueError, "input_name='3'"),
    ({"output_name": "0.weight"}, ValueError, "output_name='0.weight'"),
    ({"dynamic_batch": 1}, TypeError, "dynamic_batch"),
    ({"path": 3}, TypeError, "path"),
])
def test_bad_arguments_raise_naming_them(kwargs, error, argument):
    arguments = {"model": fc.models.lenet5(), "path": None, "input_shape": (1, 1, 28, 28), **kwargs}
    with pytest.raises(error, match=argument.replace("(", r"\(")):
        export(**arguments)


def test_a_model_of_two_dtypes_is_refused():
    model = fc.models.lenet5()
    model[0].bias.data = model[0].bias.data.astype(np.float64)
    with pytest.raises(ValueError, match="mixes the dtypes.*model.to"):
        export(model, None, (1, 1, 28, 28))


def test_without_onnx_the_error_says_pip_install_onnx(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)   # import onnx raises ImportError
    with pytest.raises(ImportError, match="pip install onnx"):
        export(fc.models.lenet5(), None, (1, 1, 28, 28))


def test_fc_onnx_export_is_the_function():
    assert fc.onnx.export is export and fc.onnx.export is export   # also after the submodule was imported
