"""Row-wise log-sum-exp, as ``fla.ops.utils.logsumexp``."""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.utils.op import exp, log
from myfla.utils import accumulation_dtype

# fla's kernel reduces blocks of at most 64K elements; blocks are then merged with torch.logsumexp.
_MAX_BLOCK = 64 * 1024


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def logsumexp_fwd(
    x,
    scale: Optional[float] = None,
    dtype: Optional[torch.dtype] = None
):
    r"""
    Compute the logsumexp of the input tensor over the last dimension.

    Args:
        x (Tensor):
            The input tensor of any shape.
        scale (Optional[float]):
            The scale applied to the input tensor. Default: `None`.
        dtype (Optional[torch.dtype]):
            The data type of the output tensor. Default: `None`.
    Returns:
        Tensor: The logsumexp of the input tensor.

    Rows are split into blocks of ``min(next_power_of_2(D), 65536)`` columns as in fla's kernel; each
    block gives ``log(sum(exp(x - max))) + max`` in fp32 (padding is ``-inf``), and the blocks are
    merged with ``torch.logsumexp``. The result is fp32 (fp64 for fp64 ``x``) unless ``dtype`` asks
    for another type.

    Source: fla/ops/utils/logsumexp.py:L46-L82 (fla 0.4.0)
    Source: fla/ops/utils/logsumexp.py:L14-L43 (fla 0.4.0)
    """
    shape = x.shape
    x = x.view(-1, shape[-1])
    N, D = x.shape
    B = min(_next_power_of_2(D), _MAX_BLOCK)
    ND = (D + B - 1) // B

    acc = accumulation_dtype(x)
    b_x = x.to(acc)
    if ND * B != D:
        b_x = torch.cat([b_x, b_x.new_full((N, ND * B - D), float('-inf'))], -1)
    b_x = b_x.view(N, ND, B)
    if scale is not None:
        b_x = b_x * scale
    b_m = b_x.max(-1, keepdim=True).values
    z = (log(exp(b_x - b_m).sum(-1, keepdim=True)) + b_m).squeeze(-1)      # [N, ND]
    z = z.logsumexp(-1).view(*shape[:-1])
    if dtype is not None and dtype != torch.float:
        z = z.to(dtype)
    return z
