"""The ONNX operators fastconv runs (opsets 7 to 21): one function per operator, one ``OpDef`` record each in ``OPS``.

A record's ``run(inputs, attributes, opset, n_outputs)`` takes the node's inputs (None where the node omits one),
its attributes as Python values (ints, floats, str, lists, arrays for tensors), the model's opset and the number
of outputs the node lists, and returns the outputs as arrays. Convolution, pooling and 2-D float matrix products
run on fastconv's kernels (``fastconv.conv2d``, ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``,
``gemm``); elementwise and shape operators in NumPy. Results keep the input's dtype (float32 stays float32).

A valid node fastconv does not run (the 1-D or 3-D form of a convolution or pooling, a dtype the operator does not
take here, training-mode BatchNormalization or Dropout, string constants) raises ``UnsupportedCase``; a malformed
node (a missing input, an attribute of the wrong kind or value, shapes that do not agree) raises ValueError naming
the operator and what is wrong.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..conv import conv2d, conv_transpose2d
from ..gemm import gemm as fc_gemm
from ..pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .graph import DTYPES

FLOATS = ("float32", "float64")  # fastconv's kernels take these
INTS = ("int8", "int16", "int32", "int64", "uint8", "uint32", "uint64")
ANY = tuple(np.dtype(t).name for t in DTYPES.values())  # every dtype fastconv.onnx reads from a file

Inputs = list[np.ndarray | None]  # the node's inputs; None for one it omits ('')
Attributes = dict[str, object]    # int, float, str, lists of them, np.ndarray for a tensor


class UnsupportedCase(ValueError):
    """A valid ONNX node that fastconv does not run; the message names the operator and the case."""


@dataclass(frozen=True)
class OpDef:
    """One operator: `compute(inputs, attributes, opset, n_outputs) -> outputs`, the ONNX version it implements
    (`since`: its since_version at opset 21; the docstring of `compute` states the older forms also taken) and the
    dtypes of its data input (input 0) it takes; ``run`` refuses the others with UnsupportedCase."""
    op_type: str
    compute: Callable[[Inputs, Attributes, int, int], list]
    since: int
    dtypes: tuple[str, ...] = FLOATS

    def run(self, inputs: Inputs, attributes: Attributes, opset: int, n_outputs: int = 1) -> list[np.ndarray]:
        """The node's outputs; `n_outputs`: how many outputs the node lists (Split's count of equal parts,
        MaxPool's Indices, Dropout's mask are computed only when listed)."""
        data = inputs[0] if inputs else None
        if data is not None and data.dtype.name not in self.dtypes:
            raise UnsupportedCase(f"{self.op_type}: input of dtype {data.dtype} is not supported (fastconv runs "
                                  f"{self.op_type} on {', '.join(self.dtypes)})")
        return [np.asarray(y) for y in self.compute(inputs, attributes, opset, n_outputs)]


# ---- checking inputs and attributes --------------------------------------------------------------------------

def _args(op: str, inputs: Inputs, required: int, most: int) -> list:
    """The node's inputs padded with None to `most`; ValueError when one of the first `required` is missing."""
    if len(inputs) > most:
        raise ValueError(f"{op} takes at most {most} inputs, got {len(inputs)}")
    padded = list(inputs) + [None] * (most - len(inputs))
    for i in range(required):
        if padded[i] is None:
            raise ValueError(f"{op}: input {i} is required")
    return padded


def _int(op: str, attrs: Attributes, name: str, default: int | None) -> int:
    value = attrs.get(name, default)
    if value is None:
        raise ValueError(f"{op}: attribute {name} is required")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{op}: attribute {name} must be an int, got {value!r}")
    return int(value)


def _flag(op: str, attrs: Attributes, name: str, default: int) -> bool:
    value = _int(op, attrs, name, default)
    if value not in (0, 1):
        raise ValueError(f"{op}: attribute {name} must be 0 or 1, got {value}")
    return bool(value)


def _float(op: str, attrs: Attributes, name: str, default: float) -> float:
    value = attrs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{op}: attribute {name} must be a float, got {value!r}")
    return float(value)


def _ints(op: str, attrs: Attributes, name: str, default: tuple | None, length: int | None = None,
          minimum: int | None = None) -> tuple[int, ...]:
    value = attrs.get(name, default)
    if value is None:
        raise ValueError(f"{op}: attribute {name} is required")
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                                   for v in value):
        raise ValueError(f"{op}: attribute {name} must be a list of ints, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{op}: attribute {name} must have {length} values, got {list(value)}")
    if minimum is not None and any(v < minimum for v in value):
        raise ValueError(f"{op}: attribute {name} must be at least {minimum}, got {list(value)}")
    return tuple(int(v) for v in value)


def _choice(op: str, attrs: Attributes, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = attrs.get(name, default)
    if value not in choices:
        raise ValueError(f"{op}: attribute {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _int_vector(op: str, name: str, a: np.ndarray) -> tuple[int, ...]:
    """An integer input of rank 0 or 1 (shape, axes, pads, split sizes) as Python ints."""
    if a.dtype.kind not in "iu" or a.ndim > 1:
        raise ValueError(f"{op}: input {name} must be a 1-D integer tensor, got {a.dtype} of shape {a.shape}")
    return tuple(int(v) for v in a.reshape(-1))


def _attribute_or_input(op: str, inputs: list, i: int, attrs: Attributes, name: str, opset: int,
                        became_input: int) -> object:
    """`name`, an attribute before opset `became_input` and input `i` from it on (None when absent); ValueError
    for the other form."""
    if opset >= became_input:
        if name in attrs:
            raise ValueError(f"{op}: {name} is input {i} from opset {became_input} on, not an attribute "
                             f"(opset {opset})")
        return inputs[i]
    if inputs[i] is not None:
        raise ValueError(f"{op}: {name} is an attribute before opset {became_input}, not an input (opset {opset})")
    return attrs.get(name)


def _axis(op: str, axis: int, rank: int, name: str = "axis") -> int:
    """`axis` in [-rank, rank) as a non-negative axis."""
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: {name} {axis} is outside [{-rank}, {rank}) for an input of rank {rank}")
    return axis % rank


def _same_dtype(op: str, x: np.ndarray, *others: np.ndarray | None) -> None:
    for other in others:
        if other is not None and other.dtype != x.dtype:
            raise ValueError(f"{op}: inputs must share the dtype {x.dtype}, got {other.dtype}")


def _broadcast(op: str, *shapes: tuple) -> tuple:
    """The multidirectional (NumPy) broadcast of `shapes`."""
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{op}: shapes {', '.join(str(s) for s in shapes)} do not broadcast") from None


def _planar(op: str, x: np.ndarray) -> None:
    """Convolution and pooling run in their 2-D form: x (N, C, H, W)."""
    if x.ndim in (3, 5):
        raise UnsupportedCase(f"{op}: the {x.ndim - 2}-D form (input of rank {x.ndim}) is not supported: fastconv "
                              "runs the 2-D form, input (N, C, H, W)")
    if x.ndim != 4:
        raise UnsupportedCase(f"{op}: input of rank {x.ndim} is not supported: fastconv runs the 2-D form, "
                              "input (N, C, H, W)")


# ---- the 2-D window rule of Conv, MaxPool and AveragePool -------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """ONNX's sliding windows over (H, W), per axis: kernel, stride, dilation, the pads before and after (from
    pads or auto_pad) and the output size. Window i of an axis starts at input position i*stride - before; its
    taps are start + j*dilation, j < kernel."""
    size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    before: tuple[int, int]
    after: tuple[int, int]
    out: tuple[int, int]

    @property
    def symmetric(self) -> bool:
        return self.before == self.after

    def taps_inside(self, axis: int, low: int, high: int) -> np.ndarray:
        """For each window along `axis`, how many of its taps lie in input positions [low, high)."""
        taps = (np.arange(self.out[axis])[:, None] * self.stride[axis] - self.before[axis]
                + np.arange(self.kernel[axis])[None, :] * self.dilation[axis])
        return ((taps >= low) & (taps < high)).sum(axis=1)

    def extended(self, x: np.ndarray, fill: float) -> np.ndarray:
        """x padded by `fill` (cut where no window reads) to exactly the rows and columns the windows span, so
        that a stride-`stride` pass without padding gives `out`."""
        widths, cut = [(0, 0), (0, 0)], [slice(None), slice(None)]
        for axis in range(2):
            span = (self.out[axis] - 1) * self.stride[axis] + self.dilation[axis] * (self.kernel[axis] - 1) + 1
            end = span - self.before[axis] - self.size[axis]
            widths.append((self.before[axis], max(end, 0)))
            cut.append(slice(0, self.size[axis] + min(end, 0)))
        return np.pad(x[tuple(cut)], widths, constant_values=x.dtype.type(fill))


def _window(op: str, size: tuple[int, int], kernel: tuple[int, int], attrs: Attributes, ceil_mode: bool) -> Window:
    """The windows of strides, dilations, pads ([top, left, bottom, right]) or auto_pad (SAME_UPPER/SAME_LOWER:
    output ceil(size/stride), the odd pad after/before; VALID: none), and ceil_mode (with explicit pads: the
    output size rounded up, less a last window that would start in the padding after the input)."""
    stride = _ints(op, attrs, "strides", (1, 1), 2, minimum=1)
    dilation = _ints(op, attrs, "dilations", (1, 1), 2, minimum=1)
    auto_pad = _choice(op, attrs, "auto_pad", "NOTSET", ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"))
    pads = _ints(op, attrs, "pads", (0, 0, 0, 0), 4, minimum=0)
    if auto_pad != "NOTSET" and any(pads):
        raise ValueError(f"{op}: attribute pads {list(pads)} cannot be used with auto_pad {auto_pad}")
    before, after, out = [], [], []
    for axis in range(2):
        n, k, s, d = size[axis], kernel[axis], stride[axis], dilation[axis]
        extent = d * (k - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (-(-n // s) - 1) * s + extent - n)
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            a = total - b
        else:
            b, a = (pads[axis], pads[axis + 2]) if auto_pad == "NOTSET" else (0, 0)
        span = n + b + a - extent
        if span < 0:
            raise ValueError(f"{op}: the window of size {extent} (kernel {k}, dilation {d}) is larger than the "
                             f"padded input ({n + b + a}) along {'HW'[axis]}")
        o = span // s + 1
        if ceil_mode and auto_pad == "NOTSET":
            o = -(-span // s) + 1
            if (o - 1) * s >= n + b:
                o -= 1
        before.append(b)
        after.append(a)
        out.append(o)
    return Window(tuple(size), tuple(kernel), stride, dilation, tuple(before), tuple(after), tuple(out))


def _pool_kernel(op: str, attrs: Attributes) -> tuple[int, int]:
    return _ints(op, attrs, "kernel_shape", None, 2, minimum=1)


def _torch_pool_padding(w: Window) -> tuple[int, int] | None:
    """The padding fastconv's (PyTorch's) pooling takes for `w`, or None where it cannot: unequal pads before
    and after, or more than half the kernel."""
    if w.symmetric and all(p <= k // 2 for p, k in zip(w.before, w.kernel)):
        return w.before
    return None


# ---- convolution and pooling ---------------------------------------------------------------------------------

def conv(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Conv-11 (Conv-1 the same): y = the 2-D cross-correlation of x (N, C, H, W) with w (M, C/group, kH, kW)
    plus b (M,), with strides, dilations, group and pads [top, left, bottom, right] or auto_pad; kernel_shape, if
    given, must be w's. Through fastconv.conv2d (uneven pads: the input is padded by the difference first)."""
    x, w, b = _args("Conv", inputs, 2, 3)
    _planar("Conv", x)
    _same_dtype("Conv", x, w, b)
    if w.ndim != 4:
        raise ValueError(f"Conv: weight must have rank 4 (M, C/group, kH, kW) for a 2-D input, got shape {w.shape}")
    kernel = _ints("Conv", attrs, "kernel_shape", w.shape[2:], 2, minimum=1)
    if kernel != w.shape[2:]:
        raise ValueError(f"Conv: attribute kernel_shape {list(kernel)} is not the weight's {list(w.shape[2:])}")
    group = _int("Conv", attrs, "group", 1)
    win = _window("Conv", x.shape[2:], kernel, attrs, ceil_mode=False)
    even = tuple(min(b_, a_) for b_, a_ in zip(win.before, win.after))
    if not win.symmetric:
        x = np.pad(x, [(0, 0), (0, 0)] + [(b_ - e, a_ - e) for b_, a_, e in zip(win.before, win.after, even)])
    return [conv2d(x, w, b, stride=win.stride, padding=even, dilation=win.dilation, groups=group)]


def conv_transpose(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """ConvTranspose-11 (1 the same): the transposed 2-D convolution of x (N, C, H, W) with w (C, M/group, kH, kW)
    plus b (M,): the full output, (in - 1) * stride + dilation * (kernel - 1) + 1 per axis, plus output_padding
    after, less pads [top, left, bottom, right] (or, with output_shape or auto_pad SAME_UPPER/SAME_LOWER (output
    in * stride), the pads that give that size, the odd one after for SAME_UPPER, before otherwise). Through
    fastconv.conv_transpose2d: with PyTorch's arguments where the pads are even and output_padding is smaller
    than the stride or dilation, else its full output cut (or extended by b alone) to the pads."""
    x, w, b = _args("ConvTranspose", inputs, 2, 3)
    _planar("ConvTranspose", x)
    _same_dtype("ConvTranspose", x, w, b)
    if w.ndim != 4:
        raise ValueError(f"ConvTranspose: weight must have rank 4 (C, M/group, kH, kW) for a 2-D input, got shape "
                         f"{w.shape}")
    group = _int("ConvTranspose", attrs, "group", 1)
    if group < 1 or x.shape[1] != w.shape[0] or x.shape[1] % group:
        raise ValueError(f"ConvTranspose: weight of shape {w.shape} and group {group} do not fit x's {x.shape[1]} "
                         "channels (weight's first dimension must be them, divisible by group)")
    kernel = _ints("ConvTranspose", attrs, "kernel_shape", w.shape[2:], 2, minimum=1)
    if kernel != w.shape[2:]:
        raise ValueError(f"ConvTranspose: attribute kernel_shape {list(kernel)} is not the weight's {list(w.shape[2:])}")
    stride = _ints("ConvTranspose", attrs, "strides", (1, 1), 2, minimum=1)
    dilation = _ints("ConvTranspose", attrs, "dilations", (1, 1), 2, minimum=1)
    extra = _ints("ConvTranspose", attrs, "output_padding", (0, 0), 2, minimum=0)
    auto_pad = _choice("ConvTranspose", attrs, "auto_pad", "NOTSET", ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"))
    full = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(x.shape[2:], stride, dilation, kernel)]
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in attrs:
            wanted = _ints("ConvTranspose", attrs, "output_shape", None, None, minimum=1)
            if len(wanted) not in (2, 4):
                raise ValueError(f"ConvTranspose: attribute output_shape must give (H, W) (or N, C, H, W), got "
                                 f"{list(wanted)}")
            wanted = wanted[-2:]
        else:
            wanted = tuple(n * s for n, s in zip(x.shape[2:], stride))
        total = [f + e - o for f, e, o in zip(full, extra, wanted)]
        after = [t // 2 if auto_pad != "SAME_UPPER" else t - t // 2 for t in total]
        before = [t - a for t, a in zip(total, after)]
    else:
        pads = _ints("ConvTranspose", attrs, "pads", (0, 0, 0, 0), 4, minimum=0) if auto_pad == "NOTSET" else (0,) * 4
        before, after = list(pads[:2]), list(pads[2:])
    out = [f + e - lo - hi for f, e, lo, hi in zip(full, extra, before, after)]
    if min(out) < 1:
        raise ValueError(f"ConvTranspose: the output would have size {out} (pads {before + after} exceed the full "
                         f"output {full} plus output_padding {list(extra)})")
    if before == after and min(before) >= 0 and all(e < s or e < d for e, s, d in zip(extra, stride, dilation)):
        return [conv_transpose2d(x, w, b, stride, tuple(before), extra, group, dilation)]
    y_full = conv_transpose2d(x, w, None, stride, 0, 0, group, dilation)
    y = np.zeros((x.shape[0], w.shape[1] * group, *out), x.dtype)
    src = tuple(slice(max(lo, 0), min(f, lo + o)) for lo, f, o in zip(before, full, out))
    dst = tuple(slice(sl.start - lo, sl.stop - lo) for sl, lo in zip(src, before))
    y[(..., *dst)] = y_full[(..., *src)]
    if b is not None:
        y += b.reshape(-1, 1, 1)
    return [y]


def max_pool(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """MaxPool-12 (8: Indices and storage_order; 10: ceil_mode and dilations; 12: int8/uint8, not taken here):
    y = the maximum of each window (padding never wins, NaN propagates); Indices: the flat position of each
    maximum in x, ((n*C + c)*H + h)*W + w, or with storage_order 1 (n*C + c)*H*W + w*H + h. Through
    fastconv.max_pool2d (pads it cannot take, uneven or over half the kernel: the input padded with -inf)."""
    x, = _args("MaxPool", inputs, 1, 1)
    _planar("MaxPool", x)
    kernel = _pool_kernel("MaxPool", attrs)
    ceil_mode = _flag("MaxPool", attrs, "ceil_mode", 0)
    storage_order = _flag("MaxPool", attrs, "storage_order", 0)
    win = _window("MaxPool", x.shape[2:], kernel, attrs, ceil_mode)
    padding = _torch_pool_padding(win)
    indices = n_outputs >= 2  # the Indices output is listed: only then are they computed
    if padding is not None:
        out = max_pool2d(x, kernel, win.stride, padding, win.dilation, ceil_mode, return_indices=indices)
        plane_w, top, left = x.shape[3], 0, 0
    else:
        if (win.taps_inside(0, 0, x.shape[2]) == 0).any() or (win.taps_inside(1, 0, x.shape[3]) == 0).any():
            raise ValueError(f"MaxPool: with pads {list(win.before + win.after)} some window holds no input element")
        xp = win.extended(x, -np.inf)
        out = max_pool2d(xp, kernel, win.stride, 0, win.dilation, False, return_indices=indices)
        plane_w, (top, left) = xp.shape[3], win.before
    if not indices:
        return [out]
    y, index = out
    n, c, h, w = x.shape
    row, col = index // plane_w - top, index % plane_w - left
    within = row * w + col if storage_order == 0 else col * h + row
    planes = np.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    return [y, planes + within]


def average_pool(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """AveragePool-19 (7: count_include_pad; 10: ceil_mode; 19: dilations): y = the mean of each window over its
    input elements, or with count_include_pad over its taps inside the padded input (pads before to pads after;
    not the extra a ceil_mode window reaches). Through fastconv.avg_pool2d; with dilations or pads it cannot take,
    the window sums by fastconv.conv2d with a kernel of ones, divided by the counts."""
    x, = _args("AveragePool", inputs, 1, 1)
    _planar("AveragePool", x)
    kernel = _pool_kernel("AveragePool", attrs)
    ceil_mode = _flag("AveragePool", attrs, "ceil_mode", 0)
    include_pad = _flag("AveragePool", attrs, "count_include_pad", 0)
    win = _window("AveragePool", x.shape[2:], kernel, attrs, ceil_mode)
    padding = _torch_pool_padding(win)
    if padding is not None and win.dilation == (1, 1):
        return [avg_pool2d(x, kernel, win.stride, padding, ceil_mode, count_include_pad=include_pad)]
    counts = [win.taps_inside(axis, -win.before[axis] if include_pad else 0,
                              x.shape[2 + axis] + (win.after[axis] if include_pad else 0)) for axis in range(2)]
    if not include_pad and ((counts[0] == 0).any() or (counts[1] == 0).any()):
        raise ValueError(f"AveragePool: with pads {list(win.before + win.after)} and count_include_pad 0 some "
                         "window holds no input element")
    n, c = x.shape[:2]
    xp = win.extended(x, 0)
    sums = conv2d(xp.reshape(n * c, 1, *xp.shape[2:]), np.ones((1, 1, *kernel), x.dtype), stride=win.stride,
                  dilation=win.dilation)
    return [sums.reshape(n, c, *win.out) / np.outer(*counts).astype(x.dtype)]


def global_average_pool(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """GlobalAveragePool-1: y (N, C, 1, 1) = the mean of each plane. Through fastconv.adaptive_avg_pool2d."""
    x, = _args("GlobalAveragePool", inputs, 1, 1)
    _planar("GlobalAveragePool", x)
    return [adaptive_avg_pool2d(x, 1)]


def global_max_pool(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """GlobalMaxPool-1: y (N, C, 1, 1) = the maximum of each plane. Through fastconv.max_pool2d."""
    x, = _args("GlobalMaxPool", inputs, 1, 1)
    _planar("GlobalMaxPool", x)
    return [max_pool2d(x, x.shape[2:])]


# ---- matrix products -----------------------------------------------------------------------------------------

STREAMING_ROWS = 4             # products with at most this many rows of A read B once, unpacked (gemm "streaming")
STREAMING_ROWS_TRANSPOSED = 16  # the same where B is given transposed (Gemm's transB), which packing reads slowly


def _matmul_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (M, K) @ b (K, N): fastconv.gemm for float32/float64 (few rows: the streaming kernel, one pass over b;
    else the packed kernel; measured on 4096x4096 b: 4 rows streaming 7-9 ms, packed 8 (26 with b transposed);
    16 rows 21-23 against 11 (28 transposed)), NumPy for integers. Not BLAS, the gemm's default alone: its threads spin after each
    call against the Numba threads of the convolutions around it (ResNet-50's classifier, 1x2048 @ 2048x1000:
    4.3 ms in the network, 0.7 ms packed; VGG-19's first, 1x25088 @ 25088x4096: 195 ms packed, which packs all
    of b for one row)."""
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions must agree: {a.shape} @ {b.shape}")
    if a.dtype.name not in FLOATS:
        return np.matmul(a, b)
    transposed = b.flags.f_contiguous and not b.flags.c_contiguous
    streaming = a.shape[0] <= (STREAMING_ROWS_TRANSPOSED if transposed else STREAMING_ROWS)
    return fc_gemm(a, b, algo="streaming" if streaming else "packed")


def _scaled(y: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1:
        return y
    return y * y.dtype.type(factor) if y.dtype.kind == "f" else (y * factor).astype(y.dtype)


def gemm(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Gemm-13 (7: C required; 11: C optional): y = alpha * A' @ B' + beta * C, A' = A.T with transA, B' = B.T
    with transB, C broadcast to (M, N) (unidirectionally). A' @ B' through fastconv.gemm for floats."""
    a, b, c = _args("Gemm", inputs, 2 if opset >= 11 else 3, 3)
    _same_dtype("Gemm", a, b, c)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Gemm: A and B must be matrices, got shapes {a.shape} and {b.shape}")
    a = a.T if _flag("Gemm", attrs, "transA", 0) else a
    b = b.T if _flag("Gemm", attrs, "transB", 0) else b
    try:
        y = _scaled(_matmul_2d(a, b), _float("Gemm", attrs, "alpha", 1.0))
    except ValueError as error:
        raise ValueError(f"Gemm: {error}") from None
    if c is None:
        return [y]
    if _broadcast("Gemm", c.shape, y.shape) != y.shape:
        raise ValueError(f"Gemm: C of shape {c.shape} does not broadcast to the product's {y.shape}")
    return [y + _scaled(c, _float("Gemm", attrs, "beta", 1.0))]


def matmul(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """MatMul-13 (1, 9 the same): numpy.matmul (1-D operands promoted to a matrix and the added axis removed;
    batch axes broadcast). A float product whose B is a matrix runs through fastconv.gemm (A's leading axes
    merged into rows, a vector A one row); the others through NumPy."""
    a, b = _args("MatMul", inputs, 2, 2)
    _same_dtype("MatMul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"MatMul: operands must have rank 1 or more, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"MatMul: inner dimensions must agree, got shapes {a.shape} and {b.shape}")
    if b.ndim == 2 and a.dtype.name in FLOATS:
        return [_matmul_2d(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[1])]
    _broadcast("MatMul", a.shape[:-2], b.shape[:-2])
    return [np.matmul(a, b)]


# ---- elementwise ---------------------------------------------------------------------------------------------

def _binary(op: str, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    a, b = _args(op, inputs, 2, 2)
    _same_dtype(op, a, b)
    _broadcast(op, a.shape, b.shape)
    return a, b


def add(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Add-14 (7: multidirectional broadcasting; 14: more integer types): a + b."""
    a, b = _binary("Add", inputs)
    return [a + b]


def sub(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Sub-14 (7: multidirectional broadcasting): a - b."""
    a, b = _binary("Sub", inputs)
    return [a - b]


def mul(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Mul-14 (7: multidirectional broadcasting): a * b."""
    a, b = _binary("Mul", inputs)
    return [a * b]


def div(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Div-14 (7: multidirectional broadcasting): a / b; integers divide truncating toward zero (x / 0: IEEE for
    floats, 0 for integers)."""
    a, b = _binary("Div", inputs)
    with np.errstate(divide="ignore", invalid="ignore"):
        if a.dtype.kind == "f":
            return [a / b]
        q = a // b
        return [q + ((a % b != 0) & ((a < 0) != (b < 0))).astype(q.dtype)]


def sum_(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Sum-13 (8: multidirectional broadcasting; before, at opset 7, the shapes must be equal): the elementwise
    sum of one or more inputs."""
    if not inputs or any(a is None for a in inputs):
        raise ValueError("Sum: takes one or more inputs, none omitted")
    _same_dtype("Sum", *inputs)
    shape = _broadcast("Sum", *(a.shape for a in inputs))
    if opset < 8 and any(a.shape != shape for a in inputs):
        raise ValueError(f"Sum: inputs must have one shape before opset 8, got {[a.shape for a in inputs]}")
    y = inputs[0]
    for a in inputs[1:]:
        y = y + a
    return [y]


def relu(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Relu-14 (6, 13 the same for floats; 14: signed integers): max(x, 0)."""
    x, = _args("Relu", inputs, 1, 1)
    return [np.maximum(x, x.dtype.type(0))]


def leaky_relu(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """LeakyRelu-16 (6 the same): x, or alpha * x (default 0.01) where x < 0."""
    x, = _args("LeakyRelu", inputs, 1, 1)
    alpha = x.dtype.type(_float("LeakyRelu", attrs, "alpha", 0.01))
    return [np.where(x < 0, x * alpha, x)]


def clip(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Clip-13 (6: min and max attributes; 11: optional scalar inputs of x's dtype; 12: integers): min(max(x,
    min), max), so min > max gives max everywhere; an absent bound does not clip."""
    x, low, high = _args("Clip", inputs, 1, 3)
    bounds = []
    for i, name in ((1, "min"), (2, "max")):
        value = _attribute_or_input("Clip", [x, low, high], i, attrs, name, opset, 11)
        if isinstance(value, np.ndarray):
            _same_dtype("Clip", x, value)
            if value.size != 1:
                raise ValueError(f"Clip: input {name} must be a scalar, got shape {value.shape}")
            value = value.reshape(())
        elif value is not None:
            value = x.dtype.type(_float("Clip", attrs, name, 0.0))
        bounds.append(value)
    y = x if bounds[0] is None else np.maximum(x, bounds[0])
    return [y if bounds[1] is None else np.minimum(y, bounds[1])]


def sigmoid(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Sigmoid-13 (6 the same): 1 / (1 + exp(-x)), computed without overflow."""
    x, = _args("Sigmoid", inputs, 1, 1)
    e = np.exp(-np.abs(x))
    return [np.where(x >= 0, 1 / (1 + e), e / (1 + e))]


def hard_sigmoid(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """HardSigmoid-6: max(0, min(1, alpha * x + beta)), alpha 0.2 and beta 0.5 by default."""
    x, = _args("HardSigmoid", inputs, 1, 1)
    alpha = x.dtype.type(_float("HardSigmoid", attrs, "alpha", 0.2))
    beta = x.dtype.type(_float("HardSigmoid", attrs, "beta", 0.5))
    return [np.clip(x * alpha + beta, x.dtype.type(0), x.dtype.type(1))]


def hard_swish(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """HardSwish-14 (from opset 14): x * max(0, min(1, x / 6 + 0.5))."""
    if opset < 14:
        raise ValueError(f"HardSwish exists from opset 14 on, the model's is {opset}")
    x, = _args("HardSwish", inputs, 1, 1)
    return [x * np.clip(x * x.dtype.type(1 / 6) + x.dtype.type(0.5), x.dtype.type(0), x.dtype.type(1))]


def tanh(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Tanh-13 (6 the same): tanh(x)."""
    x, = _args("Tanh", inputs, 1, 1)
    return [np.tanh(x)]


# ---- normalization -------------------------------------------------------------------------------------------

def batch_normalization(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """BatchNormalization-15 (7: spatial, 0 meaning statistics of shape (C, D1, ...) per element; 9: spatial
    removed; 14: training_mode; 15: parameters of another float type): the inference form, y = (x - mean) /
    sqrt(var + epsilon) * scale + B along axis 1. training_mode 1 and the training outputs (running and saved
    statistics) are not supported."""
    x, scale, bias, mean, var = _args("BatchNormalization", inputs, 5, 5)
    if _flag("BatchNormalization", attrs, "training_mode", 0) or n_outputs > 1:
        raise UnsupportedCase("BatchNormalization: the training form (training_mode 1, or the running/saved "
                              "statistics outputs) is not supported: fastconv runs the inference form")
    if x.ndim < 2:
        raise ValueError(f"BatchNormalization: input must have rank 2 or more (N, C, ...), got shape {x.shape}")
    spatial = _flag("BatchNormalization", attrs, "spatial", 1) if opset < 9 else True
    shape = (x.shape[1],) if spatial else x.shape[1:]
    params = []
    for name, p in (("scale", scale), ("B", bias), ("mean", mean), ("var", var)):
        if p.shape != shape or p.dtype.kind != "f":
            raise ValueError(f"BatchNormalization: input {name} must be a float tensor of shape {shape}, got "
                             f"{p.dtype} {p.shape}")
        params.append(p.astype(x.dtype, copy=False).reshape(shape + (1,) * (x.ndim - 1 - len(shape))))
    scale, bias, mean, var = params
    epsilon = x.dtype.type(_float("BatchNormalization", attrs, "epsilon", 1e-5))
    y = x - mean
    y *= scale / np.sqrt(var + epsilon)
    y += bias
    return [y]


def layer_normalization(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """LayerNormalization-17: y = (x - mean) / sqrt(var + epsilon) * scale + B, mean and (biased) var over the axes
    from `axis` (default -1) to the last; scale and B broadcast to those axes' shape. Outputs Mean and InvStdDev
    (x's leading axes, ones after; float32 with stash_type 1, the default, else x's dtype) when listed. The
    statistics are summed in float64."""
    x, scale, bias = _args("LayerNormalization", inputs, 2, 3)
    axis = _int("LayerNormalization", attrs, "axis", -1)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"LayerNormalization: axis {axis} is outside the input's rank {x.ndim}")
    axis %= x.ndim
    stash = _int("LayerNormalization", attrs, "stash_type", 1)
    stash_dtype = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}.get(stash)
    if stash_dtype is None:
        raise UnsupportedCase(f"LayerNormalization: stash_type {stash} is not supported (fastconv runs 1, float32, "
                              "and 11, float64)")
    for name, p in (("Scale", scale), ("B", bias)):
        if p is not None and (p.dtype != x.dtype or _broadcast("LayerNormalization", p.shape, x.shape[axis:])
                              != x.shape[axis:]):
            raise ValueError(f"LayerNormalization: {name} of {p.dtype} {p.shape} does not broadcast to the "
                             f"normalized axes' shape {x.shape[axis:]} in x's dtype {x.dtype}")
    epsilon = _float("LayerNormalization", attrs, "epsilon", 1e-5)
    axes = tuple(range(axis, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    centered = x64 - mean
    inv_std = 1 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + epsilon)
    y = centered * inv_std * scale
    if bias is not None:
        y += bias
    return [y.astype(x.dtype), mean.astype(stash_dtype), inv_std.astype(stash_dtype)][:max(1, n_outputs)]


def lrn(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """LRN-13 (1 the same): y = x / (bias + alpha / size * s)^beta, s the sum of x^2 over channels c -
    floor((size-1)/2) to c + ceil((size-1)/2) (axis 1)."""
    x, = _args("LRN", inputs, 1, 1)
    size = _int("LRN", attrs, "size", None)
    if size < 1 or x.ndim < 3:
        raise ValueError(f"LRN: needs size >= 1 and an input (N, C, D1, ...), got size {size}, shape {x.shape}")
    alpha, beta, bias = (x.dtype.type(_float("LRN", attrs, name, default))
                         for name, default in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    before = (size - 1) // 2
    squares = np.pad(x * x, [(0, 0), (before, size - 1 - before)] + [(0, 0)] * (x.ndim - 2))
    c = x.shape[1]
    total = squares[:, 0:c].copy()
    for j in range(1, size):
        total += squares[:, j:j + c]
    return [x / (bias + alpha / x.dtype.type(size) * total) ** beta]


def _softmax_axis(op: str, x: np.ndarray, attrs: Attributes, opset: int) -> tuple[np.ndarray, int]:
    """(the array to normalize, its axis): before opset 13, x coerced to 2-D (prod(shape[:axis]), prod(rest)),
    normalized along its axis 1; from 13, x along axis (default -1)."""
    axis = _int(op, attrs, "axis", 1 if opset < 13 else -1)
    axis = _axis(op, axis, max(x.ndim, 1))
    if opset >= 13:
        return x, axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:])), 1


def softmax(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Softmax-13 (1, 11: coerced to 2-D at axis, default 1; 13: along axis, default -1): exp(x - max) / sum."""
    x, = _args("Softmax", inputs, 1, 1)
    v, axis = _softmax_axis("Softmax", x, attrs, opset)
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return [(e / e.sum(axis=axis, keepdims=True)).reshape(x.shape)]


def log_softmax(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """LogSoftmax-13 (1, 11: coerced to 2-D at axis, default 1; 13: along axis, default -1): x - max -
    log(sum(exp(x - max)))."""
    x, = _args("LogSoftmax", inputs, 1, 1)
    v, axis = _softmax_axis("LogSoftmax", x, attrs, opset)
    shifted = v - v.max(axis=axis, keepdims=True)
    return [(shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))).reshape(x.shape)]


# ---- shapes and data movement --------------------------------------------------------------------------------

def concat(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Concat-13 (4: axis required; 11: negative axis): the inputs joined along axis."""
    if not inputs or any(a is None for a in inputs):
        raise ValueError("Concat: takes one or more inputs, none omitted")
    _same_dtype("Concat", *inputs)
    rank = inputs[0].ndim
    axis = _axis("Concat", _int("Concat", attrs, "axis", None), max(rank, 1))
    if any(a.ndim != rank or a.shape[:axis] + a.shape[axis + 1:] != inputs[0].shape[:axis] + inputs[0].shape[
            axis + 1:] for a in inputs):
        raise ValueError(f"Concat: shapes {[a.shape for a in inputs]} differ outside axis {axis}")
    return [np.concatenate(inputs, axis=axis)]


def split(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Split-18 (2: split attribute; 13: split input; 18: num_outputs, the last part smaller when it does not
    divide): x cut along axis into parts of the sizes in split, or into n_outputs equal parts."""
    x, sizes = _args("Split", inputs, 1, 2)
    axis = _axis("Split", _int("Split", attrs, "axis", 0), max(x.ndim, 1))
    sizes = _attribute_or_input("Split", [x, sizes], 1, attrs, "split", opset, 13)
    dim = x.shape[axis]
    if isinstance(sizes, np.ndarray):
        sizes = _int_vector("Split", "split", sizes)
    if sizes is not None:
        sizes = tuple(int(d) for d in sizes)
        if len(sizes) != n_outputs or min(sizes, default=0) < 0 or sum(sizes) != dim:
            raise ValueError(f"Split: split {list(sizes)} must hold {n_outputs} sizes >= 0 (one per output) adding "
                             f"up to the axis' size {dim}")
    elif opset >= 18:
        parts = _int("Split", attrs, "num_outputs", None)
        if parts != n_outputs or parts < 1:
            raise ValueError(f"Split: attribute num_outputs {parts} is not the node's {n_outputs} outputs")
        chunk = -(-dim // parts)
        sizes = (chunk,) * (parts - 1) + (dim - chunk * (parts - 1),)
        if sizes[-1] < 0:
            raise ValueError(f"Split: an axis of size {dim} cannot be cut into {parts} parts of {chunk}")
    else:
        if dim % n_outputs:
            raise ValueError(f"Split: an axis of size {dim} does not divide into {n_outputs} equal parts")
        sizes = (dim // n_outputs,) * n_outputs
    starts = np.cumsum((0,) + sizes)
    cut = [slice(None)] * x.ndim
    return [x[tuple(cut[:axis] + [slice(int(s), int(s) + n)] + cut[axis + 1:])] for s, n in zip(starts, sizes)]


def flatten(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Flatten-21 (9: any type; 11: negative axis): x as (prod(shape[:axis]), prod(shape[axis:])), axis in
    [-rank, rank], default 1."""
    x, = _args("Flatten", inputs, 1, 1)
    axis = _int("Flatten", attrs, "axis", 1)
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"Flatten: axis {axis} is outside [{-x.ndim}, {x.ndim}]")
    axis += x.ndim if axis < 0 else 0
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def reshape(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Reshape-21 (5: shape input; 14: allowzero): x in the shape given, where -1 (at most one) is inferred and
    0 copies x's size at that position (with allowzero 1, 0 is a size of zero)."""
    x, shape = _args("Reshape", inputs, 2, 2)
    shape = _int_vector("Reshape", "shape", shape)
    allow_zero = _flag("Reshape", attrs, "allowzero", 0) if opset >= 14 else False
    if shape.count(-1) > 1 or any(d < -1 for d in shape) or (allow_zero and 0 in shape and -1 in shape):
        raise ValueError(f"Reshape: shape {list(shape)} is invalid (one -1 at most, no other negative size"
                         + (", no 0 with -1 under allowzero)" if allow_zero else ")"))
    if not allow_zero and any(d == 0 and i >= x.ndim for i, d in enumerate(shape)):
        raise ValueError(f"Reshape: shape {list(shape)} copies (0) a size beyond x's rank {x.ndim}")
    sizes = [x.shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(shape)]
    known = math.prod(d for d in sizes if d != -1)
    if -1 in sizes:
        if known == 0 or x.size % known:
            raise ValueError(f"Reshape: cannot infer the -1 of shape {list(shape)} for x of shape {x.shape}")
        sizes[sizes.index(-1)] = x.size // known
    elif known != x.size:
        raise ValueError(f"Reshape: shape {list(shape)} holds {known} elements, x of shape {x.shape} {x.size}")
    return [x.reshape(sizes)]


def transpose(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Transpose-21 (1, 13 the same): x's axes permuted by perm, reversed by default."""
    x, = _args("Transpose", inputs, 1, 1)
    perm = _ints("Transpose", attrs, "perm", tuple(reversed(range(x.ndim))))
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"Transpose: attribute perm {list(perm)} is not a permutation of x's {x.ndim} axes")
    return [x.transpose(perm)]


def _axes(op: str, inputs: list, attrs: Attributes, opset: int, rank: int) -> tuple[int, ...] | None:
    """Squeeze's and Unsqueeze's axes (an attribute before opset 13, input 1 from it on), each in [-rank,
    rank) as a non-negative axis, without repeats; None when absent."""
    axes = _attribute_or_input(op, inputs, 1, attrs, "axes", opset, 13)
    if axes is None:
        return None
    axes = _int_vector(op, "axes", axes) if isinstance(axes, np.ndarray) else _ints(op, attrs, "axes", None)
    normalized = tuple(_axis(op, a, rank, "axes entry") for a in axes)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{op}: axes {list(axes)} repeat an axis")
    return normalized


def squeeze(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Squeeze-21 (1: axes attribute; 11: negative axes; 13: axes input): x without the size-1 axes listed, or
    without all of its size-1 axes."""
    x, axes = _args("Squeeze", inputs, 1, 2)
    axes = _axes("Squeeze", [x, axes], attrs, opset, x.ndim)
    if axes is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    if any(x.shape[a] != 1 for a in axes):
        raise ValueError(f"Squeeze: axes {list(axes)} of x of shape {x.shape} are not all of size 1")
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


def unsqueeze(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Unsqueeze-21 (1: axes attribute; 11: negative axes; 13: axes input): x with size-1 axes inserted at the
    output positions listed."""
    x, axes = _args("Unsqueeze", inputs, 1, 2)
    count = len(axes.reshape(-1)) if isinstance(axes, np.ndarray) else len(attrs.get("axes", ()))
    axes = _axes("Unsqueeze", [x, axes], attrs, opset, x.ndim + count)
    if axes is None:
        raise ValueError("Unsqueeze: axes are required")
    sizes = iter(x.shape)
    return [x.reshape([1 if i in axes else next(sizes) for i in range(x.ndim + len(axes))])]


def shape(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Shape-21 (1, 13 the same; 15: start and end, negative from the back, clamped to [0, rank]): x's sizes
    from start to end, int64."""
    x, = _args("Shape", inputs, 1, 1)
    start, end = _int("Shape", attrs, "start", 0), attrs.get("end")
    end = None if end is None else _int("Shape", attrs, "end", None)
    return [np.array(x.shape[start:end], dtype=np.int64)]


def gather(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Gather-13 (1, 11 the same; 11: negative indices): the entries of data along axis at indices (int32 or
    int64, negative from the back), shaped data.shape[:axis] + indices.shape + data.shape[axis+1:]."""
    data, indices = _args("Gather", inputs, 2, 2)
    if data.ndim == 0:
        raise ValueError("Gather: data must have rank 1 or more")
    axis = _axis("Gather", _int("Gather", attrs, "axis", 0), data.ndim)
    if indices.dtype.name not in ("int32", "int64"):
        raise ValueError(f"Gather: indices must be int32 or int64, got {indices.dtype}")
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ValueError(f"Gather: indices in [{indices.min()}, {indices.max()}] are outside [{-size}, {size}) "
                         f"(axis {axis} of size {size})")
    return [np.take(data, indices.astype(np.int64), axis=axis)]


def pad(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Pad-21 (2: pads and value attributes; 11: pads and constant_value inputs; 18: axes input; 19: wrap):
    x padded by pads [a1_begin, a2_begin, ..., a1_end, a2_end, ...] over axes (default all; negative pads cut)
    with mode constant (constant_value, default 0), reflect (mirror without the edge), edge or wrap."""
    x, pads, value, axes = _args("Pad", inputs, 1, 4)
    modes = ("constant", "reflect", "edge") + (("wrap",) if opset >= 19 else ())
    mode = _choice("Pad", attrs, "mode", "constant", modes)
    if opset < 11:
        if pads is not None or value is not None:
            raise ValueError(f"Pad: pads and value are attributes before opset 11 (opset {opset})")
        pads = _ints("Pad", attrs, "pads", None)
        value = x.dtype.type(_float("Pad", attrs, "value", 0.0))
    else:
        if pads is None:
            raise ValueError("Pad: input pads is required")
        pads = _int_vector("Pad", "pads", pads)
        if value is not None and value.size != 1:
            raise ValueError(f"Pad: constant_value must be a scalar, got shape {value.shape}")
        value = x.dtype.type(0) if value is None else value.reshape(()).astype(x.dtype)
    if axes is not None and opset < 18:
        raise ValueError(f"Pad: input axes exists from opset 18 on (opset {opset})")
    axes = tuple(range(x.ndim)) if axes is None else tuple(
        _axis("Pad", a, x.ndim, "axes entry") for a in _int_vector("Pad", "axes", axes))
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        raise ValueError(f"Pad: pads {list(pads)} must hold a begin and an end for each of the axes {list(axes)}")
    widths, cut = [(0, 0)] * x.ndim, [slice(None)] * x.ndim
    for i, axis in enumerate(axes):
        begin, end = pads[i], pads[i + len(axes)]
        if x.shape[axis] + min(begin, 0) + min(end, 0) < 0:
            raise ValueError(f"Pad: pads {list(pads)} cut more than axis {axis}'s size {x.shape[axis]}")
        widths[axis] = (max(begin, 0), max(end, 0))
        cut[axis] = slice(-min(begin, 0), x.shape[axis] + min(end, 0))
    x = x[tuple(cut)]
    if mode == "constant":
        return [np.pad(x, widths, mode="constant", constant_values=value)]
    if any(w != (0, 0) and x.shape[axis] == 0 for axis, w in enumerate(widths)):
        raise ValueError(f"Pad: mode {mode} cannot pad an empty axis")
    return [np.pad(x, widths, mode=mode)]


def dropout(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Dropout-13 (7: ratio attribute, mask of x's dtype; 10: mask bool; 12: ratio and training_mode inputs):
    the inference form, y = x and a mask of ones; training_mode true is supported only with ratio 0 (the same)."""
    x, ratio, training = _args("Dropout", inputs, 1, 3)
    if opset < 12 and (ratio is not None or training is not None):
        raise ValueError(f"Dropout: ratio is an attribute before opset 12 and there is no training_mode (opset "
                         f"{opset})")
    if opset >= 12 and training is not None and training.size == 1 and bool(training.reshape(())):
        if ratio is None or float(ratio.reshape(())) != 0:
            raise UnsupportedCase("Dropout: training_mode true with a ratio above 0 (random) is not supported: "
                                  "fastconv runs the inference form")
    outputs = [x]
    if n_outputs > 1:
        outputs.append(np.ones(x.shape, np.bool_ if opset >= 10 else x.dtype))
    return outputs


def identity(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Identity-21 (1, 13, 14, 16, 19 the same for tensors): x."""
    x, = _args("Identity", inputs, 1, 1)
    return [x]


CONSTANT_FORMS = ("value", "value_float", "value_floats", "value_int", "value_ints", "value_string",
                  "value_strings", "sparse_value")


def constant(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """Constant-21 (9: value; 11: sparse_value; 12: value_float(s), value_int(s), value_string(s)): the one value
    attribute given, as a tensor (value_float(s) float32, value_int(s) int64). Strings and sparse tensors are not
    supported."""
    _args("Constant", inputs, 0, 0)
    given = [name for name in CONSTANT_FORMS if name in attrs]
    if len(given) != 1:
        raise ValueError(f"Constant: needs exactly one of the attributes {', '.join(CONSTANT_FORMS)}, got {given}")
    name = given[0]
    if name in ("value_string", "value_strings", "sparse_value"):
        raise UnsupportedCase(f"Constant: attribute {name} is not supported (fastconv runs numeric dense tensors)")
    if name == "value":
        if not isinstance(attrs[name], np.ndarray):
            raise ValueError(f"Constant: attribute value must be a tensor, got {type(attrs[name]).__name__}")
        return [attrs[name]]
    if name == "value_float":
        return [np.array(_float("Constant", attrs, name, 0.0), dtype=np.float32)]
    if name == "value_floats":
        values = attrs[name]
        if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                        for v in values):
            raise ValueError(f"Constant: attribute value_floats must be a list of floats, got {values!r}")
        return [np.array(values, dtype=np.float32)]
    return [np.array(_int("Constant", attrs, name, None) if name == "value_int" else
                     _ints("Constant", attrs, name, None), dtype=np.int64)]


def constant_of_shape(inputs: Inputs, attrs: Attributes, opset: int, n_outputs: int) -> list:
    """ConstantOfShape-21 (9; 20, 21: more types): a tensor of the shape given (1-D int64, sizes >= 0) filled with
    the one element of value (default float32 0)."""
    if opset < 9:
        raise ValueError(f"ConstantOfShape exists from opset 9 on, the model's is {opset}")
    sizes, = _args("ConstantOfShape", inputs, 1, 1)
    sizes = _int_vector("ConstantOfShape", "input", sizes)
    if any(d < 0 for d in sizes):
        raise ValueError(f"ConstantOfShape: sizes {list(sizes)} must be >= 0")
    value = attrs.get("value", np.zeros(1, np.float32))
    if not isinstance(value, np.ndarray) or value.size != 1:
        raise ValueError(f"ConstantOfShape: attribute value must be a tensor of one element, got {value!r}")
    return [np.full(sizes, value.reshape(()), dtype=value.dtype)]


OPS: dict[str, OpDef] = {d.op_type: d for d in (
    OpDef("Conv", conv, 11),
    OpDef("ConvTranspose", conv_transpose, 11),
    OpDef("MaxPool", max_pool, 12),
    OpDef("AveragePool", average_pool, 19),
    OpDef("GlobalAveragePool", global_average_pool, 1),
    OpDef("GlobalMaxPool", global_max_pool, 1),
    OpDef("Gemm", gemm, 13, (*FLOATS, "int32", "int64", "uint32", "uint64")),
    OpDef("MatMul", matmul, 13, (*FLOATS, "int32", "int64", "uint32", "uint64")),
    OpDef("Add", add, 14, (*FLOATS, *INTS)),
    OpDef("Sub", sub, 14, (*FLOATS, *INTS)),
    OpDef("Mul", mul, 14, (*FLOATS, *INTS)),
    OpDef("Div", div, 14, (*FLOATS, *INTS)),
    OpDef("Sum", sum_, 13),
    OpDef("Relu", relu, 14, (*FLOATS, "int8", "int16", "int32", "int64")),
    OpDef("LeakyRelu", leaky_relu, 16),
    OpDef("Clip", clip, 13, (*FLOATS, *INTS)),
    OpDef("Sigmoid", sigmoid, 13),
    OpDef("HardSigmoid", hard_sigmoid, 6),
    OpDef("HardSwish", hard_swish, 14),
    OpDef("Tanh", tanh, 13),
    OpDef("BatchNormalization", batch_normalization, 15),
    OpDef("LRN", lrn, 13),
    OpDef("LayerNormalization", layer_normalization, 17),
    OpDef("Softmax", softmax, 13),
    OpDef("LogSoftmax", log_softmax, 13),
    OpDef("Concat", concat, 13, ANY),
    OpDef("Split", split, 18, ANY),
    OpDef("Flatten", flatten, 21, ANY),
    OpDef("Reshape", reshape, 21, ANY),
    OpDef("Transpose", transpose, 21, ANY),
    OpDef("Squeeze", squeeze, 21, ANY),
    OpDef("Unsqueeze", unsqueeze, 21, ANY),
    OpDef("Shape", shape, 21, ANY),
    OpDef("Gather", gather, 13, ANY),
    OpDef("Pad", pad, 21, ANY),
    OpDef("Dropout", dropout, 13),
    OpDef("Identity", identity, 21, ANY),
    OpDef("Constant", constant, 21, ANY),
    OpDef("ConstantOfShape", constant_of_shape, 21, ("int64",)),
)}
