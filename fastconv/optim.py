"""Optimizers and learning-rate schedules with the update rules and names of ``torch.optim``.

    opt = fc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = fc.optim.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad(); loss, g = fc.nn.cross_entropy(model(x), y); model.backward(g); opt.step()
        sched.step()

Updates are in place on ``Parameter.data``, one compiled loop per parameter, in the parameter's dtype;
optimizer state has each parameter's dtype and lives where it does (on the GPU for a model moved there
with ``model.to("cuda")``). Each update is written once against ``fastconv.array_ops.ops_for(p.data)``:
the Numba loops of ``kernels/elementwise.py`` on the CPU, the numba.cuda kernels on the GPU.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from ._checks import check_int
from .array_ops import ops_for
from .device import to
from .nn import Parameter, fill


def _non_negative(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, Real) or not v >= 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


class Optimizer:
    """Holds the parameters, the learning rate ``lr`` and per-parameter state arrays."""

    STATE_NAMES: tuple[str, ...] = ()  # the per-parameter state arrays the optimizer may hold

    def __init__(self, params, lr: float) -> None:
        self.params = list(params)
        if not self.params or not all(isinstance(p, Parameter) for p in self.params):
            raise ValueError("params must be a non-empty sequence of fastconv.nn.Parameter (model.parameters())")
        self.lr = lr
        self.initial_lr = self.lr
        self.steps = 0
        self.state: list[dict[str, np.ndarray]] = [{} for _ in self.params]

    @property
    def lr(self) -> float:
        """The learning rate of the next step (schedulers set it): a finite number >= 0."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _non_negative("lr", value)

    def zero_grad(self) -> None:
        for p in self.params:
            fill(p.grad, 0)

    def step(self) -> None:
        for i, p in enumerate(self.params):
            ops = ops_for(p.data)
            writeable = ops.holds(p.data, writeable=True) and ops.holds(p.grad)
            if not (writeable and p.grad.shape == p.data.shape
                    and p.grad.dtype == p.data.dtype and p.data.dtype in (np.float32, np.float64)):
                raise ValueError(f"parameter {i} must hold a writeable C-contiguous float32/float64 .data and a "
                                 f".grad of its shape, dtype and device, got {p.data.dtype} {p.data.shape} and "
                                 f"{p.grad.dtype} {p.grad.shape}")
        self.steps += 1
        for p, state in zip(self.params, self.state):
            self._update(p, state)

    def _update(self, p: Parameter, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays by name ('lr', 'steps', '3.momentum_buffer', ...), for ``.npz`` checkpoints."""
        out = {"lr": np.array(self.lr), "initial_lr": np.array(self.initial_lr), "steps": np.array(self.steps)}
        for i, state in enumerate(self.state):
            out.update({f"{i}.{k}": to(v, "cpu") for k, v in state.items()})
        return out

    def state_spec(self) -> dict[str, tuple[np.dtype, tuple[int, ...], bool]]:
        """What ``state_dict`` may hold: name -> (dtype, shape, required), for checking a checkpoint's entries
        before reading them."""
        spec = {"lr": (np.dtype(np.float64), (), True), "initial_lr": (np.dtype(np.float64), (), True),
                "steps": (np.dtype(np.int64), (), True)}
        for i, p in enumerate(self.params):
            spec.update({f"{i}.{name}": (np.dtype(p.data.dtype), p.data.shape, False) for name in self.STATE_NAMES})
        return spec

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore ``state_dict``'s arrays; raises ValueError naming the entry that does not fit (nothing changes then)."""
        spec = self.state_spec()
        for key, (dtype, shape, required) in spec.items():
            if required and key not in state:
                raise ValueError(f"optimizer state has no {key!r}")
        for key, value in state.items():
            if key not in spec or np.shape(value) != spec[key][1] or np.asarray(value).dtype.kind not in "iuf":
                raise ValueError(f"optimizer state {key!r} does not fit this optimizer and model")
        steps = state["steps"]
        if np.asarray(steps).dtype.kind not in "iu" or not 0 <= int(steps) < 2**62:
            raise ValueError(f"optimizer state 'steps' must be an integer >= 0, got {steps!r}")
        lr, initial_lr = _non_negative("lr", float(state["lr"])), _non_negative("initial_lr", float(state["initial_lr"]))
        self.lr, self.initial_lr, self.steps = lr, initial_lr, int(steps)
        self.state = [{} for _ in self.params]
        for key, value in state.items():
            index, _, name = key.partition(".")
            if name:
                i = int(index)
                value = np.array(to(value, "cpu"), dtype=self.params[i].data.dtype)
                self.state[i][name] = ops_for(self.params[i].data).from_host(value)


def _zeros_like(a: np.ndarray) -> np.ndarray:
    return ops_for(a).zeros(a.shape, a.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``: g = grad + weight_decay * p;
    with momentum, buf = momentum * buf + (1 - dampening) * g (buf = g on the first step) and
    g = g + momentum * buf (Nesterov) or g = buf; then p -= lr * g."""

    STATE_NAMES = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr)
        self.momentum = _non_negative("momentum", momentum)
        self.dampening = _non_negative("dampening", dampening)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov needs a momentum > 0 and zero dampening")
        self.nesterov = bool(nesterov)

    def _update(self, p: Parameter, state: dict[str, np.ndarray]) -> None:
        first = "momentum_buffer" not in state
        if self.momentum and first:
            state["momentum_buffer"] = _zeros_like(p.data)
        buf = state.get("momentum_buffer", p.data)  # unused without momentum
        t = p.data.dtype.type
        args = (t(self.lr), t(self.momentum), t(self.dampening), t(self.weight_decay), self.nesterov, first)
        ops_for(p.data).sgd_update(p.data, p.grad, buf, *args)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (weight decay added to the gradient, bias-corrected moments):
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    STATE_NAMES = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(0 <= _non_negative("betas", b) < 1
                                                                               for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _non_negative("eps", eps)
        self.weight_decay = _non_negative("weight_decay", weight_decay)

    def _update(self, p: Parameter, state: dict[str, np.ndarray]) -> None:
        b1, b2 = self.betas
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = _zeros_like(p.data), _zeros_like(p.data)
        t = p.data.dtype.type
        args = (t(self.lr), t(b1), t(b2), t(self.eps), t(self.weight_decay), t(1 - b1 ** self.steps),
                t(math.sqrt(1 - b2 ** self.steps)))
        ops_for(p.data).adam_update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], *args)


class LRScheduler:
    """Sets ``optimizer.lr`` from the epoch count; call ``step()`` once per epoch, after training it."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastconv.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"last_epoch": np.array(self.last_epoch)}

    def state_spec(self) -> dict[str, tuple[np.dtype, tuple[int, ...], bool]]:
        """What ``state_dict`` holds: name -> (dtype, shape, required)."""
        return {"last_epoch": (np.dtype(np.int64), (), True)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        epoch = state.get("last_epoch")
        if set(state) != {"last_epoch"} or np.asarray(epoch).dtype.kind not in "iu" or np.shape(epoch) != () \
                or not 0 <= int(epoch) < 2**31:
            raise ValueError(f"scheduler state must be one integer 'last_epoch' >= 0, got {sorted(state)}")
        self.last_epoch = int(epoch)
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(LRScheduler):
    """lr = initial_lr * gamma ** (epoch // step_size), as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        self.step_size, self.gamma = check_int("step_size", step_size, 1), _non_negative("gamma", gamma)

    def lr_at(self, epoch: int) -> float:
        return self.optimizer.initial_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2, as PyTorch's closed form."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:  # noqa: N803 (PyTorch's name)
        super().__init__(optimizer)
        self.T_max, self.eta_min = check_int("T_max", T_max, 1), _non_negative("eta_min", eta_min)

    def lr_at(self, epoch: int) -> float:
        base = self.optimizer.initial_lr
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
