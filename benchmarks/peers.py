"""The peers fastconv is measured against: NumPy (im2col/col2im and window views, vectorised),
PyTorch (its CPU ops, or cuDNN/cuBLAS on the GPU; the backward ops alone) and ONNX Runtime (one-node
ONNX graphs, forward only; whole networks from an ONNX file). Each maker returns a no-argument callable
whose one call is the measured op.

A standalone module (NumPy at import, torch/onnx/onnxruntime imported by the makers that need them,
no package-relative imports): the benchmark workers (``worker.py``) import it by file, so that a
PyTorch or ONNX Runtime worker process never imports fastconv or Numba. The fastconv model a PyTorch
twin copies arrives as plain data: ``model_spec(model)`` and its ``state_dict()``.

NumPy conv: forward is im2col through ``as_strided`` on the zero-padded input, one column matrix
(C*R*S, N*OH*OW) and one matmul per group; backward recomputes the columns, grad_w = gy @ col.T and
dcol = w.T @ gy per group, then col2im by R*S strided slice additions. Pooling (no padding, as in
the suite): window views through ``as_strided``; backward adds grad_y into every window tap, masked
by the argmax for max pooling (the argmax is recomputed, as fastconv's backward does).
"""
from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _columns(x: np.ndarray, r: int, s: int, stride, padding, dilation) -> tuple[np.ndarray, int, int]:
    """im2col: (C*R*S, N*OH*OW) columns of x (N, C, H, W), rows ordered (c, r, s); with OH, OW."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1, (w + 2 * pw - dw * (s - 1) - 1) // sw + 1
    bn, bc, bh, bw = xp.strides
    view = as_strided(xp, (c, r, s, n, oh, ow), (bc, bh * dh, bw * dw, bn, bh * sh, bw * sw), writeable=False)
    return view.reshape(c * r * s, n * oh * ow), oh, ow


def conv2d_forward(x: np.ndarray, w: np.ndarray, stride=1, padding=0, dilation=1, groups: int = 1) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x, w), no bias."""
    k, cg, r, s = w.shape
    kg, n = k // groups, x.shape[0]
    col, oh, ow = _columns(x, r, s, stride, padding, dilation)
    w2 = w.reshape(k, cg * r * s)
    out = np.empty((k, n * oh * ow), x.dtype)
    for g in range(groups):
        np.matmul(w2[g * kg:(g + 1) * kg], col[g * cg * r * s:(g + 1) * cg * r * s], out=out[g * kg:(g + 1) * kg])
    return np.ascontiguousarray(out.reshape(k, n, oh, ow).transpose(1, 0, 2, 3))


def conv2d_backward(gy: np.ndarray, x: np.ndarray, w: np.ndarray, stride=1, padding=0, dilation=1,
                    groups: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grad_x, grad_w, grad_b) of conv2d for grad_y gy (N, K, OH, OW)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    k, cg, r, s = w.shape
    n, c, h, wd = x.shape
    kg, crs = k // groups, cg * r * s
    col, oh, ow = _columns(x, r, s, stride, padding, dilation)
    gy2 = np.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(k, n * oh * ow)
    w2 = w.reshape(k, crs)
    gw = np.empty((k, crs), x.dtype)
    dcol = np.empty((c * r * s, n * oh * ow), x.dtype)
    for g in range(groups):
        gy_g, rows = gy2[g * kg:(g + 1) * kg], slice(g * crs, (g + 1) * crs)
        np.matmul(gy_g, col[rows].T, out=gw[g * kg:(g + 1) * kg])
        np.matmul(w2[g * kg:(g + 1) * kg].T, gy_g, out=dcol[rows])
    dcol6 = dcol.reshape(c, r, s, n, oh, ow)
    gxp = np.zeros((c, n, h + 2 * ph, wd + 2 * pw), x.dtype)  # col2im, channel-major like dcol
    for i in range(r):
        for j in range(s):
            gxp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += dcol6[:, i, j]
    gx = np.ascontiguousarray(gxp[:, :, ph:ph + h, pw:pw + wd].transpose(1, 0, 2, 3))
    return gx, gw.reshape(w.shape), gy.sum(axis=(0, 2, 3))


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Read-only (N, C, OH, OW, k, k) view of the pooling windows (no padding)."""
    n, c, h, w = x.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    bn, bc, bh, bw = x.strides
    return as_strided(x, (n, c, oh, ow, kernel, kernel), (bn, bc, bh * stride, bw * stride, bh, bw),
                      writeable=False)


def _tap(gx: np.ndarray, i: int, j: int, stride: int, oh: int, ow: int) -> np.ndarray:
    """The positions of gx that window tap (i, j) touches, as an (N, C, OH, OW) view."""
    return gx[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]


def max_pool2d(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    return _windows(x, kernel, stride).max(axis=(4, 5))


def avg_pool2d(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    return _windows(x, kernel, stride).mean(axis=(4, 5), dtype=x.dtype)


def max_pool2d_backward(gy: np.ndarray, x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """grad_x: grad_y added at each window's argmax (first maximum, as PyTorch on ties)."""
    n, c, oh, ow = gy.shape
    arg = _windows(x, kernel, stride).reshape(n, c, oh, ow, kernel * kernel).argmax(axis=4)
    gx = np.zeros_like(x)
    for t in range(kernel * kernel):
        _tap(gx, t // kernel, t % kernel, stride, oh, ow)[...] += np.where(arg == t, gy, 0)
    return gx


def avg_pool2d_backward(gy: np.ndarray, x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """grad_x: grad_y / (k*k) added at every window tap."""
    _, _, oh, ow = gy.shape
    share = gy / np.asarray(kernel * kernel, gy.dtype)
    gx = np.zeros_like(x)
    for t in range(kernel * kernel):
        _tap(gx, t // kernel, t % kernel, stride, oh, ow)[...] += share
    return gx


class Unsupported(Exception):
    """This peer cannot run this case here (no CUDA in this torch, no float64 in ONNX Runtime's Conv):
    the suite skips the record with this message."""


def blas_threads() -> int:
    """Threads of NumPy's bundled OpenBLAS (the CPU count where it cannot be asked)."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
        try:
            return int(getattr(ctypes.CDLL(libs[0]), symbol)())
        except (IndexError, OSError, AttributeError):
            continue
    return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------- PyTorch

def torch_on(device: str):
    """(torch, a function moving a NumPy array to `device` as a tensor, a function wrapping a call so that
    it waits for the GPU when `device` is 'cuda'). On the GPU: float32 without TF32 (cuBLAS and cuDNN) and
    cuDNN autotuning on (``cudnn.benchmark``: its fastest algorithm per shape, chosen in the first call);
    Unsupported where torch has no usable CUDA."""
    import torch
    if device == "cpu":
        return torch, torch.from_numpy, lambda fn: fn
    if not torch.cuda.is_available():
        raise Unsupported(f"torch {torch.__version__} has no CUDA (a CPU build, or no GPU it can use)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True

    def synced(fn):
        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run
    return torch, lambda a: torch.from_numpy(a).to(device), synced


def torch_conv2d(pass_: str, x: np.ndarray, w: np.ndarray, gy: np.ndarray, stride: int, padding: int,
                 dilation: int, groups: int, device: str = "cpu") -> Callable[[], object]:
    """Forward: F.conv2d without bias under no_grad. Backward: aten.convolution_backward alone
    (grad_x, grad_w, grad_b). On 'cuda': cuDNN, each call synchronized."""
    t, tensor, synced = torch_on(device)
    xt, wt, gyt = tensor(x), tensor(w), tensor(gy)
    if pass_ == "forward":
        def run():
            with t.no_grad():
                return t.nn.functional.conv2d(xt, wt, None, stride, padding, dilation, groups)
        return synced(run)
    st, pad, dil = [stride] * 2, [padding] * 2, [dilation] * 2
    return synced(lambda: t.ops.aten.convolution_backward(gyt, xt, wt, [w.shape[0]], st, pad, dil, False, [0, 0],
                                                          groups, [True, True, True]))


def torch_pool2d(op: str, pass_: str, x: np.ndarray, gy: np.ndarray, kernel: int,
                 stride: int, device: str = "cpu") -> Callable[[], object]:
    """Forward: F.max_pool2d / F.avg_pool2d under no_grad. Backward: the aten backward op alone;
    max pooling's indices are computed once here, outside the timing. On 'cuda': each call synchronized."""
    t, tensor, synced = torch_on(device)
    xt, gyt, ks, st = tensor(x), tensor(gy), [kernel] * 2, [stride] * 2
    if pass_ == "forward":
        fn = getattr(t.nn.functional, op)

        def run():
            with t.no_grad():
                return fn(xt, kernel, stride)
        return synced(run)
    if op == "max_pool2d":
        _, idx = t.nn.functional.max_pool2d(xt, kernel, stride, return_indices=True)
        return synced(lambda: t.ops.aten.max_pool2d_with_indices_backward(gyt, xt, ks, st, [0, 0], [1, 1], False,
                                                                          idx))
    return synced(lambda: t.ops.aten.avg_pool2d_backward(gyt, xt, ks, st, [0, 0], False, True, None))


def torch_gemm(a: np.ndarray, b: np.ndarray, device: str = "cpu") -> Callable[[], object]:
    """torch.mm (on 'cuda': cuBLAS, each call synchronized)."""
    t, tensor, synced = torch_on(device)
    at, bt = tensor(a), tensor(b)
    return synced(lambda: t.mm(at, bt))


def torch_step(spec: list, state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float,
               device: str = "cpu") -> Callable[[], object]:
    """One training step per call (zero_grad, forward, cross-entropy, backward, torch.optim.Adam) of the
    PyTorch twin of a fastconv model (``torch_model(spec, state)``) on the batch x, y."""
    t, tensor, synced = torch_on(device)
    model = torch_model(spec, state).to(device)
    opt = t.optim.Adam(model.parameters(), lr=lr)
    xt, yt = tensor(x), tensor(y)

    def step():
        opt.zero_grad()
        loss = t.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss
    return synced(step)


def model_spec(model) -> list:
    """A fastconv model's structure as plain data: nested ``[layer type, arguments...]`` lists, what
    ``torch_model`` builds the twin from (read by class name and attributes: no fastconv import here)."""
    kind = type(model).__name__
    if kind == "Sequential":
        return [kind, [model_spec(m) for m in model.layers]]
    if kind == "Residual":
        return [kind, model_spec(model.body), None if model.shortcut is None else model_spec(model.shortcut)]
    if kind == "Conv2d":
        return [kind, model.in_channels, model.out_channels, model.kernel_size, model.stride, model.padding,
                model.dilation, model.groups, model.bias is not None]
    if kind == "Linear":
        return [kind, model.in_features, model.out_features, model.bias is not None]
    if kind == "BatchNorm2d":
        return [kind, model.num_features, model.eps, model.momentum]
    if kind in ("MaxPool2d", "AvgPool2d"):
        return [kind, *model.args]
    if kind == "Dropout":
        return [kind, model.p]
    if kind in ("ReLU", "Flatten", "GlobalAvgPool2d"):
        return [kind]
    raise TypeError(f"no PyTorch twin for {kind}")


def torch_model(spec: list, state: dict[str, np.ndarray]):
    """The PyTorch twin of a fastconv model: ``torch.nn`` layers of the same names and arguments as
    ``spec`` (``model_spec``), holding copies of ``state`` (the model's ``state_dict()``) in its dtype."""
    import torch

    class Residual(torch.nn.Module):
        def __init__(self, body: torch.nn.Module, shortcut: torch.nn.Module | None) -> None:
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def twin(node: list) -> torch.nn.Module:
        kind, args = node[0], node[1:]
        if kind == "Sequential":
            return torch.nn.Sequential(*(twin(child) for child in args[0]))
        if kind == "Residual":
            return Residual(twin(args[0]), None if args[1] is None else twin(args[1]))
        if kind == "Conv2d":
            *sizes, bias = args
            return torch.nn.Conv2d(*sizes, bias=bias)
        if kind == "Linear":
            return torch.nn.Linear(args[0], args[1], bias=args[2])
        layers = {"BatchNorm2d": torch.nn.BatchNorm2d, "MaxPool2d": torch.nn.MaxPool2d,
                  "AvgPool2d": torch.nn.AvgPool2d, "Dropout": torch.nn.Dropout, "ReLU": torch.nn.ReLU,
                  "Flatten": torch.nn.Flatten, "GlobalAvgPool2d": lambda: torch.nn.AdaptiveAvgPool2d(1)}
        return layers[kind](*args)

    dtype = next(iter(state.values())).dtype
    model = twin(spec).to(torch.float64 if dtype == np.float64 else torch.float32)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model


def torch_twin(model):
    """``torch_model`` of a fastconv model held in this process."""
    return torch_model(model_spec(model), model.state_dict())


# ------------------------------------------------------------------------------------ ONNX Runtime

def _ort_call(node, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray], out_shape: tuple[int, ...],
              threads: int, spinning: bool) -> Callable[[], object]:
    """A one-node ONNX graph (opset 17) run by an ONNX Runtime CPU session with `threads` intra-op threads;
    `constants` become initializers (weights), `inputs` are fed on every call. ``spinning``: whether
    the idle pool threads spin (ONNX Runtime's default) or sleep. float32 only (the CPU provider has no
    float64 Conv): Unsupported otherwise."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    dtype = next(iter(inputs.values())).dtype
    if dtype != np.float32:
        raise Unsupported(f"ONNX Runtime's CPU provider has no {dtype} convolution: the peer runs float32 only")
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    graph = helper.make_graph([node], "peer", [helper.make_tensor_value_info(k, elem, v.shape) for k, v in inputs.items()],
                              [helper.make_tensor_value_info(node.output[0], elem, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = dict(inputs)
    return lambda: session.run(None, feeds)


def onnxruntime_network(onnx_file: str, x: np.ndarray, threads: int) -> Callable[[], object]:
    """One forward pass of the whole network in `onnx_file` on the batch `x`: an ONNX Runtime CPU session with
    `threads` intra-op threads (one inter-op), every graph optimization on (ORT_ENABLE_ALL, applied when the
    session is made, outside the timing), its idle pool threads sleeping ("session.intra_op.allow_spinning"
    "0")."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feeds)


def onnxruntime_conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: int, dilation: int, groups: int,
                       threads: int, spinning: bool) -> Callable[[], object]:
    """Conv (no bias), the weights an initializer: ONNX Runtime's MLAS convolution."""
    from onnx import helper
    (n, _, h, wd), (k, _, r, s) = x.shape, w.shape
    out = (n, k, (h + 2 * padding - dilation * (r - 1) - 1) // stride + 1,
           (wd + 2 * padding - dilation * (s - 1) - 1) // stride + 1)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride] * 2, pads=[padding] * 4,
                            dilations=[dilation] * 2, group=groups, kernel_shape=[r, s])
    return _ort_call(node, {"x": x}, {"w": w}, out, threads, spinning)


def onnxruntime_pool2d(op: str, x: np.ndarray, kernel: int, stride: int, threads: int,
                       spinning: bool) -> Callable[[], object]:
    """MaxPool or AveragePool (no padding), forward."""
    from onnx import helper
    n, c, h, w = x.shape
    node = helper.make_node({"max_pool2d": "MaxPool", "avg_pool2d": "AveragePool"}[op], ["x"], ["y"],
                            kernel_shape=[kernel] * 2, strides=[stride] * 2)
    return _ort_call(node, {"x": x}, {}, (n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1),
                     threads, spinning)


def onnxruntime_gemm(a: np.ndarray, b: np.ndarray, threads: int, spinning: bool) -> Callable[[], object]:
    """MatMul of two inputs fed on every call."""
    from onnx import helper
    return _ort_call(helper.make_node("MatMul", ["a", "b"], ["c"]), {"a": a, "b": b}, {},
                     (a.shape[0], b.shape[1]), threads, spinning)
