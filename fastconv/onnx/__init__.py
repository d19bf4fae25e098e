"""Running ONNX models on fastconv's kernels, and writing fastconv models as ONNX.

    model = fc.onnx.load("resnet50.onnx")        # checked, simplified (Conv+BN folded, ...) at load
    logits = model(x)                            # one input, one output; model.run({"data": x}) otherwise
    fc.onnx.export(fc.models.lenet5(), "lenet5.onnx", input_shape=(1, 1, 28, 28))

Reading and writing ONNX files needs the ``onnx`` package (``pip install onnx``); running them does not
need ONNX Runtime. ``fastconv.onnx.ops.OPS`` lists the operators (opsets 7 to 21), and
``fastconv.onnx.backend.Backend`` runs ONNX's own backend test suite on them.
"""
from __future__ import annotations

from .export import export  # imports onnx only when called
from .model import Model, load


def __getattr__(name: str) -> object:
    if name == "Backend":  # onnx.backend.base is its base class
        from .backend import Backend
        globals()["Backend"] = Backend
        return Backend
    raise AttributeError(f"module 'fastconv.onnx' has no attribute {name!r}")


__all__ = ["Model", "load", "export", "Backend"]
