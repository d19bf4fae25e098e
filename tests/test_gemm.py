"""gemm: every kernel against NumPy in float64, all operand layouts, block edges."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastconv as fc
from strategies import assert_close

COMPILED = [a for a in fc.algorithms("gemm") if a != "naive"]


def _reference(a, b):
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(a.dtype)


@pytest.mark.parametrize("algo", fc.algorithms("gemm"))
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 40),
       dtype=st.sampled_from([np.float32, np.float64]),
       a_order=st.sampled_from("CF"), b_order=st.sampled_from("CF"), seed=st.integers(0, 2**32 - 1))
def test_gemm_matches_numpy(algo, m, n, k, dtype, a_order, b_order, seed):
    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal((m, k)), dtype=dtype, order=a_order)
    b = np.asarray(rng.standard_normal((k, n)), dtype=dtype, order=b_order)
    assert_close(fc.gemm(a, b, algo=algo), _reference(a, b), k)


@pytest.mark.parametrize("algo", COMPILED)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (257, 129, 600), (600, 530, 97), (33, 1000, 1031), (1, 700, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_block_edges(algo, m, n, k, dtype):
    rng = np.random.default_rng(m * n * k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    assert_close(fc.gemm(a, b, algo=algo), _reference(a, b), k)
    assert_close(fc.gemm(b.T, a.T, algo=algo), _reference(b.T, a.T), k)


def test_gemm_reads_readonly_and_big_endian_operands():
    a = np.arange(12.0, dtype=">f8").reshape(3, 4)
    b = np.ones((4, 2))
    b.flags.writeable = False
    for algo in fc.algorithms("gemm"):
        c = fc.gemm(a, b, algo=algo)
        assert c.dtype == np.float64 and c.dtype.isnative
        np.testing.assert_array_equal(c, a.astype(np.float64) @ b)


def test_gemm_strided_and_zero_sized():
    a = np.arange(24.0).reshape(4, 6)[:, ::2]
    b = np.ones((3, 2))
    np.testing.assert_array_equal(fc.gemm(a, b), a @ b)
    assert fc.gemm(np.ones((3, 0)), np.ones((0, 5))).shape == (3, 5)
    assert not fc.gemm(np.ones((3, 0)), np.ones((0, 5))).any()
