"""Row-wise softmax forward and backward, as ``fla.ops.utils.softmax`` (one Triton program per row
there; one batched expression here, in fp32)."""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.utils.op import exp
from myfla.utils import accumulation_dtype, is_amd

# Triton autotuning space of the softmax kernels.
# Source: fla/ops/utils/softmax.py:L13-L13 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [1, 2, 4, 8, 16] if is_amd else [1, 2, 4, 8, 16, 32]


def softmax_fwd(
    x: torch.Tensor,
    dtype: Optional[torch.dtype] = torch.float
) -> torch.Tensor:
    """``p = exp(x - max) / sum(exp(x - max))`` over the last dimension, returned in ``dtype``.

    Source: fla/ops/utils/softmax.py:L70-L87 (fla 0.4.0)
    Source: fla/ops/utils/softmax.py:L16-L40 (fla 0.4.0)
    """
    shape = x.shape
    x = x.view(-1, x.shape[-1])
    b_x = x.to(accumulation_dtype(x))
    b_x = exp(b_x - b_x.max(-1, keepdim=True).values)
    p = b_x / b_x.sum(-1, keepdim=True)
    return p.to(dtype).view(*shape)


def softmax_bwd(
    p: torch.Tensor,
    dp: torch.Tensor,
    dtype: Optional[torch.dtype] = torch.float
) -> torch.Tensor:
    """Softmax gradient ``ds = p * dp - p * sum(p * dp)`` over the last dimension, in ``dtype``.

    Source: fla/ops/utils/softmax.py:L90-L108 (fla 0.4.0)
    Source: fla/ops/utils/softmax.py:L43-L67 (fla 0.4.0)
    """
    shape = p.shape
    p = p.view(-1, p.shape[-1])
    acc = accumulation_dtype(p, dp)
    b_p, b_dp = p.to(acc), dp.reshape(p.shape).to(acc)
    b_pp = (b_p * b_dp).sum(-1, keepdim=True)
    ds = b_p * b_dp - b_p * b_pp
    return ds.to(dtype).view(*shape)
