"""The pooling-window rules of the compiled kernels, written once as plain Python on ints: ``pooling``
compiles them with ``numba.njit`` for the CPU and ``cuda_pooling`` with ``numba.cuda.jit(device=True)`` for
the GPU. (``fastconv.naive`` states the same rules again on its own: it is the independent oracle.)

For output position ``o`` along one axis of an input of ``in_len`` elements, window ``k``, ``stride``,
``pad`` (and ``dil`` for max pooling), PyTorch's rules.
"""


def tap_range(o, in_len, k, stride, pad, dil):
    """(t0, t1): the window's taps t in [t0, t1) fall inside the input, 0 <= o*stride - pad + t*dil < in_len."""
    b = o * stride - pad
    t0 = 0 if b >= 0 else (dil - 1 - b) // dil
    t1 = max(min(k, (in_len - 1 - b) // dil + 1), 0)
    return t0, t1


def avg_window(o, in_len, k, stride, pad):
    """(lo, hi, extent): the window clipped to the input, [lo, hi), and its extent clipped to the padded
    input [-pad, in_len + pad) (PyTorch's pool_size factor for count_include_pad)."""
    start = o * stride - pad
    end = min(start + k, in_len + pad)
    return max(start, 0), min(end, in_len), end - start


def avg_divisor(divisor_override, count_include_pad, padded_size, inside_size):
    """The divisor of a window's sum: the override if non-zero, else its size with or without padding."""
    if divisor_override != 0:
        return divisor_override
    return padded_size if count_include_pad else inside_size


def adaptive_window(o, in_len, out_len):
    """(lo, hi): adaptive pooling's window [lo, hi) of output o when `in_len` inputs pool to `out_len` outputs,
    lo = floor(o * in_len / out_len), hi = ceil((o + 1) * in_len / out_len) (PyTorch's rule). Swapped,
    ``adaptive_window(i, out_len, in_len)`` is the range of outputs whose windows hold input i."""
    return (o * in_len) // out_len, ((o + 1) * in_len + out_len - 1) // out_len
