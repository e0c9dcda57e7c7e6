"""Subnormal floats flushed to zero inside the chunked ops on CPU (port-only helper; fla has no
counterpart).

Decayed states and their gradients pass through the subnormal range (below 1.2e-38 in fp32), where
x86 arithmetic is one to two orders of magnitude slower; such values are far under the fp32 rounding
of the outputs. ``torch.set_flush_denormal`` sets the calling thread's mode only (the x86 MXCSR
register is per thread), and torch has no getter, so the caller's mode is read from an operation's
result and restored on exit. GPU code is unaffected.
"""

from __future__ import annotations

import contextlib

import torch


def flushes_denormals() -> bool:
    """Whether the calling thread currently flushes subnormal floats to zero."""
    return torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() == 0.0


@contextlib.contextmanager
def flush_denormal():
    """Flush subnormals to zero inside the block; restore the caller's mode on exit."""
    previous = flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)
