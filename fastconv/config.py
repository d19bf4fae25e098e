"""Process-wide settings of fastconv."""
from __future__ import annotations

from numbers import Integral

_workspace_limit = 256 * 2**20


def workspace_limit() -> int:
    """Bytes an algorithm may use for scratch buffers (im2col's column matrix): 256 MiB by default."""
    return _workspace_limit


def set_workspace_limit(nbytes: int) -> None:
    """Set the scratch-buffer cap in bytes; im2col then works through the batch in chunks that fit."""
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, Integral) or nbytes < 1:
        raise ValueError(f"nbytes must be a positive int, got {nbytes!r}")
    _workspace_limit = int(nbytes)
