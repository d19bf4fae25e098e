"""The peers fastconv is measured against: NumPy (im2col/col2im and window views, vectorised)
and PyTorch (its CPU ops, or cuDNN/cuBLAS on the GPU through `torch_cuda`; the backward ops alone).

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

import numba
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


def blas_threads() -> int:
    """Threads of NumPy's bundled OpenBLAS (the CPU count where it cannot be asked)."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
        try:
            return int(getattr(ctypes.CDLL(libs[0]), symbol)())
        except (IndexError, OSError, AttributeError):
            continue
    return os.cpu_count() or 1


# PyTorch: each maker returns a callable that runs the op once; torch's threads = Numba's.
def torch():
    """The torch module with Numba's thread count, or pytest.skip where torch is not installed."""
    import pytest
    torch = pytest.importorskip("torch")
    torch.set_num_threads(numba.get_num_threads())
    return torch


def torch_cuda():
    """torch for the GPU benchmarks: float32 without TF32 (cuBLAS and cuDNN), cuDNN autotuning on
    (``cudnn.benchmark``: its fastest algorithm per shape, chosen in the warm-up call); pytest.skip
    where torch is missing or was built without CUDA."""
    import pytest
    t = torch()
    if not t.cuda.is_available():
        pytest.skip(f"torch {t.__version__} has no CUDA (a CPU build, or no GPU it can use): "
                    "only fastconv is timed on the GPU")
    t.backends.cuda.matmul.allow_tf32 = False
    t.backends.cudnn.allow_tf32 = False
    t.backends.cudnn.benchmark = True
    return t


def _on(device: str):
    """(torch, a function moving a NumPy array to `device` as a tensor, a function wrapping a call so that
    it waits for the GPU when `device` is 'cuda')."""
    if device == "cpu":
        t = torch()
        return t, t.from_numpy, lambda fn: fn
    t = torch_cuda()

    def synced(fn):
        def run():
            out = fn()
            t.cuda.synchronize()
            return out
        return run
    return t, lambda a: t.from_numpy(a).to(device), synced


def torch_conv2d(pass_: str, x: np.ndarray, w: np.ndarray, gy: np.ndarray, stride: int, padding: int,
                 dilation: int, groups: int, device: str = "cpu") -> Callable[[], object]:
    """Forward: F.conv2d without bias under no_grad. Backward: aten.convolution_backward alone
    (grad_x, grad_w, grad_b). On 'cuda': cuDNN, each call synchronized."""
    t, tensor, synced = _on(device)
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
    t, tensor, synced = _on(device)
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
    t, tensor, synced = _on(device)
    at, bt = tensor(a), tensor(b)
    return synced(lambda: t.mm(at, bt))


def torch_model(model):
    """The PyTorch twin of a fastconv model: the same structure (``torch.nn`` layers of the same names and
    arguments) holding copies of its weights and buffers, in the model's dtype."""
    import torch
    from fastconv import nn

    class Residual(torch.nn.Module):
        def __init__(self, body: torch.nn.Module, shortcut: torch.nn.Module | None) -> None:
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def twin(m: nn.Module) -> torch.nn.Module:
        if isinstance(m, nn.Sequential):
            return torch.nn.Sequential(*(twin(layer) for layer in m.layers))
        if isinstance(m, nn.Residual):
            return Residual(twin(m.body), None if m.shortcut is None else twin(m.shortcut))
        if isinstance(m, nn.Conv2d):
            return torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                   m.groups, bias=m.bias is not None)
        if isinstance(m, nn.Linear):
            return torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, nn.BatchNorm2d):
            return torch.nn.BatchNorm2d(m.num_features, m.eps, m.momentum)
        if isinstance(m, nn.MaxPool2d):
            return torch.nn.MaxPool2d(*m.args)
        if isinstance(m, nn.AvgPool2d):
            return torch.nn.AvgPool2d(*m.args)
        if isinstance(m, nn.Dropout):
            return torch.nn.Dropout(m.p)
        simple = {nn.ReLU: torch.nn.ReLU, nn.Flatten: torch.nn.Flatten,
                  nn.GlobalAvgPool2d: lambda: torch.nn.AdaptiveAvgPool2d(1)}
        if type(m) not in simple:
            raise TypeError(f"no PyTorch twin for {type(m).__name__}")
        return simple[type(m)]()

    state = model.state_dict()
    dtype = next(iter(state.values())).dtype
    tm = twin(model).to(torch.float64 if dtype == np.float64 else torch.float32)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return tm
