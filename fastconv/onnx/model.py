"""A loaded ONNX model: the checked graph (``graph.read``) simplified once at load, then run node by node on
fastconv's operators (``ops.OPS``).

At load, in this order:

1. Dropout and Identity are removed (their readers read their input).
2. Constants are folded: every node whose inputs are all known (initializers, Constant, ConstantOfShape
   of a known shape, shape arithmetic on them) runs once, and its outputs become constants.
3. Chains of per-channel affine nodes (BatchNormalization's inference form, Mul, Add, Sub by per-channel
   constants) fold into the Conv before them (its weights and bias) or, after anything else, become one
   ``ScaleShift`` pass (``fused``); Add and two-input Sum of two activations become one ``AddRelu`` pass.
4. A Relu that is the only reader of a Conv, ScaleShift or AddRelu runs inside it: in place on the Conv's
   output (a parallel pass), in the same pass for the others.

At run, each value is freed after its last reader, so a chain of layers holds about two activations
at a time, and the fused passes write into an input that dies at them (no new array). The constants are read-only
from load on, so the kernels pack or transform each weight once and keep that form while the model lives
(``fastconv.config.kept_for``).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from ..kernels import elementwise
from .fused import AddRelu, Affine, ScaleShift, affine_of
from .graph import Graph, Node, read
from .ops import OPS

REMOVED = ("Dropout", "Identity")
MAX_CONSTANT_BYTES = 8 * 2**30  # weights and folded constants together: VGG-19's are 0.55 GiB
RELU_FUSED_INTO = ("Conv", "ScaleShift", "AddRelu")


class Model:
    """An ONNX graph ready to run: ``model.run({"input": x})`` -> {output name: array}; ``model(x)`` for a
    graph of one input and one output. ``input_names``, ``output_names``, ``opset``; ``nodes`` (after the
    load-time simplifications) and ``folded`` (what they did: counts by kind)."""

    def __init__(self, graph: Graph, max_constant_bytes: int = MAX_CONSTANT_BYTES) -> None:
        self.max_constant_bytes = max_constant_bytes
        self.where, self.opset = graph.where, graph.opset
        self.inputs, self.output_names = graph.inputs, list(graph.outputs)
        self.input_names = [name for name, _, _ in graph.inputs]
        self.constants = dict(graph.constants)
        self.folded = {"removed": 0, "constant": 0, "batch_norm": 0, "affine": 0, "scale_shift": 0, "relu": 0}
        nodes = _remove_pass_through(graph.nodes, set(self.output_names), self.folded)
        nodes = self._fold_constants(nodes)
        nodes = self._fuse_adds(self._fold_channel_affine(nodes))
        self.nodes = _mark_in_place_relu(nodes, set(self.output_names), self.folded)
        self._last_reader = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                if name:
                    self._last_reader[name] = i
        read = {name for node in self.nodes for inner in [node, *(node.fused.nodes if node.fused else [])]
                for name in inner.inputs} | set(self.output_names)
        self.constants = {name: value for name, value in self.constants.items() if name in read}  # folded away: freed
        self._fed = set(self.input_names) | set(self.constants) | set(self.output_names)
        for value in self.constants.values():  # unchanging: kernels keep their packed forms (config.kept_for)
            while isinstance(value, np.ndarray):  # read-only down to the array that owns the memory
                value.setflags(write=False)
                value = value.base

    def _reusable(self, node: Node, i: int, live: dict[str, np.ndarray]) -> list[bool]:
        """For each input of node `i`: whether its array may take the node's result (it dies here, is read once by
        the node, shares memory with no other live value and is no input, constant or output of the graph)."""
        reusable = []
        for name in node.inputs:
            a = live.get(name)
            reusable.append(name not in self._fed and self._last_reader.get(name) == i and node.inputs.count(name) == 1
                            and isinstance(a, np.ndarray) and a.flags.writeable
                            and not any(other is not a and isinstance(other, np.ndarray) and np.may_share_memory(a, other)
                                        for other in live.values()))
        return reusable

    def _run_node(self, node: Node, values: dict[str, np.ndarray], reusable: list[bool] | None = None,
                  ) -> list[np.ndarray]:
        inputs = [values[name] if name else None for name in node.inputs]
        if node.fused is not None:
            y = node.fused.run(inputs, reusable or [False] * len(inputs))
            if y is not None:
                return [y]
            local = dict(values)  # the fast path does not apply: the nodes it stands for, one by one
            for inner in node.fused.nodes:
                for name, value in zip(inner.outputs, self._run_node(inner, local)):
                    if name:
                        local[name] = value
            return [local[name] for name in node.outputs]
        try:
            outputs = OPS[node.op_type].run(inputs, node.attributes, self.opset, len(node.outputs))
        except (ValueError, TypeError) as error:
            raise type(error)(f"{self.where}: node {node.name!r} ({node.op_type}): {error}") from None
        if len(outputs) < len([name for name in node.outputs if name]):
            raise ValueError(f"{self.where}: node {node.name!r} ({node.op_type}) lists {len(node.outputs)} outputs; "
                             f"fastconv computes {len(outputs)}")
        if node.relu_in_place:  # in place unless the op handed back (a view of) one of its inputs
            y = outputs[0]
            shared = any(a is not None and np.may_share_memory(y, a) for a in inputs)
            if shared or not (y.flags.c_contiguous and y.flags.writeable and y.dtype.name in ("float32", "float64")):
                outputs[0] = np.maximum(y, y.dtype.type(0))
            else:
                elementwise.relu_into(y)
        return outputs

    def _fold_constants(self, nodes: list[Node]) -> list[Node]:
        kept = []
        budget = self.max_constant_bytes - sum(a.nbytes for a in self.constants.values())
        for node in nodes:
            if all(not name or name in self.constants for name in node.inputs) and node.op_type not in REMOVED:
                if node.op_type == "ConstantOfShape":  # the one op whose output size is only declared
                    shape = self.constants.get(node.inputs[0]) if node.inputs and node.inputs[0] else None
                    if shape is not None and shape.dtype.kind in "iu" and shape.ndim == 1 and (shape >= 0).all() and \
                            math.prod(int(d) for d in shape) * 8 > budget:
                        raise ValueError(f"{self.where}: node {node.name!r} (ConstantOfShape) declares a tensor of "
                                         f"shape {tuple(int(d) for d in shape)[:8]}, beyond the "
                                         f"{self.max_constant_bytes} bytes of constants load accepts "
                                         "(max_constant_bytes)")
                outputs = self._run_node(node, self.constants)
                budget -= sum(a.nbytes for a in outputs if isinstance(a, np.ndarray))
                if budget < 0:
                    raise ValueError(f"{self.where}: the model's constants take more than the {self.max_constant_bytes} "
                                     f"bytes load accepts (max_constant_bytes), at node {node.name!r}")
                self.constants.update({name: value for name, value in zip(node.outputs, outputs) if name})
                self.folded["constant"] += 1
            else:
                kept.append(node)
        return kept

    def _fold_channel_affine(self, nodes: list[Node]) -> list[Node]:
        """Chains of per-channel affine nodes (``fused.affine_of``: BatchNormalization's inference form, Mul, Add,
        Sub by constants), each the only reader of the one before: after a Conv whose weights and bias are
        constants (and the chain its only reader) folded into them, w' = w * s per output channel, b' = b * s + t;
        elsewhere one ``ScaleShift`` node."""
        readers, outputs = _readers(nodes), set(self.output_names)
        out: list[Node] = []
        made: dict[str, int] = {}  # value name -> index in out of the node that computes it
        skip: set[int] = set()
        for i, node in enumerate(nodes):
            if i in skip:
                continue
            step = affine_of(node.op_type, node.inputs, node.attributes, self.constants, self.opset)
            if step is None:
                out.append(node)
                made.update((name, len(out) - 1) for name in node.outputs if name)
                continue
            x_name, affine = step
            chain, end = [node], node
            while (after := _only_reader(end, nodes, readers, outputs)) is not None:
                following = affine_of(after.op_type, after.inputs, after.attributes, self.constants, self.opset)
                joined = affine.then(following[1]) if following and following[0] == end.outputs[0] else None
                if joined is None:
                    break
                affine, end = joined, after
                chain.append(after)
                skip.add(nodes.index(after))
            conv = out[made[x_name]] if x_name in made else None
            if conv is not None and _only_reader(conv, nodes, readers, outputs) is node and \
                    self._fold_into_conv(conv, affine, end.outputs[0]):
                self.folded["batch_norm"] += sum(n.op_type == "BatchNormalization" for n in chain)
                self.folded["affine"] += sum(n.op_type != "BatchNormalization" for n in chain)
                made[end.outputs[0]] = made[x_name]
                continue
            out.append(Node("ScaleShift", "+".join(n.name for n in chain), [x_name], [end.outputs[0]],
                            fused=ScaleShift(affine, chain)))
            made[end.outputs[0]] = len(out) - 1
            self.folded["scale_shift"] += len(chain)
        return out

    def _fold_into_conv(self, conv: Node, affine: Affine, output: str) -> bool:
        """conv computes affine(conv(x)) into `output` from now on, where its weights and bias are constants of
        the affine's dtype and rank 4 (else False: nothing changed)."""
        if conv.op_type != "Conv" or conv.fused is not None or len(conv.inputs) < 2 or not conv.inputs[1] \
                or not all(name in self.constants for name in conv.inputs[1:] if name):
            return False
        w = self.constants[conv.inputs[1]]
        b = self.constants[conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else None
        if w.ndim != 4 or w.size == 0 or w.dtype != affine.dtype or not affine.applies_to((1, w.shape[0], 1, 1), w.dtype) \
                or (b is not None and (b.dtype != w.dtype or b.shape != w.shape[:1])):
            return False  # left as the file has it: the Conv says what is wrong when it runs
        b = np.zeros(w.shape[:1], w.dtype) if b is None else b
        scale = np.broadcast_to(affine.scale, w.shape[:1])
        weight_name, bias_name = f"{conv.name}/folded_weight", f"{conv.name}/folded_bias"
        self.constants[weight_name] = (w * scale.reshape(-1, 1, 1, 1)).astype(w.dtype)
        self.constants[bias_name] = (b * scale + affine.shift).astype(w.dtype)
        conv.inputs = [conv.inputs[0], weight_name, bias_name]
        conv.outputs = [output]
        return True

    def _fuse_adds(self, nodes: list[Node]) -> list[Node]:
        """Add, or Sum of two inputs, of two values that are not constants: one ``AddRelu`` node (one parallel
        pass, into an input that dies there)."""
        out = []
        for node in nodes:
            if node.op_type in ("Add", "Sum") and len(node.inputs) == 2 and \
                    all(name and name not in self.constants for name in node.inputs) and len(node.outputs) == 1:
                node = Node("AddRelu", node.name, list(node.inputs), list(node.outputs), fused=AddRelu([node]))
            out.append(node)
        return out

    def run(self, feeds: dict[str, np.ndarray] | None = None, **named: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for the inputs `feeds` (and/or keyword arguments), by output name. Each input
        must have its declared dtype and the declared sizes where the model fixes them."""
        feeds = {**(feeds or {}), **named}
        missing = [name for name in self.input_names if name not in feeds]
        unknown = [name for name in feeds if name not in self.input_names]
        if missing or unknown:
            raise ValueError(f"{self.where} takes inputs {self.input_names}: missing {missing}, unknown {unknown}")
        values = dict(self.constants)
        live = {}  # the values computed (or fed) and not yet freed
        for name, dtype, shape in self.inputs:
            values[name] = live[name] = _checked_input(name, feeds[name], dtype, shape)
        for i, node in enumerate(self.nodes):
            reusable = self._reusable(node, i, live) if node.fused is not None else None
            for name, value in zip(node.outputs, self._run_node(node, values, reusable)):
                if name:
                    values[name] = live[name] = value
            for name in set(node.inputs):
                if name and self._last_reader.get(name) == i and name not in self.constants \
                        and name not in self.output_names:
                    del values[name], live[name]
        return {name: values[name] for name in self.output_names}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(self.input_names) != 1 or len(self.output_names) != 1:
            raise ValueError(f"{self.where} has inputs {self.input_names} and outputs {self.output_names}: "
                             "call model.run({name: array, ...})")
        return self.run({self.input_names[0]: x})[self.output_names[0]]

    def warmup(self, batch: int = 1) -> None:
        """Run once on zeros of the declared input shapes (free dimensions: `batch` for the first, 1 after), so that
        kernels compile and ``auto`` times its candidates for this model's layers now."""
        feeds = {}
        for name, dtype, shape in self.inputs:
            if shape is None:
                raise ValueError(f"{self.where}: input {name!r} declares no shape to warm up with")
            feeds[name] = np.zeros([d if d else (batch if i == 0 else 1) for i, d in enumerate(shape)], dtype)
        self.run(feeds)

    def __repr__(self) -> str:
        return (f"fastconv.onnx.Model({self.where}, opset {self.opset}, {len(self.nodes)} nodes, inputs "
                f"{self.input_names}, outputs {self.output_names})")


def load(source: str | os.PathLike | bytes, warmup: bool = False, max_constant_bytes: int = MAX_CONSTANT_BYTES,
         ) -> Model:
    """The ONNX model at `source` (a path, or the file's bytes) ready to run on fastconv's kernels.

    Everything is checked before anything runs (``graph.read``): ValueError names the file and, for
    operators fastconv does not run, lists every such node. With `warmup`, one run on zeros of the declared
    input shape compiles the kernels and tunes ``auto`` for the model's layers. `max_constant_bytes` bounds the
    weights and the constants computed at load (a file's ConstantOfShape can declare any size)."""
    model = Model(read(source, OPS), max_constant_bytes)
    if warmup:
        print(f"fastconv: warming up {model.where} (compiling and timing its layers' kernels)", file=sys.stderr)
        model.warmup()
    return model


def _checked_input(name: str, value: object, dtype: np.dtype, shape: tuple | None) -> np.ndarray:
    from .._checks import as_array
    value = as_array(name, value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"input {name!r} must be a numpy.ndarray of {dtype}, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"input {name!r} must be {dtype}, got {value.dtype} (convert it with .astype(np.{dtype}))")
    if shape is not None and (value.ndim != len(shape) or any(d and d != v for d, v in zip(shape, value.shape))):
        declared = "x".join("?" if d is None else str(d) for d in shape)
        raise ValueError(f"input {name!r} must have shape {declared}, got {value.shape}")
    return value


def _readers(nodes: list[Node]) -> dict[str, list[int]]:
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(i)
    return readers


def _only_reader(node: Node, nodes: list[Node], readers: dict[str, list[int]], outputs: set[str]) -> Node | None:
    """The one node reading `node`'s only output, when no other node or graph output reads it."""
    produced = [name for name in node.outputs if name]
    if len(produced) != 1 or produced[0] in outputs or len(readers.get(produced[0], [])) != 1:
        return None
    return nodes[readers[produced[0]][0]]


def _remove_pass_through(nodes: list[Node], outputs: set[str], folded: dict) -> list[Node]:
    """Dropout (its first output; a requested mask keeps it) and Identity dropped, their readers renamed to read
    their input; one whose output is a graph output stays."""
    rename: dict[str, str] = {}
    kept = []
    for node in nodes:
        node.inputs = [rename.get(name, name) for name in node.inputs]
        extra_outputs = [name for name in node.outputs[1:] if name]
        if node.op_type in REMOVED and not extra_outputs and node.outputs[0] not in outputs and node.inputs:
            rename[node.outputs[0]] = node.inputs[0]
            folded["removed"] += 1
        else:
            kept.append(node)
    return kept


def _mark_in_place_relu(nodes: list[Node], outputs: set[str], folded: dict) -> list[Node]:
    """A Relu whose input comes from a Conv, ScaleShift or AddRelu read by nothing else: the Conv applies it in
    place, the others in their own pass."""
    readers = _readers(nodes)
    kept, skip = [], set()
    for i, node in enumerate(nodes):
        if i in skip:
            continue
        relu = _only_reader(node, nodes, readers, outputs)
        if node.op_type in RELU_FUSED_INTO and relu is not None and relu.op_type == "Relu" and len(relu.inputs) == 1:
            if node.fused is None:
                node.relu_in_place = True
            else:
                node.fused.relu = True
                node.fused.nodes.append(relu)
            node.outputs = [relu.outputs[0]]
            skip.add(nodes.index(relu))
            folded["relu"] += 1
        kept.append(node)
    return kept

