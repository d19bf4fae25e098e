"""The nine classic CNNs of ONNX's backend test suite ("light" models, shipped in the onnx package) on fastconv.

Two checks per model:
- the suite's own: the shipped output for its input (what ``onnx.backend.test`` runs). Every weight of a light
  model is one constant (ConstantOfShape), so that output is a uniform 0.001 per class, which a wrong
  convolution can match;
- so also with random weights in place of the constants, and the logits (the input of the final Softmax) as
  the output, against ONNX Runtime with its graph optimizations off (a peer), to a relative error of 1e-4.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

import fastconv.onnx as fx  # noqa: E402
from fastconv.benchmarks.onnx_models import random_weights  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
          "vgg19", "zfnet512"]
TOLERANCE = {"zfnet512": (1e-3, 1e-7)}  # (rtol, atol) of onnx.backend.test.case.model; 1e-3, 1e-7 for all


def _proto(name: str):
    return onnx.load(str(LIGHT / f"light_{name}.onnx"))


def _dummy_input(proto) -> dict[str, np.ndarray]:
    """The input onnx.backend.test gives a light model (its generate_dummy_data with random=False)."""
    from onnx.backend.test.runner import Runner
    inits = {i.name for i in proto.graph.initializer}
    return {x.name: Runner.generate_dummy_data(x, seed=0, name="", random=False)
            for x in proto.graph.input if x.name not in inits}


@pytest.mark.parametrize("name", MODELS)
def test_light_model_gives_the_shipped_output(name):
    proto = _proto(name)
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    model = fx.load(proto.SerializeToString())
    out = model.run(_dummy_input(proto))[model.output_names[0]]
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-7)


@pytest.mark.peers
@pytest.mark.parametrize("name", MODELS)
def test_light_model_with_random_weights_matches_onnx_runtime(name):
    ort = pytest.importorskip("onnxruntime")
    proto = random_weights(_proto(name))
    blob = proto.SerializeToString()
    feeds = {k: np.random.default_rng(1).random(v.shape, np.float32) for k, v in _dummy_input(proto).items()}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 2
    expected = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    model = fx.load(blob)
    out = model.run(feeds)[model.output_names[0]]
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max(), (np.abs(out - expected).max(),
                                                                            np.abs(expected).max())
    assert np.abs(expected).max() > 1e-3 and np.std(expected) > 1e-4  # the weights really make a difference


def test_load_simplifies_the_graph():
    """resnet50: its 53 BatchNormalizations folded into their convolutions, Relus run in place, the weights'
    ConstantOfShape nodes folded into constants."""
    model = fx.load(_proto("resnet50").SerializeToString())
    ops = [n.op_type for n in model.nodes]
    assert "BatchNormalization" not in ops and "ConstantOfShape" not in ops and ops.count("Conv") == 53
    assert model.folded["batch_norm"] == 53 and model.folded["constant"] >= 239 and model.folded["relu"] >= 30
