"""gemm: every CPU record of the registry (GEMM, read when the tests are collected) checked by
op_check.check_gemm (the float64 NumPy product, PyTorch) on all operand layouts and block edges."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastconv as fc
from fastconv.gemm import GEMM
from op_check import check_gemm, record_params


@pytest.mark.parametrize("record", record_params(GEMM.records("cpu")))
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 40),
       dtype=st.sampled_from([np.float32, np.float64]),
       a_order=st.sampled_from("CF"), b_order=st.sampled_from("CF"), seed=st.integers(0, 2**32 - 1))
def test_gemm(record, m, n, k, dtype, a_order, b_order, seed):
    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal((m, k)), dtype=dtype, order=a_order)
    b = np.asarray(rng.standard_normal((k, n)), dtype=dtype, order=b_order)
    check_gemm(record, a, b)


@pytest.mark.parametrize("record", record_params(r for r in GEMM.records("cpu") if not r.reference))
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (257, 129, 600), (600, 530, 97), (33, 1000, 1031), (1, 700, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_block_edges(record, m, n, k, dtype):
    rng = np.random.default_rng(m * n * k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    check_gemm(record, a, b)
    check_gemm(record, b.T, a.T)


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
