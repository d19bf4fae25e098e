"""Layers and losses with the naming of ``torch.nn``, on NCHW NumPy arrays.

Every layer is a ``Module`` with ``forward(x) -> y`` (``model(x)`` calls it) and, next to it,
``backward(grad_y) -> grad_x``, which adds d loss / d parameter into each parameter's ``.grad``
from what the last forward kept. ``parameters()`` and ``state_dict()`` follow PyTorch's order and
names, so weights move between the two unchanged::

    model = fc.nn.Sequential(fc.nn.Conv2d(1, 6, 5), fc.nn.ReLU(), fc.nn.Flatten(), fc.nn.Linear(6 * 24 * 24, 10))
    loss, grad = fc.nn.cross_entropy(model(x), labels)
    model.backward(grad)

``model.to("cuda")`` moves parameters, gradients and buffers to the GPU (``fastconv.device``): the
model then takes and returns device arrays. Each forward and backward is written once: it asks
``fastconv.array_ops.ops_for(x)`` for the operations of the device x lives on (NumPy and Numba kernels
on the CPU, numba.cuda kernels on the GPU) and makes the same calls on both.

Parameters start as PyTorch initializes them (Kaiming-uniform: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
weights and biases of Conv2d and Linear), drawn from fastconv's generator: ``fc.manual_seed(seed)``.
"""
from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from numbers import Real

import numpy as np

from ._checks import (FLOAT_DTYPES, as_array, check_bool, check_grad, check_int, conv_padding, float_dtype, native,
                      pair, pool2d_args)
from .array_ops import ArrayOps, ops_for
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .device import check_device, to
from .kernels import elementwise
from .pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_pool2d_size, avg_pool2d,
                   avg_pool2d_backward, max_pool2d, max_pool2d_backward)

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that initializes parameters and draws dropout masks."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator_state() -> dict:
    """The state of the generator ``manual_seed`` seeds (a dict of plain values), for ``set_generator_state``."""
    return _generator.bit_generator.state


def set_generator_state(state: dict) -> None:
    """Continue the generator from a ``generator_state`` (of this process or another)."""
    _generator.bit_generator.state = state


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape and dtype, zeros at first)."""

    def __init__(self, data: np.ndarray) -> None:
        ops = ops_for(data)
        self.data = ops.array("data", data)
        self.grad = ops.zeros(self.data.shape, self.data.dtype)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


_building = threading.local()  # building.budget: a zero_parameters block's bytes left, or absent


def constant(shape: tuple[int, ...], value: float, dtype: np.dtype) -> np.ndarray:
    """A new parameter or buffer array filled with `value`, debited from ``zero_parameters``' budget."""
    budget = getattr(_building, "budget", None)
    if budget is not None:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes > budget[0]:
            raise ValueError(f"the layers take more than the {budget[1]} bytes of weights there are to load")
        budget[0] -= nbytes
    return np.full(shape, value, dtype)


def _uniform(shape: tuple[int, ...], fan_in: int, dtype: np.dtype) -> Parameter:
    if getattr(_building, "budget", None) is not None:
        return Parameter(constant(shape, 0.0, dtype))
    bound = 1.0 / np.sqrt(fan_in)
    return Parameter(_generator.uniform(-bound, bound, shape).astype(dtype))


class zero_parameters:
    """Inside ``with zero_parameters(budget):`` new layers' parameters start as zeros, drawing nothing from
    the generator, and their parameters and buffers together may take at most `budget` bytes (ValueError
    beyond): for modules whose weights are loaded next, from a file that holds `budget` bytes of them."""

    def __init__(self, budget: int) -> None:
        self.budget = [budget, budget]  # [left, at first]

    def __enter__(self) -> zero_parameters:
        self.before = getattr(_building, "budget", None)
        _building.budget = self.budget
        return self

    def __exit__(self, *exc: object) -> None:
        _building.budget = self.before


def fingerprint(a: np.ndarray) -> int:
    """A 64-bit fingerprint of a host array's contents (``kernels.elementwise.fingerprint`` over its bytes)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    word = next(t for t in (np.uint64, np.uint32, np.uint16, np.uint8) if flat.itemsize % np.dtype(t).itemsize == 0)
    return int(elementwise.fingerprint(flat.view(word)))


NOT_THREAD_SAFE = ("a model keeps what its last forward saw for its backward, so one model cannot train in two "
                   "threads at once: give each thread its own model (copy the weights with load_state_dict)")


class _Call:
    """What a top-level call of a module saw: its thread and a fingerprint of its input and output (host
    arrays), checked when its backward runs. `overlapped`: another thread's call ran at the same time."""

    def __init__(self, x: object, y: object) -> None:
        self.thread, self.overlapped = threading.get_ident(), False
        self.arrays = [a for a in (x, y) if isinstance(a, np.ndarray)]
        self.prints = [fingerprint(a) for a in self.arrays]

    def check(self, name: str) -> None:
        if self.overlapped:
            raise RuntimeError(f"{name}.backward: forward calls of this module overlapped in two threads, so what "
                               f"backward needs is mixed; run forward again first ({NOT_THREAD_SAFE})")
        if self.thread != threading.get_ident():
            raise RuntimeError(f"{name}.backward runs in another thread than its forward: {NOT_THREAD_SAFE}")
        if [fingerprint(a) for a in self.arrays] != self.prints:
            raise RuntimeError(f"{name}.backward: the input or output of its forward was modified in place since "
                               "(backward needs them as they were): pass a copy to forward, or run it again")


_grad_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether layers keep what their backward needs (this thread; False inside ``no_grad``)."""
    return getattr(_grad_mode, "enabled", True)


class no_grad:
    """Inference mode, as ``torch.no_grad()``: inside ``with fc.no_grad():`` (or in a function decorated
    ``@fc.no_grad()``) layers keep nothing for backward, so activations are freed as soon as the next layer
    has read them and no input is fingerprinted; a backward after such a forward raises RuntimeError.
    Per thread, and nestable. ``model.eval()`` is separate (as in PyTorch): it switches batch norm to its
    running statistics and dropout off, and a forward in eval mode can still be differentiated."""

    def __enter__(self) -> no_grad:
        stack = _grad_mode.__dict__.setdefault("stack", [])
        stack.append(is_grad_enabled())
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc: object) -> None:
        _grad_mode.enabled = _grad_mode.stack.pop()

    def __call__(self, function: Callable) -> Callable:
        @functools.wraps(function)
        def without_grad(*args, **kwargs):
            with no_grad():
                return function(*args, **kwargs)
        return without_grad


_running_lock = threading.Lock()
_running: dict[int, list[int]] = {}  # id(module) -> [top-level calls in progress, calls started so far]


def _start(module: Module, refuse: bool) -> tuple[list[int], bool, int]:
    """Register a top-level call of `module`: (its counters, whether no other call is in progress, the
    number it started as). With `refuse`, another call in progress raises RuntimeError."""
    with _running_lock:
        state = _running.setdefault(id(module), [0, 0])
        if state[0] and refuse:
            raise RuntimeError(f"{type(module).__name__} is running in another thread: {NOT_THREAD_SAFE}")
        state[0] += 1
        state[1] += 1
        return state, state[0] == 1, state[1]


def _finish(module: Module, state: list[int], started: int) -> bool:
    """End a call registered by _start: whether no other call started meanwhile. Caller holds _running_lock."""
    state[0] -= 1
    if state[0] == 0:
        _running.pop(id(module), None)
    return state[1] == started


def _checked_backward(backward: Callable[[Module, np.ndarray], np.ndarray]) -> Callable[[Module, np.ndarray], np.ndarray]:
    """A subclass's backward, checked against its last top-level call (``_Call.check``) and run as a call of its
    own (no other thread may call the module meanwhile). A module run by its container has no call of its own."""
    @functools.wraps(backward)
    def checked(self: Module, grad_y: np.ndarray) -> np.ndarray:
        if not self.__dict__.get("_kept", True):
            raise RuntimeError(f"{type(self).__name__}.backward: its last forward ran under fc.no_grad(), which keeps "
                               "nothing for backward: run the forward again outside no_grad")
        call = self.__dict__.get("_call")
        if call is None:
            with _running_lock:
                busy = id(self) in _running
            if busy:  # its own call is still running, in another thread
                raise RuntimeError(f"{type(self).__name__} is running in another thread: {NOT_THREAD_SAFE}")
            return backward(self, grad_y)
        name = type(self).__name__
        call.check(name)
        state, _, started = _start(self, refuse=True)
        try:
            grad_x = backward(self, grad_y)
        finally:
            with _running_lock:
                alone = _finish(self, state, started)
        if not alone:
            raise RuntimeError(f"{name}.backward: another thread called the module meanwhile, so the gradients are "
                               f"wrong: {NOT_THREAD_SAFE}")
        return grad_x
    return checked


def _recording_init(init: Callable) -> Callable:
    """A Module subclass's __init__ that records its arguments first (the outermost call: the class built)."""
    @functools.wraps(init)
    def recording(self, *args, **kwargs) -> None:
        if "_init_args" not in self.__dict__:
            self._init_args = (args, dict(kwargs))
        init(self, *args, **kwargs)
    return recording


class Module:
    """Base layer: subclasses set parameters, buffers (non-trained state) and child modules as
    attributes in PyTorch's order and define ``forward`` and ``backward``.

    ``module(x)`` is a checked call: its ``backward`` raises RuntimeError, rather than returning wrong
    gradients, when x or the output was modified in place in between (a 64-bit fingerprint of each
    host array), when it runs in another thread than the forward, or when another thread used the
    module in between. One module is not thread-safe for training: in training mode a call while
    another thread's call or backward is running raises at once; in eval mode concurrent calls
    (inference) are allowed, and only a backward after them raises. Containers run their children
    with ``run_child``, unchecked: what flows between layers is theirs alone."""

    training = True
    input_grad = True  # whether backward computes d loss / d input (False: it returns None)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "backward" in cls.__dict__:
            cls.backward = _checked_backward(cls.__dict__["backward"])
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__dict__["__init__"])

    def constructor_args(self) -> tuple[tuple, dict]:
        """The (args, kwargs) this module was constructed with (``fastconv.serialize`` rebuilds it from them)."""
        return self.__dict__.get("_init_args", ((), {}))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = as_array("x", x)
        state, alone, started = _start(self, refuse=self.training)
        self._call: _Call | None = None
        self._kept = kept = is_grad_enabled()
        call = None
        try:
            y = self.forward(x)
            call = _Call(x, y) if kept else None
        finally:
            with _running_lock:
                alone = _finish(self, state, started) and alone
                if call is not None:
                    call.overlapped = not alone
                self._call = call
        return y

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def keep(self, **arrays: object) -> None:
        """Set what backward needs as attributes (``self.keep(x=x)``); under ``no_grad`` set them to None, so
        nothing of this forward outlives the call."""
        enabled = is_grad_enabled()
        for name, value in arrays.items():
            setattr(self, name, value if enabled else None)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The outputs for inputs x (N, ...), computed in eval mode under ``no_grad`` in batches of
        `batch_size` (the model's mode is restored afterwards). Returns a host array (N, ...)."""
        x = as_array("x", x)
        if not hasattr(x, "shape") or len(x.shape) < 1:
            raise ValueError(f"x must be an array with a batch dimension (N, ...), got {type(x).__name__}")
        batch_size = check_int("batch_size", batch_size, 1)
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with no_grad():
                outputs = [ops_for(x).to_host(self(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        finally:
            for m, mode in modes:
                m.training = mode
        if not outputs:
            raise ValueError("predict needs at least one input, got an empty batch")
        return np.concatenate(outputs)

    def _members(self, kind: type) -> Iterator[tuple[str, object]]:
        for name, value in vars(self).items():
            if isinstance(value, kind):
                yield name, value

    def children(self) -> Iterator[tuple[str, Module]]:
        return self._members(Module)

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(name, module) for this module ('' or `prefix`) and every descendant ('0', '3.body.1', ...), as PyTorch."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def apply(self, function: Callable[[Module], object]) -> Module:
        """Call function(module) on every descendant, then on this module (PyTorch's order); returns self."""
        for _, child in self.children():
            child.apply(function)
        function(self)
        return self

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._members(Parameter):
            yield prefix + name, p
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def _check_unique(self) -> None:
        """A layer keeps its last forward's inputs for backward, so one instance may appear only once in a model."""
        seen: set[int] = set()
        for m in self.modules():
            if id(m) in seen:
                raise ValueError(f"{type(m).__name__} appears twice in one model: a layer keeps what its last forward "
                                 "saw for backward, so use a new instance at each place")
            seen.add(id(m))

    def parameters(self) -> list[Parameter]:
        """The trainable parameters, in the order of the equivalent PyTorch module."""
        return [p for _, p in self.named_parameters()]

    def _buffer_names(self) -> tuple[str, ...]:
        return ()

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Every parameter and buffer by PyTorch's name ('0.weight', '1.running_mean', ...)."""
        state = {prefix + name: p.data for name, p in self._members(Parameter)}
        state.update({prefix + name: getattr(self, name) for name in self._buffer_names()})
        for name, child in self.children():
            state.update(child.state_dict(f"{prefix}{name}."))
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters and buffers; names, shapes must all match (dtype is converted)."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {unexpected}")
        for name, target in own.items():
            value = ops_for(state[name]).to_host(state[name])
            if value.shape != target.shape:
                raise ValueError(f"{name} must have shape {target.shape}, got {value.shape}")
            ops_for(target).assign(target, value)

    def zero_grad(self) -> None:
        for p in self.parameters():
            fill(p.grad, 0)

    def train(self, mode: bool = True) -> Module:
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def set_input_grad(self, enabled: bool) -> Module:
        """Whether ``backward`` computes the gradient of this module's input (default True; False: it returns
        None). The input of a network is data, so nothing needs its gradient: ``fastconv.train.fit`` turns it
        off, and the first convolution then skips grad_x, a pass as long as its forward. Containers pass the
        setting to the children that see their input (Sequential: the first; Residual: body and shortcut)."""
        self.input_grad = check_bool("enabled", enabled)
        for child in self._input_children():
            child.set_input_grad(enabled)
        return self

    def _input_children(self) -> list[Module]:
        """The children that receive this module's input (``set_input_grad`` passes its setting to them)."""
        return []

    def to(self, target: object) -> Module:
        """Move parameters, gradients and buffers, in place: `target` is a device ('cpu' or 'cuda') or a
        dtype (float32 or float64; floating arrays are converted where they are)."""
        if isinstance(target, str) and target.split(":")[0] in ("cpu", "cuda"):
            device = check_device(target)

            def convert(a):  # integer buffers (counters) stay on the host
                return to(a, device) if np.dtype(a.dtype).kind == "f" else a
        else:
            d = float_dtype(target)

            def convert(a):
                if np.dtype(a.dtype).kind != "f":
                    return a
                ops = ops_for(a)
                return ops.from_host(ops.to_host(a).astype(d))
        for p in self.parameters():
            p.data, p.grad = convert(p.data), convert(p.grad)
        for module in self.modules():
            for name in module._buffer_names():
                setattr(module, name, convert(getattr(module, name)))
        return self

    @property
    def device(self) -> str:
        """'cuda' when the parameters live on the GPU, else 'cpu'."""
        params = self.parameters()
        return ops_for(params[0].data).device if params else "cpu"

    def modules(self) -> Iterator[Module]:
        yield self
        for _, child in self.children():
            yield from child.modules()

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = [f"  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in self.children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(kids) + "\n)" if kids else ")")


def _same_dtype(layer: str, x: object, weight: object) -> None:
    """TypeError naming the fix when a float input's dtype is not the layer's weights'."""
    xd, wd = getattr(x, "dtype", None), weight.dtype
    if xd is not None and np.dtype(xd).kind == "f" and np.dtype(xd) != np.dtype(wd):
        raise TypeError(f"{layer}: x is {np.dtype(xd)} but the layer's weights are {np.dtype(wd)}: convert the input "
                        f"(x.astype(np.{np.dtype(wd)})) or the model (model.to(np.{np.dtype(xd)}))")


def run_child(child: Module, x: np.ndarray) -> np.ndarray:
    """A container's call of a child's forward: unchecked (no ``_Call``), its backward trusting the container."""
    return run_child_as(child, child.forward, x)


def run_child_as(child: Module, forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """``run_child`` with one of the child's forward methods."""
    child._call, child._kept = None, is_grad_enabled()
    return forward(x)


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse. Children are named '0', '1', ..."""

    def __init__(self, *modules: Module) -> None:
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, got {type(m).__name__} at position {i}")
            setattr(self, str(i), m)
        self.layers = list(modules)
        self._check_unique()

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def _relu_then_max_pool(self, i: int) -> bool:
        """Whether layers i and i + 1 are ReLU then MaxPool2d, which run as one (``MaxPool2d.forward_relu``)."""
        return (isinstance(self.layers[i], ReLU) and i + 1 < len(self.layers)
                and isinstance(self.layers[i + 1], MaxPool2d))

    def forward(self, x: np.ndarray) -> np.ndarray:
        i = 0
        while i < len(self.layers):
            if self._relu_then_max_pool(i):
                self.layers[i]._call = None
                x = run_child_as(self.layers[i + 1], self.layers[i + 1].forward_relu, x)
                i += 2
            else:
                x = run_child(self.layers[i], x)
                i += 1
        return x

    def backward(self, grad_y: np.ndarray) -> np.ndarray | None:
        i = len(self.layers) - 1
        while i >= 0:
            grad_y = self.layers[i].backward(grad_y)  # a MaxPool2d run by forward_relu: ReLU's backward too
            i -= 2 if i > 0 and self._relu_then_max_pool(i - 1) else 1
        return grad_y

    def _input_children(self) -> list[Module]:
        return self.layers[:1]


def _set_conv_args(layer: Module, in_channels, out_channels, kernel_size, stride, dilation, groups) -> None:
    """The arguments Conv2d and ConvTranspose2d share, checked and set on `layer` (pairs for the sizes)."""
    layer.in_channels = check_int("in_channels", in_channels, 1)
    layer.out_channels = check_int("out_channels", out_channels, 1)
    layer.groups = check_int("groups", groups, 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                         f"by groups ({groups})")
    layer.kernel_size = pair("kernel_size", kernel_size, 1)
    layer.stride, layer.dilation = pair("stride", stride, 1), pair("dilation", dilation, 1)


class Conv2d(Module):
    """``fc.conv2d`` with a weight (out, in/groups, kh, kw) and a bias (out,): x (N, in, H, W) -> (N, out, OH, OW)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, dtype: object = np.float32) -> None:
        _set_conv_args(self, in_channels, out_channels, kernel_size, stride, dilation, groups)
        self.padding = padding if isinstance(padding, str) else pair("padding", padding, 0)
        conv_padding(padding, self.kernel_size, self.dilation, self.stride)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        d = float_dtype(dtype)
        self.weight = _uniform((out_channels, in_channels // groups, *self.kernel_size), fan_in, d)
        self.bias = _uniform((out_channels,), fan_in, d) if check_bool("bias", bias) else None

    def _args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, x: np.ndarray) -> np.ndarray:
        _same_dtype(type(self).__name__, x, self.weight.data)
        self.keep(x=x)
        return conv2d(x, self.weight.data, None if self.bias is None else self.bias.data, *self._args())

    def backward(self, grad_y: np.ndarray) -> np.ndarray | None:
        gx, gw, gb = conv2d_backward(grad_y, self.x, self.weight.data, *self._args(), input_grad=self.input_grad)
        accumulate(self.weight.grad, gw)
        if self.bias is not None:
            accumulate(self.bias.grad, gb)
        return gx

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}")


class Linear(Module):
    """y (N, out) = x (N, in) @ weight.T + bias, weight (out, in), bias (out,).

    The products use fastconv's own GEMM, which runs on Numba's thread pool like the convolutions:
    BLAS's pool keeps spinning after each call and took a core from the next kernels (a LeNet-5
    step went from 8 ms to 35 ms here)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: object = np.float32) -> None:
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        d = float_dtype(dtype)
        self.weight = _uniform((out_features, in_features), in_features, d)
        self.bias = _uniform((out_features,), in_features, d) if check_bool("bias", bias) else None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) needs x of shape "
                             f"(N, {self.in_features}), got {x.shape}")
        _same_dtype(type(self).__name__, x, self.weight.data)
        ops = ops_for(x)
        x = ops.array("x", x)
        self.keep(x=x)
        y = ops.matmul(x, self.weight.data, trans_b=True)
        if self.bias is not None:
            ops.add_channel_bias(y, self.bias.data)
        return y

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        ops = ops_for(grad_y)
        grad_y = ops.array("grad_y", grad_y)
        ops.matmul(grad_y, self.x, trans_a=True, out=self.weight.grad)
        if self.bias is not None:
            ops.channel_sum(grad_y, out=self.bias.grad)
        return ops.matmul(grad_y, self.weight.data) if self.input_grad else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _FromOutput(Module):
    """An elementwise activation whose gradient is a function of its output: forward ``ops.<op>(x)``, backward
    ``ops.<op>_backward(grad_y, y)`` (``array_ops``), on float32/float64 arrays of any shape."""

    op = ""

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = getattr(ops_for(x), self.op)(x)
        self.keep(y=y)
        return y

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return getattr(ops_for(self.y), self.op + "_backward")(grad_y, self.y)


class ReLU(_FromOutput):
    """max(x, 0) elementwise; NaN propagates. The gradient passes where the output is not <= 0 (positive or
    NaN, as PyTorch)."""

    op = "relu"


class MaxPool2d(Module):
    """``fc.max_pool2d`` as a layer; stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> None:
        pool2d_args(kernel_size, stride, padding, dilation, ceil_mode)
        self.args = (kernel_size, stride, padding, dilation, ceil_mode)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not is_grad_enabled():
            self.keep(x=None, indices=None, relu_y=None)
            return max_pool2d(x, *self.args)
        y, indices = max_pool2d(x, *self.args, return_indices=True)
        self.keep(x=x, indices=indices, relu_y=None)
        return y

    def forward_relu(self, x: np.ndarray) -> np.ndarray:
        """max_pool2d(relu(x)) as relu(max_pool2d(x)) (equal: both are monotone; a window's maximum keeps its
        first index, or its last NaN's, either way), so ReLU runs on the pooled values only; backward then
        masks grad_y with the pooled ReLU before the scatter. Sequential runs ReLU, MaxPool2d so; the
        gradient is the pair's (where the window's maximum is <= 0 it is zero, whichever element it names)."""
        y = self.forward(x)
        relu_y = ops_for(y).relu(y)
        self.keep(relu_y=relu_y)
        return relu_y

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        if self.relu_y is not None:
            grad_y = ops_for(self.relu_y).relu_backward(grad_y, self.relu_y)
        return max_pool2d_backward(grad_y, self.x, *self.args, indices=self.indices)

    def extra_repr(self) -> str:
        return "kernel_size={}, stride={}, padding={}, dilation={}, ceil_mode={}".format(*self.args)


class AvgPool2d(Module):
    """``fc.avg_pool2d`` as a layer; stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None) -> None:
        pool2d_args(kernel_size, stride, padding, 1, ceil_mode)
        self.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.keep(x=x)
        return avg_pool2d(x, *self.args)

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return avg_pool2d_backward(grad_y, self.x, *self.args)

    def extra_repr(self) -> str:
        return "kernel_size={}, stride={}, padding={}".format(*self.args[:3])


class GlobalAvgPool2d(Module):
    """Mean over each feature map: (N, C, H, W) -> (N, C, 1, 1), as ``nn.AdaptiveAvgPool2d(1)``."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool2d needs x of shape (N, C, H, W), got {x.shape}")
        self.keep(x=x)
        return avg_pool2d(x, x.shape[2:])

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return avg_pool2d_backward(grad_y, self.x, self.x.shape[2:])


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), as ``nn.Flatten()``."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return grad_y.reshape(self.x_shape)


class Dropout(Module):
    """In training, zero each element with probability p and scale the rest by 1/(1-p); identity in eval."""

    def __init__(self, p: float = 0.5) -> None:
        if isinstance(p, bool) or not isinstance(p, Real) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0:
            self.mask = None
            return x
        ops = ops_for(x)
        x = ops.array("x", x)
        kept = _generator.random(x.shape) >= self.p  # drawn on the host: the same masks on every device
        mask = ops.from_host((kept / (1 - self.p) if self.p < 1 else kept * 0.0).astype(x.dtype))
        self.keep(mask=mask)
        return ops.mul(x, mask)

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        if self.mask is None:
            return grad_y
        ops = ops_for(grad_y)
        return ops.mul(ops.array("grad_y", grad_y), self.mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _BatchNorm(Module):
    """Per-channel normalization of x (N, C, ...): y = (x - mean) / sqrt(var + eps) * weight + bias, the
    statistics over every axis but 1. BatchNorm1d and BatchNorm2d are this with the shapes they take.

    Training uses the batch's mean and biased variance and updates running_mean/running_var
    (unbiased variance) with ``momentum``, as PyTorch; eval uses the running statistics.
    """

    shapes: dict[int, str] = {}  # rank -> the shape of x taken at that rank, as errors write it ('{c}': num_features)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, dtype: object = np.float32) -> None:
        self.num_features = check_int("num_features", num_features, 1)
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        d = float_dtype(dtype)
        self.weight = Parameter(constant((num_features,), 1.0, d))
        self.bias = Parameter(constant((num_features,), 0.0, d))
        self.running_mean = constant((num_features,), 0.0, d)
        self.running_var = constant((num_features,), 1.0, d)
        self.num_batches_tracked = np.zeros((), np.int64)

    def _buffer_names(self) -> tuple[str, ...]:
        return "running_mean", "running_var", "num_batches_tracked"

    def forward(self, x: np.ndarray) -> np.ndarray:
        name, c = type(self).__name__, self.num_features
        if x.ndim not in self.shapes or x.shape[1] != c:
            shapes = " or ".join(s.format(c=c) for s in self.shapes.values())
            raise ValueError(f"{name}({c}) needs x of shape {shapes}, got {x.shape}")
        count = x.size // x.shape[1]
        if self.training and count < 2:
            raise ValueError(f"{name} in training needs more than one value per channel, got {x.shape}")
        ops = ops_for(x)
        x = ops.array("x", x)
        if self.training:
            mean, var = ops.batch_statistics(x)
            self._update_running(ops, mean, var, count)
        else:
            mean, var = ops.to_host(self.running_mean), ops.to_host(self.running_var)
        invstd = 1 / np.sqrt(var + self.eps)
        xhat, y = ops.batch_norm(x, mean, invstd, self.weight.data, self.bias.data)
        self.keep(xhat=xhat, invstd=invstd.astype(x.dtype))
        self.batch_stats = self.training
        return y

    def _update_running(self, ops: ArrayOps, mean: np.ndarray, var: np.ndarray, count: int) -> None:
        m = self.momentum
        for name, new in (("running_mean", mean), ("running_var", var * count / (count - 1))):
            old = getattr(self, name)
            ops.assign(old, ((1 - m) * ops.to_host(old) + m * new).astype(old.dtype))
        self.num_batches_tracked += 1

    def backward(self, grad_y: np.ndarray) -> np.ndarray | None:
        ops = ops_for(self.xhat)
        grad_y = check_grad("grad_y", ops.array("grad_y", grad_y), self.xhat.shape, self.xhat.dtype,
                            device=ops.device == "cuda")
        scale = (ops.to_host(self.weight.data) * self.invstd).astype(self.invstd.dtype)
        grad_x, sum_g, sum_gx = ops.batch_norm_backward(grad_y, self.xhat, scale, self.batch_stats)
        accumulate(self.bias.grad, sum_g)
        accumulate(self.weight.grad, sum_gx)
        return grad_x if self.input_grad else None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_BatchNorm):
    """Per-channel normalization of (N, C, H, W) (``_BatchNorm``), as ``nn.BatchNorm2d``."""

    shapes = {4: "(N, {c}, H, W)"}


class BatchNorm1d(_BatchNorm):
    """Per-channel normalization of (N, C) or (N, C, L) (``_BatchNorm``), as ``nn.BatchNorm1d``."""

    shapes = {2: "(N, {c})", 3: "(N, {c}, L)"}


class Residual(Module):
    """body(x) + shortcut(x): the skip connection of ResNet. shortcut None is the identity."""

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        self.body, self.shortcut = body, shortcut
        self._check_unique()

    def forward(self, x: np.ndarray) -> np.ndarray:
        return _add(run_child(self.body, x), x if self.shortcut is None else run_child(self.shortcut, x))

    def backward(self, grad_y: np.ndarray) -> np.ndarray | None:
        gx = self.body.backward(grad_y)
        gs = grad_y if self.shortcut is None else self.shortcut.backward(grad_y)
        return _add(gx, gs) if self.input_grad else None

    def _input_children(self) -> list[Module]:
        return [self.body] + ([] if self.shortcut is None else [self.shortcut])


class Identity(Module):
    """y = x, as ``nn.Identity``: a placeholder for an optional layer; its arguments are ignored."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return grad_y


class Sigmoid(_FromOutput):
    """1 / (1 + exp(-x)) elementwise; NaN propagates. The gradient is grad_y * y * (1 - y), from the output
    (as PyTorch)."""

    op = "sigmoid"


class Tanh(_FromOutput):
    """tanh(x) elementwise; NaN propagates. The gradient is grad_y * (1 - y * y), from the output (as PyTorch)."""

    op = "tanh"


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x, elementwise on float arrays of any shape; NaN propagates.
    The gradient is grad_y where the input is > 0, else grad_y * negative_slope (PyTorch's rule, at 0 too)."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, Real):
            raise TypeError(f"negative_slope must be a number, got {negative_slope!r}")
        if not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be finite, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def forward(self, x: np.ndarray) -> np.ndarray:
        ops = ops_for(x)
        x = ops.array("x", x)
        y = ops.leaky_relu(x, self.negative_slope)
        self.keep(x=x)
        return y

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return ops_for(self.x).leaky_relu_backward(grad_y, self.x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class AdaptiveAvgPool2d(Module):
    """``fc.adaptive_avg_pool2d`` as a layer: (N, C, H, W) -> (N, C, OH, OW) for output_size OH or (OH, OW), an
    entry None keeping the input's size. ``AdaptiveAvgPool2d(1)`` is ``GlobalAvgPool2d``."""

    def __init__(self, output_size) -> None:
        adaptive_pool2d_size(output_size, 1, 1)
        self.output_size = tuple(output_size) if isinstance(output_size, list) else output_size

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim not in (3, 4):
            raise ValueError(f"AdaptiveAvgPool2d needs x of shape (N, C, H, W) or (C, H, W), got {x.shape}")
        self.keep(x=x)
        return adaptive_avg_pool2d(x, self.output_size)

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return adaptive_avg_pool2d_backward(grad_y, self.x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class ConvTranspose2d(Module):
    """``fc.conv_transpose2d`` with a weight (in, out/groups, kh, kw) and a bias (out,): x (N, in, H, W) ->
    (N, out, OH, OW), OH = (H-1)*stride - 2*padding + dilation*(kh-1) + output_padding + 1 (OW likewise).
    Initialized as PyTorch's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = out/groups * kh * kw."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, dtype: object = np.float32) -> None:
        _set_conv_args(self, in_channels, out_channels, kernel_size, stride, dilation, groups)
        self.padding, self.output_padding = pair("padding", padding, 0), pair("output_padding", output_padding, 0)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"output_padding must be smaller than either stride or dilation, got output_padding="
                             f"{output_padding!r}, stride={stride!r}, dilation={dilation!r}")
        fan_in = out_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        d = float_dtype(dtype)
        self.weight = _uniform((in_channels, out_channels // groups, *self.kernel_size), fan_in, d)
        self.bias = _uniform((out_channels,), fan_in, d) if check_bool("bias", bias) else None

    def _args(self) -> tuple:
        return self.stride, self.padding, self.output_padding, self.groups, self.dilation

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim not in (3, 4) or x.shape[x.ndim - 3] != self.in_channels:
            raise ValueError(f"ConvTranspose2d({self.in_channels}, {self.out_channels}) needs x of shape "
                             f"(N, {self.in_channels}, H, W) or ({self.in_channels}, H, W), got {x.shape}")
        _same_dtype(type(self).__name__, x, self.weight.data)
        self.keep(x=x)
        return conv_transpose2d(x, self.weight.data, None if self.bias is None else self.bias.data, *self._args())

    def backward(self, grad_y: np.ndarray) -> np.ndarray | None:
        gx, gw, gb = conv_transpose2d_backward(grad_y, self.x, self.weight.data, *self._args(),
                                               input_grad=self.input_grad)
        accumulate(self.weight.grad, gw)
        if self.bias is not None:
            accumulate(self.bias.grad, gb)
        return gx

    def extra_repr(self) -> str:  # PyTorch's: the arguments that differ from their defaults
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        for name, default in (("padding", (0, 0)), ("dilation", (1, 1)), ("output_padding", (0, 0)), ("groups", 1)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + (", bias=False" if self.bias is None else "")


class LayerNorm(Module):
    """Normalization of x (..., *normalized_shape) over its last len(normalized_shape) axes, at each leading
    position: y = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance, weight (ones) and bias
    (zeros) of normalized_shape (none without ``elementwise_affine``; no bias with bias=False), as
    ``nn.LayerNorm``; the same in training and eval."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype: object = np.float32) -> None:
        shape = normalized_shape if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        self.normalized_shape = tuple(check_int("normalized_shape", n, 1) for n in shape)
        if not self.normalized_shape:
            raise ValueError("normalized_shape must name at least one dimension, got ()")
        if isinstance(eps, bool) or not isinstance(eps, Real) or not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.eps, self.elementwise_affine = float(eps), check_bool("elementwise_affine", elementwise_affine)
        d = float_dtype(dtype)
        self.weight = Parameter(constant(self.normalized_shape, 1.0, d)) if elementwise_affine else None
        self.bias = (Parameter(constant(self.normalized_shape, 0.0, d))
                     if check_bool("bias", bias) and elementwise_affine else None)

    def forward(self, x: np.ndarray) -> np.ndarray:
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm({self.normalized_shape}) needs x of shape (..., "
                             f"{', '.join(map(str, self.normalized_shape))}), got {x.shape}")
        if self.weight is not None:
            _same_dtype(type(self).__name__, x, self.weight.data)
        ops = ops_for(x)
        x = ops.array("x", x)
        size = math.prod(self.normalized_shape)
        m = x.size // size
        rows = x.reshape(1, m, size)  # each leading position a "channel" of the per-channel ops
        mean, var = ops.batch_statistics(rows)
        invstd = 1 / np.sqrt(var + self.eps)
        xhat = ops.channel_affine(rows, ops.from_host(invstd.astype(x.dtype)),
                                  ops.from_host((-mean * invstd).astype(x.dtype))).reshape(x.shape)
        self.keep(xhat=xhat, invstd=invstd.astype(x.dtype))
        if self.weight is None:
            return xhat
        shift = self.bias.data if self.bias is not None else ops.zeros(self.normalized_shape, x.dtype)
        return ops.channel_affine(xhat.reshape(m, size), self.weight.data.reshape(size),
                                  shift.reshape(size)).reshape(x.shape)

    def backward(self, grad_y: np.ndarray) -> np.ndarray | None:
        ops = ops_for(self.xhat)
        grad_y = check_grad("grad_y", ops.array("grad_y", grad_y), self.xhat.shape, self.xhat.dtype,
                            device=ops.device == "cuda")
        size = math.prod(self.normalized_shape)
        m = self.xhat.size // size
        g, xhat = grad_y.reshape(m, size), self.xhat.reshape(m, size)
        if self.weight is not None:
            accumulate(self.weight.grad, ops.channel_sum(ops.mul(g, xhat)).reshape(self.normalized_shape))
            if self.bias is not None:
                accumulate(self.bias.grad, ops.channel_sum(g).reshape(self.normalized_shape))
            g = ops.channel_affine(g, self.weight.data.reshape(size), ops.zeros((size,), g.dtype))
        if not self.input_grad:
            return None
        grad_x, _, _ = ops.batch_norm_backward(g.reshape(1, m, size), xhat.reshape(1, m, size), self.invstd, True)
        return grad_x.reshape(self.xhat.shape)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ops = ops_for(a)
    return ops.add(ops.array("a", a), ops.array("b", b))


def accumulate(dst: np.ndarray, src: np.ndarray) -> None:
    """dst += src in place, on the CPU or the GPU (where dst lives)."""
    ops = ops_for(dst)
    ops.add(dst, ops.array("src", src), out=dst)


def fill(a: np.ndarray, value: float) -> None:
    """a[...] = value in place, on the CPU or the GPU."""
    ops_for(a).fill(a, value)


def _check_logits(logits: np.ndarray) -> np.ndarray:
    """logits as a float (N, classes) array of its device (TypeError/ValueError say what is wrong)."""
    message = "logits must be a float32/float64 array of shape (N, classes), got"
    logits = as_array("logits", logits)
    if not hasattr(logits, "shape"):
        raise TypeError(f"{message} a {type(logits).__name__}")
    logits = ops_for(logits).array("logits", logits)
    if native(logits.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{message} a {logits.dtype} array")
    if logits.ndim != 2:
        raise ValueError(f"{message} shape {logits.shape}")
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) from logits (N, classes), computed stably (max subtracted)."""
    logits = _check_logits(logits)
    return ops_for(logits).softmax(logits)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over the batch of -log softmax(logits)[label], and its gradient with respect to logits.

    logits (N, classes) float, labels (N,) ints in [0, classes). Log-softmax and the loss are fused
    and use log-sum-exp with the row maximum subtracted, so large logits do not overflow.
    Returns (loss, grad) with grad = (softmax(logits) - onehot(labels)) / N, shaped like logits.
    On device logits the grad is a device array; labels may then be an int64 device array (trusted
    to lie in range) or a host array (checked).
    """
    logits = _check_logits(logits)
    labels = as_array("labels", labels)
    n, classes = logits.shape
    labels_on_host = ops_for(labels).device == "cpu"
    if labels_on_host:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}")
    if n == 0:
        raise ValueError("cross_entropy needs at least one example")
    if labels_on_host and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes}), got values in [{labels.min()}, {labels.max()}]")
    return ops_for(logits).cross_entropy(logits, labels)


def mse_loss(prediction: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean of (prediction - target)**2 over all elements, and its gradient with respect to prediction."""
    prediction, target = as_array("prediction", prediction), as_array("target", target)
    shape = getattr(prediction, "shape", None)
    if shape is None or getattr(target, "shape", None) != shape:
        raise ValueError(f"prediction and target must be arrays of one shape, got {shape} "
                         f"and {getattr(target, 'shape', None)}")
    ops = ops_for(prediction)
    prediction, target = ops.array("prediction", prediction), ops.array("target", target)
    if prediction.size == 0:
        raise ValueError("mse_loss needs at least one element")
    return ops.mse_loss(prediction, target)
