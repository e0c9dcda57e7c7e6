"""Token-by-token KDA for decoding and short inputs, through the gated delta rule's fused recurrence
with a key-wise gate ``gk`` (as fla; no backward, as fla)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.gated_delta_rule.fused_recurrent import fused_recurrent_gated_delta_rule
from myfla.ops.utils.validation import check_op_inputs


def fused_recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor = None,
    scale: float = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
    **kwargs
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Recurrent KimiDeltaAttention.

    Args:
        q (torch.Tensor): queries of shape `[B, T, H, K]`.
        k (torch.Tensor): keys of shape `[B, T, H, K]`.
        v (torch.Tensor): values of shape `[B, T, HV, V]`; GVA is applied if `HV > H`.
        g (torch.Tensor): key-wise log decays of shape `[B, T, HV, K]`.
        beta (torch.Tensor): betas of shape `[B, T, HV]`.
        scale (Optional[float]): scale of the attention scores; `1 / sqrt(K)` when `None`.
        initial_state (Optional[torch.Tensor]): initial state `[N, HV, K, V]`.
        output_final_state (Optional[bool]): whether to return the final state `[N, HV, K, V]`.
        use_qk_l2norm_in_kernel (Optional[bool]): L2-normalise q and k inside the op.
        cu_seqlens (torch.LongTensor): cumulative sequence lengths `[N+1]` for variable-length inputs.

    Returns:
        o (torch.Tensor): outputs of shape `[B, T, HV, V]`.
        final_state (torch.Tensor): `[N, HV, K, V]` if `output_final_state` else `None`.

    Source: fla/ops/kda/fused_recurrent.py:L11-L114 (fla 0.4.0)
    """
    check_op_inputs(q, k, v, g, beta, initial_state, cu_seqlens)
    if scale is None:
        scale = k.shape[-1] ** -0.5

    o, final_state = fused_recurrent_gated_delta_rule(
        q=q,
        k=k,
        v=v,
        gk=g,
        beta=beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        cu_seqlens=cu_seqlens,
    )
    return o, final_state
