"""Writing a ``fastconv.nn`` model as an ONNX graph: ``export(model, path, input_shape)``.

The graph computes what the model computes in eval mode (batch norm on its running statistics, dropout off),
whatever mode the model is in. Each module becomes at most one node named after its path in
``model.named_modules()`` ('0', '3.0.body.1', ...; the model itself, path '', by its type name), whose output
value has the same name; parameters and buffers become initializers named as in ``model.state_dict()``, in the
model's dtype (float32 or float64). Containers add no node of their own: Sequential chains its children,
Residual ends in an Add of body and shortcut. A ReLU followed by a MaxPool2d, which Sequential runs as pool
then ReLU, is written as Relu then MaxPool: the same values.

Shapes are followed from `input_shape` with fastconv's own shape rules, so an input the model would refuse
is refused here, naming the module. ONNX Runtime runs float32 graphs; it has no float64 Conv or AveragePool
(``onnx.reference.ReferenceEvaluator`` runs float64 graphs). ONNX float attributes are float32, so a float64
model's LeakyReLU slope and normalization eps are rounded to float32 in the file.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from numbers import Integral
from pathlib import Path

import numpy as np

from .. import __version__, nn
from .._checks import Pool2dShape, conv2d_shape, pool2d_shape
from ..array_ops import ops_for
from ..conv import conv_transpose2d_shape
from ..pool import adaptive_pool2d_size

MIN_OPSET = 13                # Identity, Flatten, Gemm, BatchNormalization, pooling with ceil_mode, as written here
LAYER_NORM_OPSET = 17         # LayerNormalization
ELEMENT_TYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 11}   # TensorProto FLOAT, DOUBLE

Shape = tuple[int, ...]


def _onnx():
    """The ``onnx`` package, or ImportError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ImportError("fastconv.onnx.export needs the onnx package to write ONNX files: pip install onnx") from None
    return onnx


class _Refused(ValueError):
    """A module export cannot write, its message already naming the module (containers pass it on unchanged)."""


class _Graph:
    """The nodes and initializers written so far, and what every exporter needs to know."""

    def __init__(self, onnx, root: str, dtype: np.dtype, opset: int, input_shape: Shape, dynamic_batch: bool) -> None:
        self.onnx, self.root, self.dtype, self.opset = onnx, root, dtype, opset
        self.input_shape, self.dynamic_batch = input_shape, dynamic_batch
        self.nodes: list = []
        self.initializers: list = []

    def node(self, op_type: str, path: str, inputs: list[str], **attributes: object) -> str:
        """Append the node of the module at `path`, named after it (the model itself, path '', after its type),
        its one output value named alike; returns that name."""
        name = path or self.root
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def initializer(self, name: str, array: object) -> str:
        """Append `array` (host or device) as an initializer in the model's dtype; returns its name."""
        host = np.ascontiguousarray(ops_for(array).to_host(array), dtype=self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(host, name))
        return name


Exporter = Callable[[_Graph, str, nn.Module, str, Shape], tuple[str, Shape]]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _rank(shape: Shape, ranks: tuple[int, ...], layout: str) -> None:
    if len(shape) not in ranks:
        raise ValueError(f"it takes an input {layout}, got shape {shape}")


def _virtual(shape: Shape, dtype: np.dtype) -> np.ndarray:
    """A read-only array of `shape` holding no memory, for fastconv's shape rules (they read shape and dtype)."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _pads(top_bottom: tuple[int, int], left_right: tuple[int, int]) -> list[int]:
    """ONNX pads (begin h, begin w, end h, end w) from (top, bottom) and (left, right)."""
    return [top_bottom[0], left_right[0], top_bottom[1], left_right[1]]


def _pool_attributes(rule: Pool2dShape, count_include_pad: bool = False) -> dict[str, object]:
    """kernel_shape, strides, pads and ceil_mode of the ONNX pooling that gives fastconv's windows (PyTorch's rule).

    fastconv's ceil_mode keeps a last window that reaches past the bottom/right padding, unless it would start in
    that padding. ONNX's ceil formula does not drop such a window in onnx's shape inference (ONNX Runtime does),
    so ceil_mode=1 is written only where each axis has the ceil formula's size, and ceil_mode=0 where each has the
    floor formula's. Where one axis drops a window and the other keeps an overhanging one, the end pads are
    widened instead so that the floor formula gives the size: the same values for MaxPool and for AveragePool
    without count_include_pad (padding is not counted); with it, the widened padding would be, so that is
    refused."""
    axes = list(zip((rule.h, rule.w), (rule.oh, rule.ow), rule.kernel, rule.stride, rule.padding, rule.dilation))
    attributes: dict[str, object] = {"kernel_shape": list(rule.kernel), "strides": list(rule.stride),
                                     "pads": _pads((rule.padding[0],) * 2, (rule.padding[1],) * 2)}
    spans = [(size + 2 * p - d * (k - 1) - 1, s, out) for size, out, k, s, p, d in axes]
    if all(span // s + 1 == out for span, s, out in spans):
        return {**attributes, "ceil_mode": 0}
    if all(-(-span // s) + 1 == out for span, s, out in spans):
        return {**attributes, "ceil_mode": 1}
    # how far each axis's last window reaches past the input's end: the end pad that floor needs
    reach = [(out - 1) * s + d * (k - 1) + 1 - size - p for size, out, k, s, p, d in axes]
    if count_include_pad and any(r > p for r, p in zip(reach, rule.padding)):
        raise ValueError(f"with ceil_mode and count_include_pad, its windows on the input {(rule.h, rule.w)} (one "
                         "dropped on one axis, one reaching past the padding on the other) have no ONNX equivalent: "
                         "use count_include_pad=False or another input size")
    ends = [max(r, 0) for r in reach]
    return {**attributes, "pads": [rule.padding[0], rule.padding[1], *ends], "ceil_mode": 0}


# ---- one exporter per module type: (graph, path, module, input value, input shape) -> (output value, shape) ----

def _sequential(g: _Graph, path: str, m: nn.Sequential, x: str, shape: Shape) -> tuple[str, Shape]:
    """The children in order (an empty Sequential: an Identity node)."""
    if not m.layers:
        return g.node("Identity", path, [x]), shape
    for i, layer in enumerate(m.layers):
        x, shape = _export_module(g, _join(path, str(i)), layer, x, shape)
    return x, shape


def _residual(g: _Graph, path: str, m: nn.Residual, x: str, shape: Shape) -> tuple[str, Shape]:
    """Add(body(x), shortcut(x)), the shortcut None being x itself."""
    y, y_shape = _export_module(g, _join(path, "body"), m.body, x, shape)
    s, s_shape = (x, shape) if m.shortcut is None else _export_module(g, _join(path, "shortcut"), m.shortcut, x, shape)
    if y_shape != s_shape:
        raise _Refused(f"module {path!r} (Residual): its body gives shape {y_shape} and its shortcut {s_shape} for "
                       f"input_shape={g.input_shape}; they must be equal to be added")
    return g.node("Add", path, [y, s]), y_shape


def _conv2d(g: _Graph, path: str, m: nn.Conv2d, x: str, shape: Shape) -> tuple[str, Shape]:
    """Conv with explicit pads ('same' and 'valid' resolved as fastconv pads them)."""
    _rank(shape, (4,), "(N, C, H, W)")
    rule = conv2d_shape(_virtual(shape, g.dtype), _virtual(m.weight.data.shape, g.dtype), m.stride, m.padding,
                        m.dilation, m.groups)
    inputs = [x, g.initializer(_join(path, "weight"), m.weight.data)]
    if m.bias is not None:
        inputs.append(g.initializer(_join(path, "bias"), m.bias.data))
    top, bottom, left, right = rule.padding
    return g.node("Conv", path, inputs, kernel_shape=list(m.kernel_size), strides=list(rule.stride),
                  pads=_pads((top, bottom), (left, right)), dilations=list(rule.dilation),
                  group=m.groups), rule.y_shape


def _conv_transpose2d(g: _Graph, path: str, m: nn.ConvTranspose2d, x: str, shape: Shape) -> tuple[str, Shape]:
    """ConvTranspose with symmetric pads and output_padding; the weight (in, out/groups, kh, kw) as is."""
    _rank(shape, (4,), "(N, C, H, W)")
    rule = conv_transpose2d_shape(_virtual(shape, g.dtype), _virtual(m.weight.data.shape, g.dtype), m.stride,
                                  m.padding, m.output_padding, m.groups, m.dilation)
    inputs = [x, g.initializer(_join(path, "weight"), m.weight.data)]
    if m.bias is not None:
        inputs.append(g.initializer(_join(path, "bias"), m.bias.data))
    return g.node("ConvTranspose", path, inputs, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=_pads((m.padding[0],) * 2, (m.padding[1],) * 2), output_padding=list(m.output_padding),
                  dilations=list(m.dilation), group=m.groups), rule.x_shape


def _max_pool2d(g: _Graph, path: str, m: nn.MaxPool2d, x: str, shape: Shape) -> tuple[str, Shape]:
    """MaxPool with the module's kernel, stride, padding and dilation (ceil_mode: ``_pool_attributes``)."""
    _rank(shape, (4,), "(N, C, H, W)")
    kernel_size, stride, padding, dilation, ceil_mode = m.args
    rule = pool2d_shape(_virtual(shape, g.dtype), kernel_size, stride, padding, dilation, ceil_mode)
    return g.node("MaxPool", path, [x], **_pool_attributes(rule), dilations=list(rule.dilation)), rule.y_shape


def _avg_pool2d(g: _Graph, path: str, m: nn.AvgPool2d, x: str, shape: Shape) -> tuple[str, Shape]:
    """AveragePool with count_include_pad (ceil_mode: ``_pool_attributes``); divisor_override has no ONNX
    equivalent."""
    _rank(shape, (4,), "(N, C, H, W)")
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = m.args
    if divisor_override is not None:
        raise ValueError(f"divisor_override={divisor_override!r} has no ONNX equivalent (AveragePool divides by the "
                         "window's size): use divisor_override=None to export")
    rule = pool2d_shape(_virtual(shape, g.dtype), kernel_size, stride, padding, 1, ceil_mode)
    return g.node("AveragePool", path, [x], **_pool_attributes(rule, count_include_pad),
                  count_include_pad=int(count_include_pad)), rule.y_shape


def _global_avg_pool2d(g: _Graph, path: str, m: nn.GlobalAvgPool2d, x: str, shape: Shape) -> tuple[str, Shape]:
    """GlobalAveragePool: (N, C, H, W) -> (N, C, 1, 1)."""
    _rank(shape, (4,), "(N, C, H, W)")
    return g.node("GlobalAveragePool", path, [x]), (*shape[:2], 1, 1)


def _adaptive_avg_pool2d(g: _Graph, path: str, m: nn.AdaptiveAvgPool2d, x: str, shape: Shape) -> tuple[str, Shape]:
    """GlobalAveragePool for output (1, 1); AveragePool with kernel = stride = (H/OH, W/OW) where the windows
    tile the input; refused otherwise (ONNX has no adaptive pooling)."""
    _rank(shape, (4,), "(N, C, H, W)")
    (h, w), (oh, ow) = shape[2:], adaptive_pool2d_size(m.output_size, *shape[2:])
    y_shape = (*shape[:2], oh, ow)
    if (oh, ow) == (1, 1):
        return g.node("GlobalAveragePool", path, [x]), y_shape
    if h % oh or w % ow:
        raise ValueError(f"its windows for output ({oh}, {ow}) do not tile the input ({h}, {w}), and ONNX has no "
                         "adaptive pooling: choose an input_shape whose height and width are multiples of the output's")
    kernel = [h // oh, w // ow]
    return g.node("AveragePool", path, [x], kernel_shape=kernel, strides=kernel), y_shape


def _linear(g: _Graph, path: str, m: nn.Linear, x: str, shape: Shape) -> tuple[str, Shape]:
    """Gemm(x, weight, bias) with transB=1: x (N, in) @ weight.T + bias."""
    if len(shape) != 2 or shape[1] != m.in_features:
        raise ValueError(f"it takes an input (N, {m.in_features}), got shape {shape}")
    inputs = [x, g.initializer(_join(path, "weight"), m.weight.data)]
    if m.bias is not None:
        inputs.append(g.initializer(_join(path, "bias"), m.bias.data))
    return g.node("Gemm", path, inputs, transB=1), (shape[0], m.out_features)


def _flatten(g: _Graph, path: str, m: nn.Flatten, x: str, shape: Shape) -> tuple[str, Shape]:
    """Flatten with axis 1: (N, ...) -> (N, prod(...))."""
    return g.node("Flatten", path, [x], axis=1), (shape[0], math.prod(shape[1:]))


def _batch_norm(g: _Graph, path: str, m: nn.BatchNorm1d | nn.BatchNorm2d, x: str, shape: Shape) -> tuple[str, Shape]:
    """BatchNormalization in inference form: the running statistics, weight and bias."""
    layouts = {nn.BatchNorm1d: ((2, 3), "(N, {c}) or (N, {c}, L)"), nn.BatchNorm2d: ((4,), "(N, {c}, H, W)")}
    ranks, layout = layouts[type(m)]
    layout = layout.format(c=m.num_features)
    _rank(shape, ranks, layout)
    if shape[1] != m.num_features:
        raise ValueError(f"it takes an input {layout}, got shape {shape}")
    inputs = [x] + [g.initializer(_join(path, name), array) for name, array in
                    (("weight", m.weight.data), ("bias", m.bias.data), ("running_mean", m.running_mean),
                     ("running_var", m.running_var))]
    return g.node("BatchNormalization", path, inputs, epsilon=m.eps), shape


def _layer_norm(g: _Graph, path: str, m: nn.LayerNorm, x: str, shape: Shape) -> tuple[str, Shape]:
    """LayerNormalization over the last len(normalized_shape) axes (opset 17); without elementwise_affine the
    scale is ones (ONNX requires one), named '<path>.weight' like the parameter it stands for."""
    if g.opset < LAYER_NORM_OPSET:
        raise ValueError(f"ONNX has LayerNormalization from opset {LAYER_NORM_OPSET}: export with "
                         f"opset>={LAYER_NORM_OPSET}, not opset={g.opset}")
    k = len(m.normalized_shape)
    if len(shape) < k or tuple(shape[len(shape) - k:]) != m.normalized_shape:
        raise ValueError(f"it takes an input (..., {', '.join(map(str, m.normalized_shape))}), got shape {shape}")
    if k == len(shape) and g.dynamic_batch:
        raise ValueError(f"it normalizes over every axis of input_shape={g.input_shape}, the batch axis too, which "
                         "dynamic_batch=True leaves free: export with dynamic_batch=False")
    scale = m.weight.data if m.weight is not None else np.ones(m.normalized_shape, g.dtype)
    inputs = [x, g.initializer(_join(path, "weight"), scale)]
    if m.bias is not None:
        inputs.append(g.initializer(_join(path, "bias"), m.bias.data))
    return g.node("LayerNormalization", path, inputs, axis=-k, epsilon=m.eps,
                  stash_type=ELEMENT_TYPES[g.dtype]), shape


def _leaky_relu(g: _Graph, path: str, m: nn.LeakyReLU, x: str, shape: Shape) -> tuple[str, Shape]:
    """LeakyRelu with alpha = negative_slope."""
    return g.node("LeakyRelu", path, [x], alpha=m.negative_slope), shape


def _elementwise(op_type: str) -> Exporter:
    """The exporter of a module that is one ONNX operator without attributes, keeping the shape."""
    def export_elementwise(g: _Graph, path: str, m: nn.Module, x: str, shape: Shape) -> tuple[str, Shape]:
        return g.node(op_type, path, [x]), shape
    return export_elementwise


EXPORTERS: dict[type, Exporter] = {
    nn.Sequential: _sequential,
    nn.Residual: _residual,
    nn.Conv2d: _conv2d,
    nn.ConvTranspose2d: _conv_transpose2d,
    nn.MaxPool2d: _max_pool2d,
    nn.AvgPool2d: _avg_pool2d,
    nn.GlobalAvgPool2d: _global_avg_pool2d,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool2d,
    nn.Linear: _linear,
    nn.Flatten: _flatten,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.LayerNorm: _layer_norm,
    nn.LeakyReLU: _leaky_relu,
    nn.ReLU: _elementwise("Relu"),
    nn.Sigmoid: _elementwise("Sigmoid"),
    nn.Tanh: _elementwise("Tanh"),
    nn.Identity: _elementwise("Identity"),
    nn.Dropout: _elementwise("Identity"),   # the inference graph: dropout is off
}
"""The module types export writes, by exact type (a subclass may compute something else)."""


def _export_module(g: _Graph, path: str, module: nn.Module, x: str, shape: Shape) -> tuple[str, Shape]:
    """Write `module` (at `path`) reading value `x` of `shape`: (its output value, its output shape). ValueError
    names the module for a type export does not write or an input it does not take."""
    where = f"module {path!r} ({type(module).__name__})" if path else f"the model ({type(module).__name__})"
    exporter = EXPORTERS.get(type(module))
    if exporter is None:
        supported = ", ".join(sorted(t.__name__ for t in EXPORTERS))
        raise _Refused(f"{where} has no ONNX export; export writes {supported}")
    try:
        return exporter(g, path, module, x, shape)
    except _Refused:
        raise
    except ValueError as error:
        raise _Refused(f"{where} cannot be exported for input_shape={g.input_shape}: {error}") from None


def _model_dtype(model: nn.Module) -> np.dtype:
    """The one float dtype of the model's parameters and buffers (float32 when it has none)."""
    dtypes = {np.dtype(a.dtype) for a in model.state_dict().values() if np.dtype(a.dtype).kind == "f"}
    if len(dtypes) > 1:
        raise ValueError(f"model mixes the dtypes {sorted(str(d) for d in dtypes)}: convert it to one with "
                         "model.to(np.float32) or model.to(np.float64) before exporting")
    return dtypes.pop() if dtypes else np.dtype(np.float32)


def _check_input_shape(input_shape: object) -> Shape:
    if not isinstance(input_shape, (tuple, list)) or any(isinstance(d, bool) or not isinstance(d, Integral)
                                                        for d in input_shape):
        raise TypeError(f"input_shape must be a tuple of ints (N, C, H, W for a CNN), got {input_shape!r}")
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints (batch first), got {input_shape!r}")
    return tuple(int(d) for d in input_shape)


def _check_name(argument: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{argument} must be a non-empty str, got {value!r}")
    return value


def export(model: nn.Module, path: str | os.PathLike | None, input_shape: tuple[int, ...], *, opset: int = 17,
           input_name: str = "input", output_name: str = "output", dynamic_batch: bool = True):
    """Write `model` as an ONNX model taking one input of `input_shape` (batch first) and giving one output.

    Returns the ``onnx.ModelProto`` (checked with ``onnx.checker.check_model(full_check=True)``) and writes it to
    `path` unless path is None. The graph is the model in eval mode (module docstring); with `dynamic_batch` the
    first dimension of input and output is the symbolic 'N', else input_shape[0]. `opset`: the default-domain
    operator set, from 13 (17 for LayerNorm) to the newest the installed onnx knows. Modules export does not
    write (see ``EXPORTERS``), and inputs the model does not take, raise ValueError naming the module's path and
    type; wrong arguments raise TypeError/ValueError naming the argument; without onnx, ImportError."""
    onnx = _onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    if isinstance(opset, bool) or not isinstance(opset, Integral):
        raise TypeError(f"opset must be an int, got {opset!r}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be from {MIN_OPSET} to {newest} (the installed onnx's newest), got {opset}")
    input_name, output_name = _check_name("input_name", input_name), _check_name("output_name", output_name)
    if input_name == output_name:
        raise ValueError(f"input_name and output_name must differ, both are {input_name!r}")
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {dynamic_batch!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, a path or None, got {type(path).__name__}")
    dtype = _model_dtype(model)

    g = _Graph(onnx, type(model).__name__, dtype, int(opset), shape, dynamic_batch)
    try:
        final, y_shape = _export_module(g, "", model, input_name, shape)
    except _Refused as error:
        raise ValueError(f"export: {error}") from None
    taken = {name for node in g.nodes for name in node.output} | {t.name for t in g.initializers}
    for argument, name in (("input_name", input_name), ("output_name", output_name)):
        if name in taken:
            raise ValueError(f"{argument}={name!r} is already the name of a module's output or weight in this "
                             "graph: choose another")
    for node in g.nodes:   # the last module's output value becomes the graph's output
        node.input[:] = [output_name if v == final else v for v in node.input]
        node.output[:] = [output_name if v == final else v for v in node.output]

    helper, element = onnx.helper, ELEMENT_TYPES[dtype]
    batch = ["N"] if dynamic_batch else [shape[0]]
    graph = helper.make_graph(
        g.nodes, type(model).__name__, [helper.make_tensor_value_info(input_name, element, batch + list(shape[1:]))],
        [helper.make_tensor_value_info(output_name, element, batch + list(y_shape[1:]))], g.initializers)
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastconv",
                              producer_version=__version__, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        Path(path).write_bytes(proto.SerializeToString())
    return proto
