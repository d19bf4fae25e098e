"""fastconv as an ONNX backend (``onnx.backend.base.Backend``), so that ONNX's own backend tests run on it:

    rep = Backend.prepare(model_proto)          # fastconv.onnx.load: checked and simplified once
    outputs = rep.run([x])                      # the graph's outputs, in its output order
    Backend.run_node(node_proto, [x, w])        # one node, run as a one-node model

CPU only (``supports_device``). Needs the ``onnx`` package.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend as OnnxBackend
from onnx.backend.base import BackendRep as OnnxBackendRep
from onnx.backend.base import Device, DeviceType

from .graph import MAX_OPSET
from .model import Model, load


class BackendRep(OnnxBackendRep):
    """A loaded model; ``run(inputs)`` takes the arrays of the graph's inputs (a list in their order, one array
    for a single input, or a dict by name) and returns the outputs as a list in the graph's output order."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> list[np.ndarray]:
        names = self.model.input_names
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(inputs) != len(names):
                raise ValueError(f"the model takes {len(names)} inputs {names}, got {len(inputs)}")
            feeds = dict(zip(names, inputs))
        outputs = self.model.run(feeds)
        return [outputs[name] for name in self.model.output_names]


class Backend(OnnxBackend):
    """Runs ONNX models on fastconv's kernels (``fastconv.onnx.load``), on the CPU."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            return Device(device).type == DeviceType.CPU
        except (AttributeError, ValueError):
            return False

    @classmethod
    def prepare(cls, model: onnx.ModelProto | bytes, device: str = "CPU", **kwargs: Any) -> BackendRep:
        """The model loaded by ``fastconv.onnx.load`` (ValueError for what it does not run)."""
        if not cls.supports_device(device):
            raise ValueError(f"fastconv's ONNX backend runs on the CPU, not on {device!r}")
        blob = model if isinstance(model, bytes) else model.SerializeToString()
        return BackendRep(load(blob, **kwargs))

    @classmethod
    def run_model(cls, model: onnx.ModelProto | bytes, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> list[np.ndarray]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", outputs_info: Any = None,
                 **kwargs: Any) -> list[np.ndarray]:
        """`node` run on `inputs` (arrays for its inputs, in order; None where the node omits one) as a one-node
        model at ``opset_version`` (default the newest fastconv runs)."""
        arrays = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        if len(arrays) != len(node.input):
            raise ValueError(f"node {node.op_type} has {len(node.input)} inputs, got {len(arrays)} arrays")
        feeds = {name: np.asarray(a) for name, a in zip(node.input, arrays) if name}
        graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                        for name, a in feeds.items()]
        graph_outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = helper.make_graph([node], f"{node.op_type}_node", graph_inputs, graph_outputs)
        opset = kwargs.pop("opset_version", MAX_OPSET)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return cls.prepare(model, device, **kwargs).run(feeds)


prepare = Backend.prepare
run_model = Backend.run_model
run_node = Backend.run_node
supports_device = Backend.supports_device
