"""Explicit SIMD vectors in Numba: a ``SimdVector`` type backed by an LLVM ``<LANES x float/double>`` and
intrinsics that load, store, broadcast, add and fuse-multiply-add them, used by the register-tiled kernels
(``matmul.micro_kernel``, ``conv_direct_simd``).

Layout: every load and store takes a C-contiguous float32/float64 array and a flat element index; a vector holds
``VECTOR_BYTES // itemsize`` consecutive elements. ``VECTOR_BYTES`` is the host CPU's widest register
(64 with AVX-512, else 32; ``$FASTCONV_VECTOR_BYTES`` forces the other), read once at import; nothing is checked at run time (the callers keep indices in
bounds).
"""
import os
import warnings

import llvmlite.binding as llvm
from llvmlite import ir
from numba import config as numba_config, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


def _host_vector_bytes():
    """Widest SIMD register of the host CPU in bytes: 64 with AVX-512, else 32."""
    try:
        features = llvm.get_host_cpu_features()
        return 64 if features.get("avx512f", False) else 32
    except Exception:
        return 32


def _vector_bytes():
    """The host's width, or ``$FASTCONV_VECTOR_BYTES`` (32 or 64) to run the other width's code on this CPU (for
    testing it: LLVM splits 64-byte vectors into two halves where AVX-512 is missing). Kernels compiled for a
    forced width are cached apart from the host width's."""
    host = _host_vector_bytes()
    forced = os.environ.get("FASTCONV_VECTOR_BYTES", "")
    if forced not in ("", "32", "64"):
        warnings.warn(f"FASTCONV_VECTOR_BYTES must be 32 or 64, got {forced!r}: using the CPU's {host}")
        return host
    if forced and int(forced) != host:
        numba_config.CACHE_DIR = os.path.join(numba_config.CACHE_DIR or os.path.join(
            os.path.expanduser("~"), ".cache", "fastconv"), f"numba-vector{forced}")
        return int(forced)
    return host


VECTOR_BYTES = _vector_bytes()  # bytes in one SIMD vector


# ---------------------------------------------------------------------------
# SIMD vector values: a Numba type backed by an LLVM <LANES x float/double>.
# ---------------------------------------------------------------------------

class SimdVector(types.Type):
    """A SIMD register's worth of float32 or float64 values."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name="SimdVector(%s x %d)" % (dtype, lanes))


@register_model(SimdVector)
class SimdVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _vector_type_of(array_type):
    """The SimdVector type holding elements of ``array_type``."""
    return SimdVector(array_type.dtype, VECTOR_BYTES // (array_type.dtype.bitwidth // 8))


def _is_float_c_array(array_type):
    """True for C-contiguous float32/float64 arrays: flat indexing is valid."""
    return (isinstance(array_type, types.Array) and array_type.layout == "C"
            and array_type.dtype in (types.float32, types.float64))


def _element_pointer(context, builder, array_type, array, index_type, index):
    """Pointer to element ``index`` of the flat data of ``array`` (no checks)."""
    data = context.make_array(array_type)(context, builder, array).data
    offset = context.cast(builder, index, index_type, types.intp)
    return builder.gep(data, [offset])


@intrinsic
def vector_zeros(typingctx, array):
    """A vector of zeros of ``array``'s dtype."""
    if not _is_float_c_array(array):
        return None
    vector_type = _vector_type_of(array)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vector_type), None)

    return vector_type(array), codegen


@intrinsic
def vector_load(typingctx, array, index):
    """Load LANES consecutive elements ``array.flat[index:index + LANES]``."""
    if not (_is_float_c_array(array) and isinstance(index, types.Integer)):
        return None
    vector_type = _vector_type_of(array)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, array, args[0], index, args[1])
        llvm_type = context.get_value_type(vector_type)
        return builder.load(builder.bitcast(pointer, llvm_type.as_pointer()),
                            align=array.dtype.bitwidth // 8)

    return vector_type(array, index), codegen


@intrinsic
def vector_load_first(typingctx, array, index, count):
    """Load ``array.flat[index:index + count]`` into the first ``count`` lanes (any count: none below 1, all
    from LANES on), zeros in the others; memory past the first ``count`` elements is not read (llvm.masked.load:
    masked-off lanes never fault), so a load may start near the end of an array."""
    if not (_is_float_c_array(array) and isinstance(index, types.Integer) and isinstance(count, types.Integer)):
        return None
    vector_type = _vector_type_of(array)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, array, args[0], index, args[1])
        llvm_type = context.get_value_type(vector_type)
        lanes, i64 = vector_type.lanes, ir.IntType(64)
        wanted = context.cast(builder, args[2], count, types.int64)
        splat = builder.insert_element(ir.Constant(ir.VectorType(i64, lanes), ir.Undefined), wanted,
                                       ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, ir.Constant(ir.VectorType(i64, lanes), ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), lanes), None))
        lane_numbers = ir.Constant(ir.VectorType(i64, lanes), [ir.Constant(i64, i) for i in range(lanes)])
        mask = builder.icmp_signed("<", lane_numbers, splat)
        vector_pointer = builder.bitcast(pointer, llvm_type.as_pointer())
        suffix = "v%d%s.p0v%d%s" % ((lanes, "f32" if array.dtype == types.float32 else "f64") * 2)
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(llvm_type, [llvm_type.as_pointer(), ir.IntType(32), mask.type,
                                                        llvm_type]), "llvm.masked.load." + suffix)
        return builder.call(masked_load, [vector_pointer, ir.Constant(ir.IntType(32), array.dtype.bitwidth // 8),
                                          mask, ir.Constant(llvm_type, None)])

    return vector_type(array, index, count), codegen


@intrinsic
def vector_store(typingctx, array, index, value):
    """Store ``value`` into ``array.flat[index:index + LANES]``."""
    if not (_is_float_c_array(array) and isinstance(index, types.Integer)
            and value == _vector_type_of(array)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, array, args[0], index, args[1])
        llvm_type = context.get_value_type(value)
        builder.store(args[2], builder.bitcast(pointer, llvm_type.as_pointer()),
                      align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


@intrinsic
def vector_broadcast(typingctx, array, index):
    """A vector with every lane set to ``array.flat[index]``."""
    if not (_is_float_c_array(array) and isinstance(index, types.Integer)):
        return None
    vector_type = _vector_type_of(array)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, array, args[0], index, args[1])
        llvm_type = context.get_value_type(vector_type)
        scalar = builder.load(pointer)
        first = builder.insert_element(ir.Constant(llvm_type, ir.Undefined), scalar,
                                       ir.Constant(ir.IntType(32), 0))
        zeros_mask = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.lanes), None)
        return builder.shuffle_vector(first, ir.Constant(llvm_type, ir.Undefined),
                                      zeros_mask)

    return vector_type(array, index), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint that ``array.flat[index]`` will soon be read and written."""
    if not (_is_float_c_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, array, args[0], index, args[1])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        # llvm.prefetch(pointer, rw=1: for writing, locality=3: keep, 1: data)
        builder.call(fn, [builder.bitcast(pointer, i8p), ir.Constant(i32, 1),
                          ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@intrinsic
def vector_fma(typingctx, x, y, z):
    """Lane-wise ``x * y + z`` with one rounding (llvm.fma)."""
    if not (isinstance(x, SimdVector) and x == y == z):
        return None

    def codegen(context, builder, signature, args):
        vector = args[0].type
        name = "llvm.fma.v%d%s" % (vector.count, "f32" if x.dtype == types.float32 else "f64")
        fma = cgutils.get_or_insert_function(builder.module,
                                             ir.FunctionType(vector, [vector] * 3), name)
        return builder.call(fma, args)

    return x(x, y, z), codegen


@intrinsic
def vector_add(typingctx, x, y):
    """Lane-wise ``x + y``."""
    if not (isinstance(x, SimdVector) and x == y):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1])

    return x(x, y), codegen


# ---------------------------------------------------------------------------
# BLAS through Numba
# ---------------------------------------------------------------------------
