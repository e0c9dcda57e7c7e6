"""Token-by-token RWKV-7 time mixing, as ``fla.ops.rwkv7.fused_recurrent``.

``fused_recurrent_rwkv7`` is the DPLR recurrence with ``r`` as the query and ``w`` as the log decay;
``fused_mul_recurrent_rwkv7`` is RWKV-7's own kernel, which takes the normalised key ``kk`` and the
in-context learning rate ``a`` and forms the DPLR vectors itself (``-kk`` and ``kk * a``):

    S_t = diag(exp(w_t)) S_{t-1} + (kk_t * a_t) (-kk_t)^T S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale r_t)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule import fused_recurrent_dplr_delta_rule
from myfla.ops.generalized_delta_rule.dplr.fused_recurrent import dplr_recurrence, step_replayed
from myfla.ops.utils.index import check_varlen_inputs
from myfla.ops.utils.validation import reject_head_first, warn_head_first_layout
from myfla.utils import input_guard


@input_guard
def fused_recurrent_rwkv7_fwd(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kk: torch.Tensor,
    a: torch.Tensor,
    scale: Optional[float] = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
):
    """``(o, ht)``: outputs in ``v.dtype`` and the fp32 final state (None unless
    ``output_final_state``). The DPLR vectors ``-kk`` and ``kk * a`` are formed in fp32, as the kernel
    does; a single step (``T == 1``, fla's decode branch) is the same recurrence.

    Source: fla/ops/rwkv7/fused_recurrent.py:L131-L179 (fla 0.4.0)
    Source: fla/ops/rwkv7/fused_recurrent.py:L16-L128 (fla 0.4.0)
    """
    if r.device.type == 'cuda' and r.shape[1] == 1 and cu_seqlens is None:
        # the decoding step replays as one CUDA graph, the DPLR vectors formed inside it
        return step_replayed('rwkv7', _dplr_vectors, r, k, v, {'kk': kk, 'a': a}, w, scale, initial_state,
                             output_final_state)
    return dplr_recurrence(r, k, v, *_dplr_vectors({'kk': kk, 'a': a}), w, scale, initial_state,
                           output_final_state, reverse, cu_seqlens)


def _dplr_vectors(x):
    """RWKV-7's DPLR vectors ``(-kk, kk * a)`` from ``x['kk']`` and ``x['a']``, in fp32 (fp64 for fp64
    inputs), as fla's kernel forms them."""
    dtype = torch.promote_types(torch.promote_types(x['kk'].dtype, x['a'].dtype), torch.float32)
    kk32 = x['kk'].to(dtype)
    return -kk32, kk32 * x['a'].to(dtype)


def fused_recurrent_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = True,
    cu_seqlens: Optional[torch.LongTensor] = None,
    head_first: bool = False,
):
    """
    Args:
        r (torch.Tensor): r of shape `[B, T, H, K]`.
        w (torch.Tensor): log decay of shape `[B, T, H, K]`.
        k (torch.Tensor): k of shape `[B, T, H, K]`.
        v (torch.Tensor): v of shape `[B, T, H, V]`.
        a (torch.Tensor): a of shape `[B, T, H, K]`.
        b (torch.Tensor): b of shape `[B, T, H, K]`.
        scale (float): scale of the attention; `1 / sqrt(K)` when `None`.
        initial_state (torch.Tensor): initial state of shape `[B, H, K, V]` if cu_seqlens is None
            else `[N, H, K, V]` where N = len(cu_seqlens) - 1.
        output_final_state (bool): whether to output the final state.
        cu_seqlens (torch.LongTensor): cumulative sequence lengths `[N+1]` for variable-length inputs.
        head_first (Optional[bool]): deprecated; `True` raises.

    Source: fla/ops/rwkv7/fused_recurrent.py:L182-L246 (fla 0.4.0)
    """
    reject_head_first(head_first)
    warn_head_first_layout(r)
    return fused_recurrent_dplr_delta_rule(
        q=r,
        k=k,
        v=v,
        a=a,
        b=b,
        gk=w,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
    )


def fused_mul_recurrent_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kk: torch.Tensor,
    a: torch.Tensor,
    scale: Optional[float] = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    head_first: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    This function computes the recurrence S_t = S_t @ (I + a_t b_t^T) + v_t k_t^T in a recurrent manner.
    Inference only: like fla's kernel it records no autograd graph.

    Args:
        r (torch.Tensor): queries of shape `[B, T, H, K]`.
        w (torch.Tensor): log decay of shape `[B, T, H, K]`.
        k (torch.Tensor): keys of shape `[B, T, H, K]`.
        v (torch.Tensor): values of shape `[B, T, H, V]`.
        kk (torch.Tensor): normalised keys of shape `[B, T, H, K]`.
        a (torch.Tensor): in-context learning rates of shape `[B, T, H, K]`.
        scale (Optional[float]): scale of the scores; `1 / sqrt(K)` when `None`. Default: 1.
        initial_state (Optional[torch.Tensor]): initial state of shape `[N, H, K, V]`.
        output_final_state (Optional[bool]): whether to output the final state `[N, H, K, V]`.
        reverse (Optional[bool]): process the state passing in reverse order. Default: `False`.
        cu_seqlens (Optional[torch.Tensor]): cumulative sequence lengths `[N + 1]`.
        head_first (Optional[bool]): deprecated; `True` raises.

    Source: fla/ops/rwkv7/fused_recurrent.py:L249-L335 (fla 0.4.0)
    """
    reject_head_first(head_first)
    warn_head_first_layout(r)
    check_varlen_inputs(r, initial_state, cu_seqlens)
    if scale is None:
        scale = r.shape[-1] ** -0.5
    o, final_state = fused_recurrent_rwkv7_fwd(
        r,
        w,
        k,
        v,
        kk,
        a,
        scale,
        initial_state,
        output_final_state,
        reverse,
        cu_seqlens,
    )
    return o, final_state
