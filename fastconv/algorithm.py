"""One record per algorithm, one registry per op: everything the dispatcher, ``auto``, ``fc.algorithms``,
the tests, the benchmarks and the demo know about an algorithm is read from its ``Algorithm``.

An op module (``conv.py``, ``pool.py``, ``gemm.py``) creates its ``Registry`` and adds one record per
(algorithm, device); adding an algorithm is adding one record (and its kernel)::

    CONV2D.add(Algorithm("im2col_packed", "cpu", forward, backward, workspace_bytes=im2col_bytes))

The signatures of ``forward`` and ``backward`` are the op's (its registry's docstring states them); arrays
reaching them are validated, batched, C-contiguous and on the record's device.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import workspace_limit

DEVICES = ("cpu", "cuda")


def always(p: object) -> bool:
    return True


def nothing(p: object) -> str | None:
    return None


def no_workspace(p: object, itemsize: int) -> int:
    return 0


@dataclass(frozen=True)
class Algorithm:
    """One algorithm of one op on one device.

    name: what ``algo=`` accepts. device: 'cpu' or 'cuda'.
    forward, backward: the op's signatures (see the op's registry); backward gives the gradient of the input.
    backward_weight: the gradient of the weight, for ops with one (conv2d), computed apart from the input's
      (``auto`` times and picks the two separately, and skips the input's where nobody needs it).
    unsupported(p) -> None, or why it cannot compute the problem ``p`` (a sentence; conv2d raises it as a
      ValueError naming the algorithm when asked for it by name).
    workspace_bytes(p, itemsize): the workspace its smallest batch chunk needs beyond the output; it runs
      only where that is within ``fastconv.workspace_limit()``.
    timed(p): whether ``auto`` times it for p (False: it can run p but is known to lose, or to disturb
      the timing of others; ``auto`` then never picks it).
    finite_inputs: the forward's inputs ('x', 'weight') that must hold no NaN/Inf for its output to have
      PyTorch's NaN/Inf pattern (tested: ``tests/test_conv.py``); the CPU dispatcher checks exactly these
      (one compiled pass over each) and reroutes to an algorithm that needs none where one is not finite.
    backward_nonfinite_safe: whether NaN/Inf in the backward's inputs give PyTorch's NaN/Inf pattern (False:
      the CPU dispatcher reruns the backward with a safe algorithm when its results are not finite).
    within_range(x_abs_max, w_abs_max, p, dtype): conv2d's numerical limit, whether no intermediate
      can overflow on inputs of these magnitudes (None: any finite input; the CPU dispatcher falls back
      to an algorithm without limits otherwise). A record with one lists both inputs in finite_inputs.
    forward_rounding: how many times the rounding error of a plain sum of products of the same length its
      float32 forward may carry (measured; the tests scale their tolerance by it): 1 for sums of products,
      20 for Winograd F(4x4, 3x3), whose transforms hold larger entries (4-11x direct's error measured).
    reference: the plain-Python oracle: never timed, and tested only on small problems.
    """

    name: str
    device: str
    forward: Callable
    backward: Callable
    backward_weight: Callable | None = None
    unsupported: Callable[[object], str | None] = nothing
    workspace_bytes: Callable[[object, int], int] = no_workspace
    timed: Callable[[object], bool] = always
    finite_inputs: tuple[str, ...] = ()
    backward_nonfinite_safe: bool = True
    within_range: Callable[[float, float, object, object], bool] | None = None
    forward_rounding: float = 1.0
    reference: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if not self.name or self.name == "auto":
            raise ValueError(f"an algorithm needs a name other than 'auto', got {self.name!r}")
        if not set(self.finite_inputs) <= {"x", "weight"}:
            raise ValueError(f"finite_inputs must name 'x' and/or 'weight', got {self.finite_inputs!r}")
        if self.within_range is not None and set(self.finite_inputs) != {"x", "weight"}:
            raise ValueError("an algorithm with within_range reads both inputs' magnitudes: finite_inputs must "
                             f"be ('x', 'weight'), got {self.finite_inputs!r}")

    def fits(self, p: object, itemsize: int) -> bool:
        """Whether its workspace for p is within ``fastconv.workspace_limit()``."""
        return self.workspace_bytes(p, itemsize) <= workspace_limit()

    def runs(self, p: object, itemsize: int) -> bool:
        """Whether it computes p within the workspace limit."""
        return self.unsupported(p) is None and self.fits(p, itemsize)


class Registry:
    """The algorithms of one op, per device, in the order they were added (``fc.algorithms`` lists them
    so), and per device the rule ``auto`` follows where it does not time (or cannot: the GPU)."""

    def __init__(self, op: str, doc: str) -> None:
        self.op, self.__doc__ = op, doc
        self._records: dict[tuple[str, str], Algorithm] = {}
        self.rules: dict[str, Callable[[object, int], str]] = {}
        self.version = 0  # counts changes of the records: what is derived from them may be cached per version
        REGISTRIES[op] = self

    def add(self, algorithm: Algorithm) -> Algorithm:
        key = (algorithm.device, algorithm.name)
        if key in self._records:
            raise ValueError(f"{self.op} already has an algorithm {algorithm.name!r} on {algorithm.device}")
        self._records[key] = algorithm
        self.version += 1
        return algorithm

    def remove(self, name: str, device: str = "cpu") -> None:
        del self._records[(device, name)]
        self.version += 1

    def names(self, device: str = "cpu") -> list[str]:
        return [name for (d, name) in self._records if d == device]

    def records(self, device: str = "cpu") -> list[Algorithm]:
        return [a for (d, _), a in self._records.items() if d == device]

    def __getitem__(self, key: tuple[str, str]) -> Algorithm:
        """registry[device, name]: the record."""
        return self._records[key]

    def check(self, algo: object, device: str) -> str:
        """`algo` if it is 'auto' or a name of this op on `device`, else ValueError listing the names."""
        names = self.names(device)
        if not isinstance(algo, str) or (algo != "auto" and algo not in names):
            raise ValueError(f"algo for {self.op} must be 'auto' or one of {names}, got {algo!r}")
        return algo

    def require(self, algo: str, device: str, p: object, itemsize: int | None) -> Algorithm:
        """The record of `algo`; ValueError when it cannot compute p (in its own words) or, unless itemsize is
        None, when its workspace for one image is above the workspace limit."""
        record = self._records[(device, algo)]
        why = record.unsupported(p)
        if why is not None:
            raise ValueError(f"algo={algo!r} {why}")
        need, limit = (0 if itemsize is None else record.workspace_bytes(p, itemsize)), workspace_limit()
        if need > limit:
            raise ValueError(f"{algo} needs {need / 2**20:.1f} MiB of workspace for one image, above the workspace "
                             f"limit of {limit / 2**20:.1f} MiB: raise it with fastconv.set_workspace_limit() or "
                             "use algo='direct'")
        return record

    def candidates(self, p: object, itemsize: int, device: str = "cpu") -> list[str]:
        """What ``auto`` times for p: every algorithm on `device` that runs p, is timed for it and is not the
        reference."""
        return [a.name for a in self.records(device) if not a.reference and a.runs(p, itemsize) and a.timed(p)]

    def rule(self, p: object, itemsize: int, device: str) -> str:
        """The name ``auto`` runs on `device` without timing."""
        return self.rules[device](p, itemsize)


REGISTRIES: dict[str, Registry] = {}
