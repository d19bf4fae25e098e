"""Compiled kernels of fastconv, installed as ``fastconv.kernels``.

Each module is plain loops over plain arrays: the Python layer in ``fastconv``
validates arguments, allocates outputs and picks a kernel; a kernel computes and
trusts its inputs. Numba kernels are compiled lazily on first call and cached on
disk (``cache=True``); importing this package compiles nothing. Every CPU kernel releases the
GIL while it runs (Numba ``nogil=True``, Cython ``nogil``), so Python threads calling ops at once
run their kernels in parallel.

- ``cuda_conv``, ``cuda_gemm``, ``cuda_pool``, ``cuda_elementwise``: the GPU kernels (numba.cuda), imported
  only when a device array reaches an op: direct and im2col convolution, the tiled GEMM, pooling, and the
  elementwise pieces, reductions, losses and optimizer updates of a training step.
- ``direct``: direct convolution, forward and backward (Numba).
- ``direct_simd``: direct convolution forward with explicit SIMD register tiles (Numba).
- ``elementwise``: ReLU forward and backward, SGD and Adam updates (Numba).
- ``gemm``: matrix products, BLAS through Numba and our own packed GEMM (Numba).
- ``im2col``: im2col / col2im (Cython, releases the GIL, OpenMP when built with it).
- ``pool``: max and average pooling, forward and backward (Numba).
- ``winograd``: Winograd F(2x2, 3x3) transforms and their batched products (Numba).
"""
