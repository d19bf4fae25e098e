"""The whole networks of the benchmark suite's "models" suite: ONNX's "light" models (shipped in the onnx package
for its backend tests), made runnable for a benchmark.

A light model's weights are ConstantOfShape nodes (every weight one constant, so the shipped output is a uniform
0.001 per class). ``random_weights`` puts random arrays in their place, as initializers, so that no runtime pays
for generating weights when it runs the model, sets the batch, and makes the logits the output; ``prepared``
writes such a model to a file once and counts its FLOPs (``flops``), for the benchmark workers, which get the
file's path (the fastconv worker loads it with ``fastconv.onnx.load``, the ONNX Runtime worker in an
``InferenceSession``). Needs the ``onnx`` package (NumPy and onnx only: no fastconv, no ONNX Runtime).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_model(name: str) -> onnx.ModelProto:
    """ONNX's light model ``light_<name>.onnx`` (e.g. "resnet50", "bvlc_alexnet") as shipped."""
    return onnx.load(str(LIGHT / f"light_{name}.onnx"))


def random_weights(proto: onnx.ModelProto, seed: int = 0, batch: int = 1, logits: bool = True) -> onnx.ModelProto:
    """`proto` with every weight random, for a batch of `batch` images.

    Weights: ConstantOfShape outputs and float initializers become initializers drawn from
    ``numpy.random.default_rng(seed)``: scales and variances (a BatchNormalization's inputs 1 and 4, what a Mul
    reads, directly or through an Unsqueeze/Reshape) uniform in [0.5, 1.5], kernels and matrices He-scaled normal
    (std sqrt(2 / fan-in), fan-in the product of all dimensions but the first), other vectors normal with std 0.1.
    The same seed gives the same weights at every batch.

    Batch: the input's first dimension becomes `batch`, and so does the first entry of each Reshape's shape
    constant that is 1 where the Reshape reads an activation (the Reshapes of a channel shuffle and the one
    before the classifier; the light models run one image). Output: with `logits`, the input of the last
    Softmax (the graph's output where it has none), else the graph's output; its shape left undeclared. The
    initializers nothing reads any more (the shapes of the ConstantOfShape nodes) are left out, and the IR version
    is at least 4 (where initializers need not be graph inputs), as ONNX Runtime requires.
    """
    rng = np.random.default_rng(seed)
    graph = proto.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append((node.op_type, k))

    def value(name: str, shape: tuple) -> np.ndarray:
        uses = readers.get(name, [])
        via = [r for r in uses if r[0] in ("Unsqueeze", "Reshape")]
        if via:  # decomposed batch norm: Unsqueeze(scale) -> Mul
            node = next(n for n in graph.node if name in n.input)
            uses = readers.get(node.output[0], [])
        if any(op == "BatchNormalization" and k in (1, 4) for op, k in uses) or any(op == "Mul" for op, _ in uses):
            return rng.uniform(0.5, 1.5, shape)
        if len(shape) >= 2:
            return rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))
        return rng.standard_normal(shape) * 0.1

    new_nodes, new_inits = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in constants:
            shape = tuple(int(d) for d in constants[node.input[0]])
            new_inits.append(numpy_helper.from_array(value(node.output[0], shape).astype(np.float32), node.output[0]))
        else:
            new_nodes.append(node)
    for t in graph.initializer:
        array = constants[t.name]
        if array.dtype == np.float32 and t.name in readers and array.ndim >= 1:
            new_inits.append(numpy_helper.from_array(value(t.name, array.shape).astype(np.float32), t.name))
        else:
            new_inits.append(t)
    read = {name for node in new_nodes for name in node.input}
    new_inits = [t for t in new_inits if t.name in read]  # not the shapes of the ConstantOfShape nodes replaced
    if batch != 1:
        new_inits = _batched_reshapes(new_nodes, new_inits, batch)
    softmax = [n for n in new_nodes if n.op_type == "Softmax"]
    output = softmax[-1].input[0] if softmax and logits else graph.output[0].name
    inputs = []
    for x in graph.input:  # the data (IR version 3 listed the initializers as inputs too)
        if x.name not in constants and x.name not in {t.name for t in new_inits}:
            x = onnx.ValueInfoProto.FromString(x.SerializeToString())
            x.type.tensor_type.shape.dim[0].dim_value = batch
            inputs.append(x)
    new_graph = helper.make_graph(new_nodes, graph.name, inputs,
                                  [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)], new_inits)
    # IR version 4 at least: before it, every initializer had to be a graph input too
    return helper.make_model(new_graph, opset_imports=proto.opset_import, ir_version=max(4, proto.ir_version))


def _batched_reshapes(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
                      batch: int) -> list[onnx.TensorProto]:
    """`inits` with the shape constants of the activations' Reshapes that start with 1 starting with `batch`;
    ValueError where such a constant is also read by another node (it cannot change for one reader only)."""
    by_name = {t.name: t for t in inits}
    reshapes = [n for n in nodes if n.op_type == "Reshape" and n.input[0] not in by_name and n.input[1] in by_name
                and numpy_helper.to_array(by_name[n.input[1]])[:1].tolist() == [1]]
    batched = {n.input[1] for n in reshapes}
    for n in nodes:
        shared = batched & set(n.input) if n not in reshapes else set()
        if shared:
            raise ValueError(f"the shape constant {sorted(shared)[0]!r} is read by node {n.name!r} ({n.op_type}) "
                             "too: cannot set its batch")
    out = []
    for t in inits:
        if t.name in batched:
            shape = numpy_helper.to_array(t).copy()
            shape[0] = batch
            t = numpy_helper.from_array(shape, t.name)
        out.append(t)
    return out


def flops(proto: onnx.ModelProto) -> int:
    """2 x the multiply-adds of the model's Conv and Gemm nodes: a Conv's output elements x C/groups x kernel
    size (its weight's shape less the first dimension), a Gemm's M x N x K; the shapes from ONNX's shape
    inference (run on a copy without the weights' data: their shapes as inputs). ValueError where a shape it
    needs is not known."""
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    skeleton = helper.make_graph(
        proto.graph.node, proto.graph.name,
        [*proto.graph.input, *(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in weights)],
        proto.graph.output, [t for t in proto.graph.initializer if t.data_type != onnx.TensorProto.FLOAT])
    model = helper.make_model(skeleton, opset_imports=proto.opset_import, ir_version=max(4, proto.ir_version))
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = tuple(d.dim_value for d in dims)

    def shape(name: str, node: onnx.NodeProto) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"the shape of {name!r} (node {node.name!r}, {node.op_type}) is not known")
        return shapes[name]

    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            total += math.prod(shape(node.output[0], node)) * math.prod(shape(node.input[1], node)[1:])
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a, (m, n) = shape(node.input[0], node), shape(node.output[0], node)
            total += m * n * a[0 if trans_a else 1]
    return 2 * total


def prepared(name: str, batch: int, folder: str | Path, seed: int = 0) -> dict:
    """Write the light model `name` with random weights at `batch` (``random_weights(.., seed, batch)``, logits
    out) to `folder`/``<name>-b<batch>-seed<seed>.onnx``; return ``{"path": that file, "flops": its FLOPs}``
    (``flops``: Conv and Gemm, the whole batch)."""
    model = random_weights(light_model(name), seed, batch)
    path = Path(folder) / f"{name}-b{batch}-seed{seed}.onnx"
    onnx.save(model, str(path))
    return {"path": str(path), "flops": flops(model)}
