"""Compiled kernels of fastconv, installed as ``fastconv.kernels``.

Each module is plain loops over plain arrays: the Python layer in ``fastconv``
validates arguments, allocates outputs and picks a kernel; a kernel computes and
trusts its inputs. Numba kernels are compiled lazily on first call and cached on
disk (``cache=True``); importing this package compiles nothing. Every CPU kernel releases the
GIL while it runs (Numba ``nogil=True``, Cython ``nogil``), so Python threads calling ops at once
run their kernels in parallel.

Modules are named for what they compute (no name repeats a module of ``fastconv``):

- ``conv_direct``: direct convolution over a zero-padded input, forward and backward (Numba).
- ``conv_direct_simd``: direct convolution forward with explicit SIMD register tiles (Numba).
- ``conv_winograd``: Winograd F(2x2, 3x3) transforms and their batched products (Numba).
- ``conv_depthwise``: depthwise convolution (one input channel per group), forward and backward (Numba).
- ``im2col``: im2col / col2im (Cython, releases the GIL, OpenMP when built with it).
- ``matmul``: matrix products, BLAS through Numba and our own packed GEMM (Numba).
- ``simd``: the SIMD vector type and intrinsics (load, store, broadcast, FMA) of the register-tiled kernels.
- ``pooling``: max, average and adaptive average pooling, forward and backward (Numba); ``pool_windows``:
  the window rules it shares with ``cuda_pooling``, written once.
- ``elementwise``: activations (ReLU, LeakyReLU, sigmoid, tanh) forward and backward, batch-norm passes,
  SGD and Adam updates, finiteness checks (Numba).
- ``cuda_conv``, ``cuda_matmul``, ``cuda_pooling``, ``cuda_elementwise``: the GPU kernels (numba.cuda),
  imported only when a device array reaches an op: direct and im2col convolution, the tiled GEMM, pooling,
  and the elementwise pieces, reductions, losses and optimizer updates of a training step.
"""
