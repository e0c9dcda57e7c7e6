"""Elementwise math aliases of ``fla.ops.utils.op``.

In fla these names pick Triton intrinsics (``tl.exp``/``tl.log``, or libdevice fast variants under
``FLA_USE_FAST_OPS=1``) for use inside kernels. The port has no kernels, so they are the torch
functions; ``make_tensor_descriptor`` builds Triton TMA descriptors and has no torch meaning.
"""

from __future__ import annotations

import torch

# Source: fla/ops/utils/op.py:L12-L21 (fla 0.4.0)
exp = torch.exp
# Source: fla/ops/utils/op.py:L12-L21 (fla 0.4.0)
log = torch.log


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
