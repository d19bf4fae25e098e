"""The benchmark cases: one table of conv layers, the pooling and GEMM cases derived from it,
their FLOP counts, the subsets run by ``--fc-size``, seeded inputs, and the reduced slices on
which the naive Python loops run.

A standalone module (NumPy only, no package-relative imports): the benchmark worker processes
(``worker.py``) import it by file, so that a PyTorch or ONNX Runtime worker never imports fastconv.

FLOPs (the contract of ``benchmarks/__init__.py``): conv forward 2*N*K*OH*OW*C/g*R*S, backward
twice that; GEMM 2*M*N*K; pooling one per window tap, N*C*OH*OW*kh*kw, for both passes; a training
step three times the forward FLOPs of the model's convolutions and linear layers (counted by the
fastconv worker on the model itself: ``Train`` has no ``flops``); a whole network's inference the FLOPs of
its Conv and Gemm nodes (counted on the ONNX graph by ``onnx_models.flops``: ``Network`` has no ``flops``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache

import numpy as np

PASSES = ("forward", "backward")
PEERS = ("naive", "numpy", "pytorch", "onnxruntime")
SIZES = ("tiny", "quick", "full")
TRAIN_IMPLS = ("auto", "pytorch")  # the model's default algorithms, its PyTorch twin
TRAIN_LR = 1e-3
NETWORK_IMPLS = ("auto", "onnxruntime")  # fastconv.onnx (the layers' default algorithms), ONNX Runtime
# Which peers run which (suite, pass): ONNX Runtime has no backward ops, and no peer but PyTorch trains.
PEER_PASSES = {"naive": ("forward", "backward"), "numpy": ("forward", "backward"),
               "pytorch": ("forward", "backward", "step"), "onnxruntime": ("forward",)}

# Rough speed of fastconv's naive loops on this machine (scratch/naive_rates.py): conv 9-25 MFLOP/s,
# pooling 1.5-3.7 M taps/s, GEMM 40 MFLOP/s. The naive case is cut to what runs in about this long.
NAIVE_SECONDS = 0.4
NAIVE_RATE = {"conv2d": 10e6, "max_pool2d": 1.5e6, "avg_pool2d": 1.5e6, "gemm": 40e6}


def peers_for(suite: str, pass_: str) -> list[str]:
    """The peers that run `pass_` of `suite`: PyTorch alone on training steps, ONNX Runtime alone on whole
    networks."""
    if suite == "train_step":
        return ["pytorch"]
    if suite == "models":
        return ["onnxruntime"]
    return [p for p in PEERS if pass_ in PEER_PASSES[p]]


@dataclass(frozen=True)
class Conv:
    """A conv layer: x (n, c, h, w) -> k output channels, r x r kernel (dilation 1), timed in `passes`."""
    name: str
    title: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    passes: tuple[str, ...] = PASSES

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.padding - self.r) // self.stride + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.padding - self.r) // self.stride + 1

    @property
    def label(self) -> str:
        extra = "".join(f" {word} {v}" for word, v, default in
                        (("stride", self.stride, 1), ("pad", self.padding, 0), ("groups", self.groups, 1))
                        if v != default)
        return f"{self.title} {self.n}x{self.c}x{self.h}x{self.w} -> {self.k} {self.r}x{self.r}{extra}"

    @property
    def args(self) -> tuple[int, int, int, int]:
        """(stride, padding, dilation, groups) as fastconv's conv2d takes them."""
        return self.stride, self.padding, 1, self.groups

    def flops(self, pass_: str) -> int:
        fwd = 2 * self.n * self.k * self.oh * self.ow * (self.c // self.groups) * self.r * self.r
        return fwd if pass_ == "forward" else 2 * fwd

    def sliced(self, budget: float, pass_: str) -> tuple[Conv, str | None]:
        """The largest batch slice within `budget` FLOPs; below one image, batch 1 and a slice of
        the output channels (of whole groups for a grouped conv)."""
        per_image = self.flops(pass_) / self.n
        if per_image * self.n <= budget:
            return self, None
        if per_image <= budget:
            n = int(budget // per_image)
            return replace(self, n=n), f"batch {n} of {self.n}"
        if self.groups > 1:
            g = max(1, int(budget // (per_image / self.groups)))
            cg, kg = self.c // self.groups, self.k // self.groups
            return (replace(self, n=1, c=g * cg, k=g * kg, groups=g),
                    f"batch 1 of {self.n}, {g} of {self.groups} groups")
        k = max(1, int(budget // (per_image / self.k)))
        return replace(self, n=1, k=k), f"batch 1 of {self.n}, {k} of {self.k} output channels"


@dataclass(frozen=True)
class Pool:
    """A pooling case: a (n, c, h, w) map, square window `kernel`, `stride`, no padding."""
    name: str
    title: str
    n: int
    c: int
    h: int
    w: int
    kernel: int
    stride: int

    @property
    def oh(self) -> int:
        return (self.h - self.kernel) // self.stride + 1

    @property
    def ow(self) -> int:
        return (self.w - self.kernel) // self.stride + 1

    @property
    def label(self) -> str:
        return (f"{self.title} {self.n}x{self.c}x{self.h}x{self.w}, "
                f"{self.kernel}x{self.kernel} stride {self.stride}")

    def flops(self, pass_: str) -> int:
        return self.n * self.c * self.oh * self.ow * self.kernel * self.kernel

    def sliced(self, budget: float, pass_: str) -> tuple[Pool, str | None]:
        """The largest batch slice within `budget` taps; below one image, batch 1 and a channel slice."""
        per_image = self.flops(pass_) / self.n
        if per_image * self.n <= budget:
            return self, None
        if per_image <= budget:
            n = int(budget // per_image)
            return replace(self, n=n), f"batch {n} of {self.n}"
        c = max(1, int(budget // (per_image / self.c)))
        return replace(self, n=1, c=c), f"batch 1 of {self.n}, {c} of {self.c} channels"


@dataclass(frozen=True)
class Gemm:
    """c (m, n) = a (m, k) @ b (k, n)."""
    name: str
    title: str
    m: int
    k: int
    n: int

    @property
    def label(self) -> str:
        return f"{self.title} {self.m}x{self.k} @ {self.k}x{self.n}"

    def flops(self, pass_: str = "forward") -> int:
        return 2 * self.m * self.n * self.k

    def sliced(self, budget: float, pass_: str = "forward") -> tuple[Gemm, str | None]:
        """A square-ish block of c within `budget` FLOPs: rows of a and columns of b, so that the
        naive loop's conversion of b to lists shrinks with the block."""
        if self.flops() <= budget:
            return self, None
        m = min(self.m, max(1, math.isqrt(int(budget // (2 * self.k)))))
        n = min(self.n, max(1, int(budget // (2 * self.k * m))))
        m = min(self.m, max(1, int(budget // (2 * self.k * n))))
        return replace(self, m=m, n=n), f"a {m}x{n} block of the {self.m}x{self.n} output"


@dataclass(frozen=True)
class Train:
    """One training step (forward, cross-entropy, backward, Adam) of the model ``fc.models.MODELS[model]``
    on a fixed (n, c, h, w) batch with labels in [0, classes)."""
    name: str
    title: str
    model: str
    n: int
    c: int
    h: int
    w: int
    classes: int = 10

    @property
    def label(self) -> str:
        return f"{self.title} training step, batch {self.n}x{self.c}x{self.h}x{self.w}, Adam lr {TRAIN_LR:g}"


@dataclass(frozen=True)
class Network:
    """Inference of a whole network on an (n, c, h, w) batch of images: ONNX's light model ``light_<model>.onnx``
    (shipped in the onnx package) with random weights, seed 0, at batch n, its logits the output
    (``onnx_models.random_weights``); one call is one forward pass, ``pass_`` "forward"."""
    name: str
    title: str
    model: str
    n: int
    c: int = 3
    h: int = 224
    w: int = 224

    @property
    def label(self) -> str:
        return f"{self.title} inference, batch {self.n}x{self.c}x{self.h}x{self.w}"


# The conv layer suite: one row per layer.
CONV = [
    Conv("lenet1", "LeNet-5 conv1", 64, 1, 28, 28, 6, 5, padding=2),
    Conv("lenet2", "LeNet-5 conv2", 64, 6, 14, 14, 16, 5),
    Conv("cifar1", "CIFAR conv1", 64, 3, 32, 32, 32, 3),
    Conv("cifar2", "CIFAR conv2", 64, 32, 15, 15, 64, 3),
    Conv("cifar3", "CIFAR conv3", 64, 64, 6, 6, 64, 3),
    Conv("resnet", "ResNet stage", 8, 64, 56, 56, 64, 3, padding=1),
    Conv("down", "ResNet downsample", 8, 128, 28, 28, 256, 3, stride=2, padding=1),
    Conv("pointwise", "pointwise", 8, 256, 14, 14, 64, 1),
    Conv("vgg", "VGG", 8, 256, 28, 28, 256, 3, padding=1),
    Conv("alexnet", "AlexNet conv1", 8, 3, 224, 224, 64, 11, stride=4, padding=2),
    Conv("depthwise", "depthwise", 8, 128, 56, 56, 128, 3, padding=1, groups=128),
    Conv("stem7", "ResNet conv1", 8, 3, 224, 224, 64, 7, stride=2, padding=3),
    Conv("stem3", "MobileNet stem", 8, 3, 224, 224, 32, 3, stride=2, padding=1),
    Conv("res512", "ResNet stage 4", 8, 512, 7, 7, 512, 3, padding=1),
    Conv("depthwise5", "depthwise 5x5", 8, 240, 28, 28, 240, 5, stride=2, padding=2, groups=240),
]
BATCH1_SUFFIX = "-b1"
# Inference latency: every layer again at batch 1, forward only (``is_batch1`` tells the report).
CONV += [replace(c, name=c.name + BATCH1_SUFFIX, n=1, passes=("forward",)) for c in CONV]
POOL_LAYERS = ("lenet1", "lenet2", "cifar1", "cifar2", "cifar3", "resnet", "down", "pointwise", "vgg", "alexnet",
               "depthwise")  # the layers whose output maps the pooling suite pools
TINY_CONV = Conv("tiny", "tiny", 2, 3, 8, 8, 4, 3, padding=1)
WINDOWS = ((2, 2), (3, 2))  # (kernel, stride) of the pooling cases
SQUARE_GEMM = (256, 512, 1024, 2048)

# --fc-size quick: conv layers, the layers whose output maps are pooled (2x2 stride 2), GEMM sizes.
QUICK_CONV = ("lenet1", "cifar2", "resnet", "depthwise")
QUICK_POOL = ("cifar2", "resnet")
QUICK_GEMM = (256, 1024)
QUICK_IM2COL = ("cifar2",)

# Training steps (--fc-size quick and full; tiny runs a batch-8 LeNet-5).
TRAIN = [Train("lenet5", "LeNet-5", "lenet5", 64, 1, 28, 28),
         Train("cifar_cnn", "CIFAR CNN", "cifar_cnn", 64, 3, 32, 32),
         Train("resnet20", "ResNet-20", "resnet20", 128, 3, 32, 32)]
TINY_TRAIN = Train("lenet5-b8", "LeNet-5", "lenet5", 8, 1, 28, 28)

# Whole networks (the "models" suite): (case name prefix, title, ONNX light model), each at every batch of
# NETWORK_BATCHES, named "<prefix>-b<batch>".
NETWORK_MODELS = (("alexnet", "AlexNet", "bvlc_alexnet"), ("vgg19", "VGG-19", "vgg19"),
                  ("googlenet", "GoogLeNet", "inception_v1"), ("resnet50", "ResNet-50", "resnet50"),
                  ("squeezenet", "SqueezeNet", "squeezenet"), ("shufflenet", "ShuffleNet", "shufflenet"),
                  ("densenet121", "DenseNet-121", "densenet121"))
NETWORK_BATCHES = (1, 16)
NETWORK = [Network(f"{prefix}-b{n}", title, model, n) for prefix, title, model in NETWORK_MODELS
           for n in NETWORK_BATCHES]
QUICK_NETWORK = ("squeezenet-b1", "squeezenet-b16", "shufflenet-b1", "resnet50-b1")
TINY_NETWORK = "squeezenet-b1"


# The GPU suite (--fc-device cuda): fastconv's GPU algorithms vs PyTorch on the GPU. Its tiny cases are
# tiny indeed: they check the harness under Numba's CUDA simulator, which runs each GPU thread in Python.
GPU_TINY_CONV = Conv("tiny-gpu", "tiny", 1, 2, 6, 6, 2, 3, padding=1)
GPU_QUICK_CONV = ("cifar2", "resnet", "vgg")
GPU_SQUARE_GEMM = {"tiny": (16,), "quick": (1024, 4096), "full": (1024, 2048, 4096)}
GPU_IM2COL = ("resnet", "vgg")  # full only
GPU_TRAIN = Train("cifar_cnn-b256", "CIFAR CNN", "cifar_cnn", 256, 3, 32, 32)  # not in tiny


def gpu_conv_cases(size: str) -> list[Conv]:
    return {"tiny": [GPU_TINY_CONV], "quick": _by_name(GPU_QUICK_CONV), "full": CONV}[size]


def gpu_pool_cases(size: str) -> list[Pool]:
    """2x2 stride 2 on the output maps of the GPU conv layers (3x3 stride 2 too in full)."""
    layers = {"tiny": [GPU_TINY_CONV], "quick": _by_name(GPU_QUICK_CONV), "full": _by_name(GPU_QUICK_CONV)}[size]
    windows = WINDOWS if size == "full" else WINDOWS[:1]
    return [pool_case(layer, k, s) for layer in layers for k, s in windows if min(layer.oh, layer.ow) >= k]


def gpu_gemm_cases(size: str) -> list[Gemm]:
    layers = _by_name(GPU_IM2COL) if size == "full" else []
    return [square_gemm(s) for s in GPU_SQUARE_GEMM[size]] + [im2col_gemm(layer) for layer in layers]


def gpu_train_cases(size: str) -> list[Train]:
    return [] if size == "tiny" else [GPU_TRAIN]


def pool_case(layer: Conv, kernel: int, stride: int) -> Pool:
    """Pooling on the output map (N, K, OH, OW) of a conv layer."""
    return Pool(f"pool-{layer.name}-{kernel}x{kernel}s{stride}", f"{layer.title} output",
                layer.n, layer.k, layer.oh, layer.ow, kernel, stride)


def square_gemm(size: int) -> Gemm:
    return Gemm(f"gemm-{size}", "square", size, size, size)


def im2col_gemm(layer: Conv) -> Gemm:
    """The GEMM of one group of the layer's im2col: (K/g) x (C/g*R*S) @ (C/g*R*S) x (N*OH*OW)."""
    return Gemm(f"gemm-im2col-{layer.name}", f"im2col GEMM of {layer.title}", layer.k // layer.groups,
                layer.c // layer.groups * layer.r * layer.r, layer.n * layer.oh * layer.ow)


def _by_name(names: tuple[str, ...]) -> list[Conv]:
    return [c for c in CONV if c.name in names]


def is_batch1(case_name: str) -> bool:
    """Whether the conv case is a layer's batch-1 (latency) twin."""
    return case_name.endswith(BATCH1_SUFFIX)


def conv_cases(size: str) -> list[Conv]:
    return {"tiny": [TINY_CONV], "quick": _by_name(QUICK_CONV), "full": CONV}[size]


def pool_cases(size: str) -> list[Pool]:
    """Each window on each selected layer's output map where the window fits the map."""
    layers, windows = {"tiny": ([TINY_CONV], WINDOWS[:1]), "quick": (_by_name(QUICK_POOL), WINDOWS[:1]),
                       "full": (_by_name(POOL_LAYERS), WINDOWS)}[size]
    return [pool_case(layer, k, s) for layer in layers for k, s in windows if min(layer.oh, layer.ow) >= k]


def peak_gemm(size: str) -> Gemm:
    """The largest square GEMM run at this size: NumPy's time on it is the practical peak."""
    return max((c for c in gemm_cases(size) if c.title == "square"), key=lambda c: c.m)


def gemm_cases(size: str) -> list[Gemm]:
    if size == "tiny":
        return [square_gemm(64)]
    sizes, layers = (QUICK_GEMM, _by_name(QUICK_IM2COL)) if size == "quick" else (
        SQUARE_GEMM, [c for c in CONV if not is_batch1(c.name)])
    return [square_gemm(s) for s in sizes] + [im2col_gemm(layer) for layer in layers]


def train_cases(size: str) -> list[Train]:
    return [TINY_TRAIN] if size == "tiny" else TRAIN


def network_cases(size: str) -> list[Network]:
    """tiny: SqueezeNet at batch 1; quick: QUICK_NETWORK; full: every network at every batch."""
    names = {"tiny": (TINY_NETWORK,), "quick": QUICK_NETWORK, "full": tuple(c.name for c in NETWORK)}[size]
    return [c for c in NETWORK if c.name in names]


Case = Conv | Pool | Gemm | Train | Network
KINDS = {cls.__name__: cls for cls in (Conv, Pool, Gemm, Train, Network)}


def case_to_dict(case: Case) -> dict:
    """The case as plain JSON data (its kind and fields), for a worker process."""
    return {"kind": type(case).__name__, **asdict(case)}


def case_from_dict(data: dict) -> Case:
    """The inverse of ``case_to_dict``; ValueError for an unknown kind or fields."""
    cls = KINDS.get(data.get("kind"))
    names = {f.name for f in fields(cls)} if cls else set()
    if cls is None or set(data) - {"kind"} != names:
        raise ValueError(f"not a benchmark case: {data!r}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"})


def naive_slice(op: str, case: Case, pass_: str) -> tuple[Case, float, str | None]:
    """(case to run the naive loops on, scale from its time to the whole case's by the FLOP ratio,
    scaled_from: what was run instead, or None when the whole case fits)."""
    small, what = case.sliced(NAIVE_SECONDS * NAIVE_RATE[op], pass_)
    return small, case.flops(pass_) / small.flops(pass_), what


# Seeded inputs, generated once per (case, dtype): the benchmarks time no setup.
def _rng(case: Case) -> np.random.Generator:
    return np.random.default_rng([ord(ch) for ch in case.name])


@lru_cache(maxsize=4)
def conv_inputs(case: Conv, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, weight (scaled by 1/sqrt(fan-in)) and grad_y of a conv case."""
    rng = _rng(case)
    fan_in = case.c // case.groups * case.r * case.r
    x = rng.standard_normal((case.n, case.c, case.h, case.w)).astype(dtype)
    w = (rng.standard_normal((case.k, case.c // case.groups, case.r, case.r)) / math.sqrt(fan_in)).astype(dtype)
    gy = rng.standard_normal((case.n, case.k, case.oh, case.ow)).astype(dtype)
    return x, w, gy


@lru_cache(maxsize=4)
def pool_inputs(case: Pool, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """x and grad_y of a pooling case."""
    rng = _rng(case)
    x = rng.standard_normal((case.n, case.c, case.h, case.w)).astype(dtype)
    gy = rng.standard_normal((case.n, case.c, case.oh, case.ow)).astype(dtype)
    return x, gy


@lru_cache(maxsize=4)
def gemm_inputs(case: Gemm, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """a and b (scaled by 1/sqrt(k)) of a GEMM case."""
    rng = _rng(case)
    a = rng.standard_normal((case.m, case.k)).astype(dtype)
    b = (rng.standard_normal((case.k, case.n)) / math.sqrt(case.k)).astype(dtype)
    return a, b


@lru_cache(maxsize=2)
def network_inputs(case: Network, dtype: str) -> np.ndarray:
    """A fixed batch of images, already normalized (zero mean, unit variance): the network's input."""
    return _rng(case).standard_normal((case.n, case.c, case.h, case.w)).astype(dtype)


@lru_cache(maxsize=4)
def train_inputs(case: Train, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: images already normalized (zero mean, unit variance) and int64 labels."""
    rng = _rng(case)
    x = rng.standard_normal((case.n, case.c, case.h, case.w)).astype(dtype)
    return x, rng.integers(0, case.classes, case.n)


def find(suite: str, name: str) -> Case:
    """The case of a record: `name` among the cases of `suite` (a "cuda_" prefix allowed); ValueError if none."""
    op = suite.removeprefix("cuda_")
    layers = CONV + [TINY_CONV, GPU_TINY_CONV]
    if op == "conv2d":
        candidates: list[Case] = layers
    elif op in ("max_pool2d", "avg_pool2d"):
        candidates = [pool_case(layer, k, s) for layer in layers for k, s in WINDOWS]
    elif op == "gemm":
        size = name.removeprefix("gemm-")
        candidates = [im2col_gemm(layer) for layer in layers] + ([square_gemm(int(size))] if size.isdigit() else [])
    elif op == "train_step":
        candidates = TRAIN + [TINY_TRAIN, GPU_TRAIN]
    elif op == "models":
        candidates = NETWORK
    else:
        raise ValueError(f"unknown suite {suite!r}")
    for case in candidates:
        if case.name == name:
            return case
    raise ValueError(f"no {suite} case named {name!r}")
