"""Operators ``fastconv.onnx`` makes at load from chains of ONNX nodes (never read from a file).

Each runs in one parallel pass over memory what its nodes did in several NumPy passes, and keeps the nodes it
replaced (``nodes``): where its fast path does not apply (the shapes or dtypes that arrive are not the ones the
pattern assumed) the model runs those nodes instead, so results and errors stay the original nodes'.

- ``ScaleShift``: y = x * scale[c] + shift[c] along axis 1, then ReLU when a Relu followed: a chain of
  per-channel affine nodes (BatchNormalization's inference form, Mul, Add, Sub by a constant holding one value
  per channel or one value), each the only reader of the one before (``affine_of`` reads one node).
  After a Conv the chain is folded into the Conv's weights and bias instead (``model._fold_channel_affine``).
- ``AddRelu``: a + b for an Add or a two-input Sum of two activations of one shape, then ReLU when a Relu followed.

Both may write their result into an input that dies at the node (``reusable``: read by nothing later and sharing
memory with no other live value), so a chain of layers allocates nothing for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..kernels import elementwise

AFFINE_OPS = ("BatchNormalization", "Mul", "Add", "Sub")


@dataclass
class Affine:
    """y = x * scale + shift per channel of axis 1: scale, shift float64 (C,), or (1,) for one value for all.
    `rank`: the rank x must have for the constants' broadcasting to mean "per channel of axis 1" (None: any
    rank from 2, BatchNormalization's rule); `min_rank`: the rank below which a constant would add axes;
    `dtype`: the constants' dtype, which x must have (the nodes refuse another)."""
    scale: np.ndarray
    shift: np.ndarray
    rank: int | None
    min_rank: int
    dtype: np.dtype

    @property
    def channels(self) -> int:
        return max(self.scale.size, self.shift.size)

    def then(self, other: "Affine") -> "Affine | None":
        """This, then `other`, as one Affine; None where their channels, ranks or dtypes disagree."""
        if (self.channels != other.channels and 1 not in (self.channels, other.channels)) \
                or (self.rank and other.rank and self.rank != other.rank) or self.dtype != other.dtype:
            return None
        return Affine(self.scale * other.scale, self.shift * other.scale + other.shift, self.rank or other.rank,
                      max(self.min_rank, other.min_rank), self.dtype)

    def applies_to(self, shape: tuple[int, ...], dtype: np.dtype) -> bool:
        """Whether x of `shape` and `dtype` is what the constants were read for."""
        rank = len(shape)
        return (dtype == self.dtype and rank >= max(2, self.min_rank) and self.rank in (None, rank)
                and self.channels in (1, shape[1]))


def affine_of(op_type: str, inputs: list[str], attributes: dict, constants: dict[str, np.ndarray], opset: int,
              ) -> tuple[str, Affine] | None:
    """(the activation input's name, its Affine) for a node that scales and shifts its one non-constant input per
    channel of axis 1 with constants; None for any other node (left to run as it is)."""
    if op_type == "BatchNormalization":
        if (len(inputs) != 5 or not all(name in constants for name in inputs[1:]) or inputs[0] in constants
                or attributes.get("training_mode", 0) or (opset < 9 and attributes.get("spatial", 1) != 1)):
            return None
        gamma, beta, mean, var = (constants[name] for name in inputs[1:])
        epsilon = attributes.get("epsilon", 1e-5)
        if (gamma.ndim != 1 or not gamma.shape == beta.shape == mean.shape == var.shape or gamma.dtype.kind != "f"
                or not all(p.dtype == gamma.dtype for p in (beta, mean, var))
                or not isinstance(epsilon, float) or not epsilon >= 0):
            return None
        with np.errstate(all="ignore"):
            scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
        return inputs[0], Affine(scale, beta - mean.astype(np.float64) * scale, None, 2, gamma.dtype)
    if op_type not in ("Mul", "Add", "Sub") or len(inputs) != 2:
        return None
    known = [name in constants for name in inputs]
    if known == [False, True]:
        x, c = inputs[0], constants[inputs[1]]
    elif known == [True, False] and op_type != "Sub":
        x, c = inputs[1], constants[inputs[0]]
    else:
        return None
    layout = _per_channel(c.shape)
    if layout is None or c.dtype.kind != "f":
        return None
    rank, values = layout[0], c.astype(np.float64).reshape(-1)
    one, zero = np.ones(1), np.zeros(1)
    scale, shift = {"Mul": (values, zero), "Add": (one, values), "Sub": (one, -values)}[op_type]
    return x, Affine(scale, shift, rank, c.ndim, c.dtype)


def _per_channel(shape: tuple[int, ...]) -> tuple[int | None] | None:
    """(the rank of x for which a constant of `shape` broadcasts one value per channel of axis 1,) -- (None,)
    for one value -- or None for any other shape."""
    big = [j for j, d in enumerate(shape) if d != 1]
    if not big:
        return (None,)
    if len(big) == 1 and big[0] <= 1:
        return (len(shape) - big[0] + 1,)  # (C, 1, 1) reads x of rank 4, (1, C, 1, 1) too
    return None


@dataclass
class ScaleShift:
    """``Affine`` in one pass (``kernels.elementwise.scale_shift``), then ReLU with `relu`; `nodes`: the
    nodes it stands for."""
    affine: Affine
    nodes: list = field(default_factory=list)
    relu: bool = False
    _cast: dict = field(default_factory=dict)

    def run(self, inputs: list[np.ndarray], reusable: list[bool]) -> np.ndarray | None:
        x = inputs[0]
        if not (isinstance(x, np.ndarray) and self.affine.applies_to(x.shape, x.dtype)
                and x.flags.c_contiguous and x.size):
            return None
        if x.dtype not in self._cast:
            c = self.affine.channels
            self._cast[x.dtype] = (np.broadcast_to(self.affine.scale, (c,)).astype(x.dtype),
                                   np.broadcast_to(self.affine.shift, (c,)).astype(x.dtype))
        scale, shift = self._cast[x.dtype]
        if scale.size == 1 and x.shape[1] != 1:
            scale, shift = np.full(x.shape[1], scale[0]), np.full(x.shape[1], shift[0])
        y = x if reusable[0] else np.empty_like(x)
        shape3 = (x.shape[0], x.shape[1], -1)
        elementwise.scale_shift(x.reshape(shape3), scale, shift, y.reshape(shape3), self.relu, y is x)
        return y


@dataclass
class AddRelu:
    """a + b of one shape and float dtype in one pass (``kernels.elementwise.add_relu``), then ReLU with `relu`;
    `nodes`: the nodes it stands for."""
    nodes: list = field(default_factory=list)
    relu: bool = False

    def run(self, inputs: list[np.ndarray], reusable: list[bool]) -> np.ndarray | None:
        a, b = inputs
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and a.dtype.name in ("float32", "float64")
                and a.flags.c_contiguous and b.flags.c_contiguous and a.size):
            return None
        if reusable[1] and not reusable[0]:
            a, b = b, a
        y = a if reusable[0] or reusable[1] else np.empty_like(a)
        elementwise.add_relu(a, b, y, self.relu, y is a)
        return y
