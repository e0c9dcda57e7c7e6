"""Elementwise math aliases of ``fla.ops.utils.op``.

In fla these names pick Triton intrinsics (``tl.exp``/``tl.log``/``tl.math.exp2``/``tl.log2``, or
libdevice fast variants under ``FLA_USE_FAST_OPS=1``) for use inside kernels, plus ``gather`` and
TMA descriptors. The port has no kernels, so they are the torch functions; ``make_tensor_descriptor``
builds Triton TMA descriptors and has no torch meaning.
"""

from __future__ import annotations

import torch

from myfla.utils import is_gather_supported

# Source: fla/ops/utils/op.py:L12-L21 (fla 0.4.0)
exp = torch.exp
# Source: fla/ops/utils/op.py:L12-L21 (fla 0.4.0)
exp2 = torch.exp2
# Source: fla/ops/utils/op.py:L12-L21 (fla 0.4.0)
log = torch.log
# Source: fla/ops/utils/op.py:L12-L21 (fla 0.4.0)
log2 = torch.log2


def safe_exp(x):
    """``exp(x)`` where ``x <= 0``, else 0: an exponent that can never overflow.

    Source: fla/ops/utils/op.py:L24-L26 (fla 0.4.0)
    """
    return exp(torch.where(x <= 0, x, torch.full_like(x, float('-inf'))))


def gather(src, index, axis, _builder=None):
    """``tl.gather(src, index, axis)``: ``out[..., i, ...] = src[..., index[..., i, ...], ...]`` along
    ``axis`` (``torch.gather`` with Triton's argument order). fla falls back to a no-op returning None
    when its Triton lacks ``tl.gather``; torch always has it (``is_gather_supported``).

    Source: fla/ops/utils/op.py:L29-L39 (fla 0.4.0)
    """
    if not is_gather_supported:
        return None
    return torch.gather(src, axis, index)


def make_tensor_descriptor(base, shape, strides, block_shape, _builder=None):
    """Triton tensor-memory-accelerator (TMA) descriptor constructor.

    A TMA descriptor describes a global-memory tile for Hopper's asynchronous copy engine inside a
    Triton kernel; the pure-torch port runs no kernels, so there is nothing to describe and every
    call is an error (``myfla.utils.is_tma_supported`` is ``False``, so fla's own callers never
    take this path).

    Source: fla/ops/utils/op.py:L42-L62 (fla 0.4.0)
    """
    raise RuntimeError(
        "make_tensor_descriptor builds a Triton TMA descriptor for use inside a Triton kernel; "
        "myfla runs no Triton kernels (is_tma_supported is False), so it cannot be used."
    )
