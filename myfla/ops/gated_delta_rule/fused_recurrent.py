"""Token-by-token gated delta rule, as ``fla.ops.gated_delta_rule.fused_recurrent``.

Per token, with state ``h`` ``[K, V]`` (fp32):

    h = h * exp(g) * exp(gk)[:, None] (* exp(gv)[None, :])
    v' = beta * (v - h^T k);  h = h + k v'^T;  o = h^T (scale * q)

(with ``gv`` the correction goes to the key instead: ``k' = beta * (k - h v)``). The recurrence is
sequential by nature, as in fla's kernel: one step per token, vectorised over sequences, heads and
the ``K x V`` state; inputs are split once along time and outputs stacked once. Variable-length
batches are laid out as ``[N, max_len]`` with zero padding, which leaves a state unchanged.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.gva import gva_groups
from myfla.ops.utils.validation import check_op_inputs
from myfla.utils import input_guard


def _time_major(layout, x: torch.Tensor, dtype: torch.dtype, heads: int, rep: int = 1) -> torch.Tensor:
    """``[B, T, h, *rest]`` -> ``[L, N*heads, *rest]`` (heads repeated ``rep`` times for GVA)."""
    xc = layout.pack(x.to(dtype), fill='zero')[:, 0]                    # [N, L, h, *rest]
    if rep > 1:
        xc = xc.repeat_interleave(rep, dim=2)
    N, L = xc.shape[:2]
    return xc.transpose(0, 1).reshape(L, N * heads, *xc.shape[3:])


def fused_recurrent_gated_delta_rule_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    gk: Optional[torch.Tensor] = None,
    gv: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    scale: float = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Outputs ``o`` ``[B, T, HV, V]`` (``v.dtype``) and the fp32 final state ``[N, HV, K, V]``.

    q/k have ``H`` heads, v/g/gk/gv/beta ``HV`` (a multiple of ``H``; value head ``i`` reads
    query/key head ``i // (HV // H)``). ``beta`` is head-wise ``[B, T, HV]`` or per value channel
    ``[B, T, HV, V]``. With ``use_qk_l2norm_in_kernel``, q and k are normalised as
    ``x / sqrt(sum(x^2) + 1e-6)`` in fp32.

    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L142-L193 (fla 0.4.0)
    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L14-L139 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    HV = v.shape[2]
    rep = gva_groups(q, k, v)                                            # fla 0.5.0's GVA checks
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    o = torch.empty_like(v)
    final_state = q.new_empty(N, HV, K, V, dtype=torch.float32) if output_final_state else None

    # one "chunk" as long as the longest sequence: [N, L, ...] with zero padding
    if cu_seqlens is None:
        L = T
    else:
        L = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if N > 0 else 0
    cdt = torch.promote_types(torch.float32, v.dtype)
    if initial_state is not None:
        state = initial_state.to(cdt).reshape(N * HV, K, V)
    else:
        state = torch.zeros(N * HV, K, V, dtype=cdt, device=v.device)
    if L == 0 or N == 0:
        if output_final_state:
            final_state.copy_(state.view(N, HV, K, V))
        return o, final_state
    layout = get_chunk_layout(B, T, L, cu_seqlens, device=v.device)

    q_t = _time_major(layout, q, cdt, HV, rep)
    k_t = _time_major(layout, k, cdt, HV, rep)
    if use_qk_l2norm_in_kernel:
        q_t = q_t / torch.sqrt((q_t * q_t).sum(-1, keepdim=True) + 1e-6)
        k_t = k_t / torch.sqrt((k_t * k_t).sum(-1, keepdim=True) + 1e-6)
    q_t = q_t * scale
    v_t = _time_major(layout, v, cdt, HV)
    beta_headwise = beta.ndim != v.ndim
    beta_t = _time_major(layout, beta, cdt, HV)
    if beta_headwise:
        beta_t = beta_t.unsqueeze(-1)                                    # [L, NHV, 1]
    # state decays of every step, computed for all steps at once
    decay_g = torch.exp(_time_major(layout, g, cdt, HV)).view(L, N * HV, 1, 1) if g is not None else None
    decay_k = torch.exp(_time_major(layout, gk, cdt, HV)).unsqueeze(-1) if gk is not None else None
    decay_v = torch.exp(_time_major(layout, gv, cdt, HV)).unsqueeze(-2) if gv is not None else None

    qs, ks, vs, bs = q_t.unbind(0), k_t.unbind(0), v_t.unbind(0), beta_t.unbind(0)
    dgs = decay_g.unbind(0) if decay_g is not None else None
    dks = decay_k.unbind(0) if decay_k is not None else None
    dvs = decay_v.unbind(0) if decay_v is not None else None
    outs = []
    for t in range(L):
        if dgs is not None:
            state = state * dgs[t]
        if dks is not None:
            state = state * dks[t]
        b_k, b_v = ks[t], vs[t]
        if dvs is not None:
            state = state * dvs[t]
            b_k = bs[t] * (b_k - torch.bmm(state, b_v.unsqueeze(-1)).squeeze(-1))
        else:
            b_v = bs[t] * (b_v - torch.bmm(b_k.unsqueeze(1), state).squeeze(1))
        state = torch.baddbmm(state, b_k.unsqueeze(-1), b_v.unsqueeze(1))
        outs.append(torch.bmm(qs[t].unsqueeze(1), state).squeeze(1))

    o_t = torch.stack(outs, 0).view(L, N, HV, V).transpose(0, 1)         # [N, L, HV, V]
    o.copy_(layout.unpack(o_t.unsqueeze(1)))
    if output_final_state:
        final_state.copy_(state.view(N, HV, K, V))
    return o, final_state


class FusedRecurrentFunction(torch.autograd.Function):
    """Forward-only autograd wrapper of the fused recurrent kernel (fla ships no backward).

    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L196-L239 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        g: Optional[torch.Tensor] = None,
        gk: Optional[torch.Tensor] = None,
        gv: Optional[torch.Tensor] = None,
        beta: Optional[torch.Tensor] = None,
        scale: float = None,
        initial_state: torch.Tensor = None,
        output_final_state: bool = False,
        use_qk_l2norm_in_kernel: bool = False,
        cu_seqlens: Optional[torch.LongTensor] = None,
    ):
        o, final_state = fused_recurrent_gated_delta_rule_fwd(
            q=q,
            k=k,
            v=v,
            g=g,
            gk=gk,
            gv=gv,
            beta=beta,
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
            cu_seqlens=cu_seqlens,
        )

        return o, final_state

    @staticmethod
    @input_guard
    def backward(ctx, do, dht):
        raise NotImplementedError(
            "Backward pass is not implemented yet and we do not have plans to implement it "
            "because we haven't figured out how to compute dg without materializing the full "
            "hidden states for all time steps."
        )


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    gk: Optional[torch.Tensor] = None,
    gv: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    scale: float = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Gated delta rule, one token at a time (inference and decoding path).

    Args:
        q (torch.Tensor):
            queries of shape `[B, T, H, K]`.
        k (torch.Tensor):
            keys of shape `[B, T, H, K]`.
        v (torch.Tensor):
            values of shape `[B, T, HV, V]`.
            GVA is applied if `HV > H`.
        g (torch.Tensor):
            g (decays) of shape `[B, T, HV]`. Default: `None`.
        gk (torch.Tensor):
            gk (decays) of shape `[B, T, HV, K]`. Default: `None`.
        gv (torch.Tensor):
            gv (decays) of shape `[B, T, HV, V]`. Default: `None`.
        beta (torch.Tensor):
            betas of shape `[B, T, HV]`.
        scale (Optional[float]):
            Scale factor for the attention scores.
            If not provided, it will default to `1 / sqrt(K)`. Default: `None`.
        initial_state (Optional[torch.Tensor]):
            Initial state of shape `[N, HV, K, V]` for `N` input sequences.
            For equal-length input sequences, `N` equals the batch size `B`.
            Default: `None`.
        output_final_state (Optional[bool]):
            Whether to output the final state of shape `[N, HV, K, V]`. Default: `False`.
        use_qk_l2norm_in_kernel (Optional[bool]):
            Whether to use L2 normalization in the kernel. Default: `False`.
        cu_seqlens (torch.LongTensor):
            Cumulative sequence lengths of shape `[N+1]` used for variable-length training,
            consistent with the FlashAttention API.

    Returns:
        o (torch.Tensor):
            Outputs of shape `[B, T, HV, V]`.
        final_state (torch.Tensor):
            Final state of shape `[N, HV, K, V]` if `output_final_state=True` else `None`.

    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L242-L353 (fla 0.4.0)
    """
    check_op_inputs(q, k, v, g, beta, initial_state, cu_seqlens, gk=gk, gv=gv)
    if scale is None:
        scale = k.shape[-1] ** -0.5
    if beta is None:
        beta = torch.ones_like(q[..., 0])

    o, final_state = FusedRecurrentFunction.apply(
        q,
        k,
        v,
        g,
        gk,
        gv,
        beta,
        scale,
        initial_state,
        output_final_state,
        use_qk_l2norm_in_kernel,
        cu_seqlens,
    )
    return o, final_state
