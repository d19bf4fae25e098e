"""Every validation rule: bad arguments raise TypeError/ValueError naming the argument, before any kernel."""
import numpy as np
import pytest

import fastconv as fc

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=[[1.0]]), TypeError, "x must be a numpy.ndarray"),
    (dict(x=np.zeros((4, 8), np.float32)), ValueError, "x must have 3 or 4 dimensions"),
    (dict(x=np.zeros((1, 2, 4, 8, 8), np.float32)), ValueError, "x must have 3 or 4 dimensions"),
    (dict(x=np.zeros((2, 4, 8, 8), np.int32)), TypeError, "x must be float32 or float64"),
    (dict(x=np.zeros((2, 4, 8, 8), np.float16)), TypeError, "x must be float32 or float64"),
    (dict(weight=np.zeros((6, 4, 3, 3), np.float64)), TypeError, "weight must have the input's dtype"),
    (dict(weight=np.zeros((6, 4, 3), np.float32)), ValueError, "weight must have 4 dimensions"),
    (dict(weight=np.zeros((6, 3, 3, 3), np.float32)), ValueError, "in_channels/groups"),
    (dict(weight=np.zeros((0, 4, 3, 3), np.float32)), ValueError, "weight must have non-zero sizes"),
    (dict(bias=np.zeros(5, np.float32)), ValueError, r"bias must have shape \(6,\)"),
    (dict(bias=np.zeros(6, np.float64)), TypeError, "bias must have the input's dtype"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(groups=1.0), ValueError, "groups must be a positive int"),
    (dict(groups=3), ValueError, r"input channels \(4\) must be divisible by groups \(3\)"),
    (dict(weight=np.zeros((5, 2, 3, 3), np.float32), groups=2), ValueError, r"out channels .* divisible by groups"),
    (dict(stride=0), ValueError, "stride must be at least 1"),
    (dict(stride=(1, -1)), ValueError, "stride must be at least 1"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair of ints"),
    (dict(stride=True), TypeError, "stride must be an int or a pair of ints"),
    (dict(stride=(1, 1, 1)), ValueError, "stride must be an int or a pair of ints"),
    (dict(padding=-1), ValueError, "padding must be at least 0"),
    (dict(padding="full"), ValueError, "padding must be an int, a pair of ints, 'valid' or 'same'"),
    (dict(padding="same", stride=2), ValueError, "padding='same' requires stride 1"),
    (dict(dilation=0), ValueError, "dilation must be at least 1"),
    (dict(stride=10**20), ValueError, "stride must be at most 2147483647"),
    (dict(padding=(0, 2**40)), ValueError, "padding must be at most 2147483647"),
    (dict(weight=np.zeros((6, 4, 9, 3), np.float32)), ValueError, "output would be empty"),
    (dict(dilation=5), ValueError, "output would be empty"),
    (dict(algo="fft"), ValueError, "algo for conv2d must be 'auto' or one of"),
])
def test_conv2d_rejects(kwargs, error, match):
    args = dict(x=X, weight=W, bias=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fc.conv2d(**args)


def test_conv2d_refuses_an_output_larger_than_memory():
    x = np.broadcast_to(np.float32(0), (2**22, 64, 64, 64))  # a view: nothing is allocated
    with pytest.raises(ValueError, match="conv2d output of shape .* GiB"):
        fc.conv2d(x, np.zeros((64, 64, 1, 1), np.float32))


def test_conv2d_refuses_a_padded_input_or_input_copy_larger_than_memory():
    with pytest.raises(ValueError, match="zero-padded input of shape .* GiB"):
        fc.conv2d(np.zeros((1, 4096, 2, 2), np.float32), np.zeros((1, 4096, 1, 1), np.float32),
                  stride=2**16, padding=2**16)
    x = np.broadcast_to(np.float32(0), (2**15, 64, 64, 64))  # 32 GiB as a copy, a view here
    with pytest.raises(ValueError, match="contiguous copy of the input of shape .* GiB"):
        fc.conv2d(x, np.zeros((1, 64, 64, 64), np.float32))


def test_im2col_refuses_a_workspace_above_the_limit():
    x = np.zeros((1, 64, 256, 256), np.float32)
    with pytest.raises(ValueError, match="im2col needs .* MiB of workspace"):
        fc.conv2d(x, np.zeros((8, 64, 5, 5), np.float32), padding=2, algo="im2col")


@pytest.mark.parametrize("grad_y,error,match", [
    (np.zeros((2, 6, 6, 5), np.float32), ValueError, r"grad_y must have the output's shape \(2, 6, 6, 6\)"),
    (np.zeros((2, 6, 6, 6), np.float64), TypeError, "grad_y must have the input's dtype"),
    (np.zeros((6, 6, 6), np.float32), ValueError, "grad_y must have 4 dimensions"),
])
def test_conv2d_backward_rejects(grad_y, error, match):
    with pytest.raises(error, match=match):
        fc.conv2d_backward(grad_y, X, W)


@pytest.mark.parametrize("op,kwargs,error,match", [
    ("max", dict(kernel_size=0), ValueError, "kernel_size must be at least 1"),
    ("max", dict(kernel_size=2, stride=0), ValueError, "stride must be at least 1"),
    ("max", dict(kernel_size=3, padding=2), ValueError, "padding must be at most half of kernel_size"),
    ("max", dict(kernel_size=2, dilation=0), ValueError, "dilation must be at least 1"),
    ("avg", dict(kernel_size=2, stride=2**62), ValueError, "stride must be at most 2147483647"),
    ("max", dict(kernel_size=2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
    ("max", dict(kernel_size=9), ValueError, "output would be empty"),
    ("max", dict(kernel_size=(1, 2), padding=(0, 1), dilation=(1, 9)), ValueError, "holds no input element"),
    ("max", dict(kernel_size=2, algo="fast"), ValueError, "algo for max_pool2d"),
    ("avg", dict(kernel_size=2, divisor_override=0), ValueError, "divisor_override must be None or a non-zero int"),
    ("avg", dict(kernel_size=2, divisor_override=-2**40), ValueError, "divisor_override must be None or a non-zero"),
    ("avg", dict(kernel_size=2, divisor_override=1.5), TypeError, "divisor_override must be None or an int"),
    ("avg", dict(kernel_size=2, count_include_pad=None), TypeError, "count_include_pad must be a bool"),
    ("avg", dict(kernel_size=(2, 2, 2)), ValueError, "kernel_size must be an int or a pair"),
])
def test_pooling_rejects(op, kwargs, error, match):
    fn = fc.max_pool2d if op == "max" else fc.avg_pool2d
    with pytest.raises(error, match=match):
        fn(X, **kwargs)


def test_pooling_backward_rejects_a_wrong_grad():
    with pytest.raises(ValueError, match="grad_y must have the output's shape"):
        fc.max_pool2d_backward(np.zeros((2, 4, 3, 3), np.float32), X, 2)
    with pytest.raises(TypeError, match="grad_y must have the input's dtype"):
        fc.avg_pool2d_backward(np.zeros((2, 4, 4, 4), np.float64), X, 2)


@pytest.mark.parametrize("a,b,error,match", [
    (np.zeros(3, np.float32), np.zeros((3, 2), np.float32), ValueError, "a must have 2 dimensions"),
    (np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32), ValueError, "inner dimensions must agree"),
    (np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float64), TypeError, "b must have the input's dtype"),
    (np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64), TypeError, "a must be float32 or float64"),
])
def test_gemm_rejects(a, b, error, match):
    with pytest.raises(error, match=match):
        fc.gemm(a, b)


def test_settings_and_lookups_reject_bad_values():
    with pytest.raises(ValueError, match="nbytes must be a positive int"):
        fc.set_workspace_limit(0)
    with pytest.raises(ValueError, match="op must be one of"):
        fc.algorithms("conv3d")
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        fc.algorithms("conv2d", device="tpu")


def test_shape_rules_computed_once_still_refuse_arguments_equal_to_valid_ones():
    """conv2d's and pooling's shape rules are kept per shape and arguments: an argument equal to a valid one
    but of another type (True == 1, 1.0 == 1), given after it, is still refused."""
    x, w = np.zeros((1, 2, 6, 6), np.float32), np.zeros((2, 2, 3, 3), np.float32)
    fc.conv2d(x, w, stride=(1, 1), padding=1)
    fc.max_pool2d(x, (2, 2))
    for bad in [(True, 1), (1.0, 1)]:
        with pytest.raises(TypeError, match="stride"):
            fc.conv2d(x, w, stride=bad, padding=1)
    fc.max_pool2d(x, (1, 1))
    for bad in [(True, 1), (1.0, 1)]:
        with pytest.raises(TypeError, match="kernel_size"):
            fc.max_pool2d(x, bad)
    with pytest.raises((TypeError, ValueError), match="groups"):
        fc.conv2d(x, w, groups=True)
    fc.conv2d(x, w, stride=[1, 1], padding=[1, 1])  # unhashable arguments: validated, not kept


def test_messages_name_the_input_when_the_input_is_wrong():
    """A channels-last image is the input's fault, and a float64 batch into a float32 model names the fix."""
    x = np.zeros((2, 28, 28, 1), np.float32)  # NHWC
    with pytest.raises(ValueError, match=r"looks channels-last.*x.transpose\(0, 3, 1, 2\)"):
        fc.conv2d(x, np.zeros((6, 1, 5, 5), np.float32))
    model = fc.models.lenet5()
    with pytest.raises(TypeError, match=r"x is float64 but the layer's weights are float32.*model.to\(np.float64\)"):
        model(np.zeros((2, 1, 28, 28)))
    with pytest.raises(TypeError, match=r"Linear: x is float64"):
        fc.nn.Linear(3, 2)(np.zeros((1, 3)))
