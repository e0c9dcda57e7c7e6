"""Grouped value attention (GVA) for the chunked ops, with fla 0.5.0's semantics (port-only helpers).

fla 0.5.0 lets ``chunk_gated_delta_rule`` (fla PR #799/#812) and ``chunk_kda`` (#833) take q and k with
``H`` heads while v, g, beta and the state carry ``HV`` heads, ``HV`` a multiple of ``H``: value head
``i`` reads query/key head ``i // (HV // H)`` (its kernels offset k by ``bos * H + i_h // (HV // H)``),
which is ``repeat_interleave`` of q and k along heads. The gradients of q and k are computed per value
head and summed over each group (fla 0.5.0 ``chunk_bwd_dqkwg``: ``dq.view(B, T, H, HV // H, K).sum(3)``).

myfla's chunked passes are batched tensor code over heads, so they run on ``HV`` heads with q and k
repeated once per call, and the autograd functions sum the repeated heads' gradients back.
"""

from __future__ import annotations

import torch


def gva_groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """``HV // H`` for q/k ``[B, T, H, K]`` and v ``[B, T, HV, V]``, checked with fla 0.5.0's messages
    (fla 0.5.0 fla/ops/gated_delta_rule/chunk.py L452-L464)."""
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q and k must have the same number of heads, "
            f"but got q.shape[2]={q.shape[2]} and k.shape[2]={k.shape[2]}"
        )
    H, HV = q.shape[2], v.shape[2]
    if HV % H != 0:
        raise ValueError(
            f"For GVA, num_v_heads (HV={HV}) must be evenly divisible by "
            f"num_heads (H={H}), but got HV % H = {HV % H}"
        )
    return HV // H


def repeat_qk_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, T, H, K]`` -> ``[B, T, H * groups, K]``, head ``h`` serving value heads
    ``h * groups ... h * groups + groups - 1``."""
    if groups == 1:
        return x
    return x.repeat_interleave(groups, dim=2)


def sum_qk_heads(dx: torch.Tensor, groups: int) -> torch.Tensor:
    """Gradient of ``repeat_qk_heads``: ``[B, T, H * groups, K]`` -> ``[B, T, H, K]``."""
    if groups == 1:
        return dx
    B, T, HV, K = dx.shape
    return dx.reshape(B, T, HV // groups, groups, K).sum(3)
