"""Reading an ONNX model and checking all of it before anything runs.

``read(source)`` parses a ModelProto from a path or bytes and returns a ``Graph``: the default-domain
opset, the nodes in an order where every input is computed before it is read, the constants (the
initializers and the tensor attributes, as NumPy arrays) and the graph's inputs and outputs.
Nothing in the file is trusted: a file that is not a model, an opset outside 7 to 21, operators
fastconv does not run (all listed in one error, with their node names), cycles, inputs nothing
produces, tensors whose declared size their data does not have, and external data outside the
model's own folder (or reached through a symlink out of it) raise ValueError naming the file.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIN_OPSET, MAX_OPSET = 7, 21
MAX_MODEL_BYTES = 2**31 - 1     # protobuf's own limit on one message
MAX_TENSOR_BYTES = 16 * 2**30   # one tensor, inline or external
DEFAULT_DOMAINS = ("", "ai.onnx")

# ONNX TensorProto data types fastconv reads, and their NumPy dtypes
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
          10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def onnx_package():
    """The ``onnx`` package (it parses the protobuf files), or ImportError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ImportError("fastconv.onnx needs the onnx package to read ONNX files: pip install onnx") from None
    return onnx


@dataclass
class Node:
    """One operator call: op_type, its node name (or '#index'), input and output value names ('' = omitted),
    attributes as Python values (tensors as arrays); `relu_in_place`: a Relu that read only this node's output
    was folded into it (``model._mark_in_place_relu``); `fused`: for a node ``fastconv.onnx`` made at load, the
    ``fused`` operator that runs it."""
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, object] = field(default_factory=dict)
    relu_in_place: bool = False
    fused: object = None


@dataclass
class Graph:
    """A checked model: `nodes` in an order that computes each value before it is read."""
    where: str
    opset: int
    nodes: list[Node]
    constants: dict[str, np.ndarray]
    inputs: list[tuple[str, np.dtype, tuple]]   # (name, dtype, shape: ints, or None for a dimension left free)
    outputs: list[str]


def read(source: str | os.PathLike | bytes, supported: dict[str, object]) -> Graph:
    """The model at `source` (a path or the file's bytes), checked: every node's op_type must be a key of
    `supported` and its domain the default one. ValueError names the file for anything wrong."""
    onnx = onnx_package()
    if isinstance(source, (bytes, bytearray, memoryview)):
        blob, where, folder = bytes(source), "<ONNX model bytes>", None
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise ValueError(f"{where} is larger than the 2 GiB an ONNX file can hold (larger weights go in "
                             "external data files)")
        blob, folder = path.read_bytes(), path.resolve().parent
    model = onnx.ModelProto()
    try:
        model.ParseFromString(blob)
    except Exception as error:  # protobuf's DecodeError, or RuntimeError/ValueError from its C++ parser
        raise ValueError(f"{where} is not an ONNX model (truncated or corrupt?): {type(error).__name__}: "
                         f"{str(error)[:200]}") from None
    del blob  # the file's bytes: the parsed message holds its own copy
    if not model.HasField("graph") or not model.graph.node:
        raise ValueError(f"{where} is not an ONNX model: it has no graph of nodes")
    opset = _opset(model, where)
    graph = model.graph
    constants = {}
    for tensor in graph.initializer:  # each tensor's bytes freed once it is an array: one copy of the weights at a time
        constants[tensor.name] = tensor_array(tensor, folder, where)
        tensor.ClearField("raw_data")
    nodes = []
    for i, proto in enumerate(graph.node):
        attributes = {a.name: _attribute(onnx, a, folder, where, proto) for a in proto.attribute}
        nodes.append(Node(proto.op_type, proto.name or f"#{i}", list(proto.input), list(proto.output), attributes))
    unsupported = [n for n, proto in zip(nodes, graph.node)
                   if proto.domain not in DEFAULT_DOMAINS or n.op_type not in supported]
    if unsupported:
        listed = ", ".join(f"{n.op_type} (node {n.name!r})" for n in unsupported[:50])
        more = f" and {len(unsupported) - 50} more" if len(unsupported) > 50 else ""
        raise ValueError(f"{where}: {len(unsupported)} node(s) use operators fastconv does not run at opset "
                         f"{opset}: {listed}{more}. Supported: {', '.join(sorted(supported))}")
    inputs = [(v.name, *_value_type(v, where)) for v in graph.input if v.name not in constants]
    outputs = [v.name for v in graph.output]
    return Graph(where, opset, _ordered(nodes, set(constants) | {name for name, _, _ in inputs}, outputs, where),
                 constants, inputs, outputs)


def _opset(model, where: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise ValueError(f"{where}: the model imports no version of the default ONNX operator set")
    opset = max(versions)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"{where}: opset {opset} is outside the {MIN_OPSET} to {MAX_OPSET} fastconv runs")
    return opset


def _attribute(onnx, attribute, folder: Path | None, where: str, node) -> object:
    kind = onnx.AttributeProto
    if attribute.type in (kind.GRAPH, kind.GRAPHS, kind.SPARSE_TENSOR, kind.SPARSE_TENSORS, kind.TYPE_PROTO,
                          kind.TYPE_PROTOS):
        raise ValueError(f"{where}: node {node.name or node.op_type!r} has attribute {attribute.name!r} of a kind "
                         "fastconv does not read (a subgraph, sparse tensor or type)")
    if attribute.type == kind.TENSOR:
        return tensor_array(attribute.t, folder, where)
    if attribute.type == kind.TENSORS:
        return [tensor_array(t, folder, where) for t in attribute.tensors]
    try:
        value = onnx.helper.get_attribute_value(attribute)
    except Exception as error:
        raise ValueError(f"{where}: node {node.name or node.op_type!r} has an unreadable attribute "
                         f"{attribute.name!r}: {error}") from None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _value_type(value, where: str) -> tuple[np.dtype, tuple | None]:
    """(dtype, shape) a graph input declares; unknown dimensions (named or absent) are None."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type not in DTYPES:
        raise ValueError(f"{where}: graph input {value.name!r} is not a tensor of a type fastconv reads")
    if not tensor.HasField("shape"):
        return np.dtype(DTYPES[tensor.elem_type]), None
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
    return np.dtype(DTYPES[tensor.elem_type]), dims


def _ordered(nodes: list[Node], known: set[str], outputs: list[str], where: str) -> list[Node]:
    """`nodes` in an order where each reads only known values or earlier outputs (Kahn's algorithm); ValueError
    for an input nothing produces, a value produced twice, or a cycle."""
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.outputs:
            if name and (name in producer or name in known):
                raise ValueError(f"{where}: value {name!r} is produced twice (node {node.name!r})")
            if name:
                producer[name] = i
    waiting = []
    for node in nodes:
        missing = [name for name in node.inputs if name and name not in known and name not in producer]
        if missing:
            raise ValueError(f"{where}: node {node.name!r} ({node.op_type}) reads {missing[0]!r}, which no graph "
                             "input, initializer or node provides")
        waiting.append({producer[name] for name in node.inputs if name and name in producer})
    for name in outputs:
        if name not in known and name not in producer:
            raise ValueError(f"{where}: graph output {name!r} is computed by no node")
    readers: dict[int, list[int]] = {}
    for i, needs in enumerate(waiting):
        for j in needs:
            readers.setdefault(j, []).append(i)
    ready = [i for i, needs in enumerate(waiting) if not needs]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in readers.get(i, []):
            waiting[j].discard(i)
            if not waiting[j]:
                ready.append(j)
    if len(order) < len(nodes):
        stuck = [nodes[i].name for i in range(len(nodes)) if i not in set(order)]
        raise ValueError(f"{where}: the graph has a cycle through nodes {stuck[:5]}")
    return [nodes[i] for i in order]


def tensor_array(tensor, folder: Path | None, where: str) -> np.ndarray:
    """A TensorProto as a NumPy array, its declared size checked against the data it really has; external
    data read only from a file inside `folder` (None: the model came as bytes, so none is allowed)."""
    onnx = onnx_package()
    name = tensor.name or "(unnamed)"
    if tensor.data_type not in DTYPES:
        raise ValueError(f"{where}: tensor {name!r} has ONNX data type {tensor.data_type}, which fastconv does "
                         "not read")
    dtype = np.dtype(DTYPES[tensor.data_type])
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims) or len(dims) > 32:
        raise ValueError(f"{where}: tensor {name!r} has invalid dimensions {dims[:8]}")
    count = math.prod(dims)
    if count * dtype.itemsize > MAX_TENSOR_BYTES:
        raise ValueError(f"{where}: tensor {name!r} declares {count * dtype.itemsize} bytes, more than the "
                         f"{MAX_TENSOR_BYTES} fastconv reads")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return np.frombuffer(_external_bytes(tensor, count * dtype.itemsize, folder, where),
                             dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    if tensor.HasField("raw_data"):
        if len(tensor.raw_data) != count * dtype.itemsize:
            raise ValueError(f"{where}: tensor {name!r} declares {count} values of {dtype} but holds "
                             f"{len(tensor.raw_data)} bytes")
    else:
        fields = [f for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
                  if len(getattr(tensor, f))]
        held = sum(len(getattr(tensor, f)) for f in fields)
        if held != count and not (count == 0 and held == 0):
            raise ValueError(f"{where}: tensor {name!r} declares {count} values but holds {held}")
    try:
        array = onnx.numpy_helper.to_array(tensor)
    except Exception as error:
        raise ValueError(f"{where}: tensor {name!r} cannot be read: {error}") from None
    return np.array(np.reshape(array, dims), dtype=dtype)  # an array of its own (no view of the message's bytes)


def _text(value: str | bytes) -> str:
    """A protobuf string field (bytes where the file's are not UTF-8) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _external_bytes(tensor, nbytes: int, folder: Path | None, where: str) -> bytes:
    """The bytes of an external tensor: 'location' a relative path inside `folder` (after resolving symlinks),
    'offset' and 'length' (if given, exactly the declared size) within the file."""
    name = tensor.name or "(unnamed)"
    if folder is None:
        raise ValueError(f"{where}: tensor {name!r} is stored as external data, which a model given as bytes "
                         "cannot reach: load it from its file")
    entries = {_text(e.key): _text(e.value) for e in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset, length = int(entries.get("offset", "0")), int(entries.get("length", str(nbytes)))
    except ValueError:
        raise ValueError(f"{where}: tensor {name!r} has a non-integer external offset or length") from None
    if not location or Path(location).is_absolute() or "\0" in location:
        raise ValueError(f"{where}: tensor {name!r} has external data at {location[:100]!r}: it must be a "
                         "relative path inside the model's folder")
    target = (folder / location).resolve()
    if not target.is_relative_to(folder) or not target.is_file():
        raise ValueError(f"{where}: tensor {name!r} has external data at {location[:100]!r}, which is not a file "
                         f"inside the model's folder {folder}")
    if offset < 0 or length != nbytes:
        raise ValueError(f"{where}: tensor {name!r} declares external offset {offset} and length {length}; its "
                         f"dimensions need exactly {nbytes} bytes")
    with open(target, "rb") as f:
        f.seek(offset)
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{where}: tensor {name!r} needs {nbytes} bytes at offset {offset} of {location!r}, "
                         f"which holds only {len(data)} there")
    return data
