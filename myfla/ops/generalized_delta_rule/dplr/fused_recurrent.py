"""Token-by-token DPLR delta rule, as ``fla.ops.generalized_delta_rule.dplr.fused_recurrent``.

Per token, with state ``h`` ``[K, V]`` (fp32):

    h = exp(gk)[:, None] * h + b[:, None] * (a^T h)[None, :] + k[:, None] * v[None, :]
    o = h^T (scale * q)

The recurrence is sequential by nature, as in fla's kernel: one step per token, vectorised over
sequences, heads and the ``K x V`` state (the two rank-one updates are one ``[K, 2] @ [2, V]``
product); inputs are laid out time-major once and outputs written in place. Variable-length
batches are padded to ``[N, max_len]`` with zeros, which leave a state unchanged. A one-token step on
CUDA tensors (decoding) is a dozen small kernels, bound by launches: it goes through
``myfla.ops.utils.loop_graph.run_loop`` and replays as one CUDA graph from a shape's second call on,
as the GDN / KDA decoding steps do.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from myfla.ops.utils import loop_graph
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.index import check_varlen_inputs
from myfla.ops.utils.threads import recurrent_state_work, small_work_single_threaded
from myfla.ops.utils.workspace import new_empty, standalone
from myfla.utils import autocast_custom_bwd, autocast_custom_fwd, input_guard


def _time_major(layout, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, H, *rest]`` -> ``[L, N*H, *rest]`` (zero-padded to the longest sequence)."""
    xc = layout.pack(x.to(dtype), fill='zero')[:, 0]                    # [N, L, H, *rest]
    N, L, H = xc.shape[:3]
    return xc.transpose(0, 1).reshape(L, N * H, *xc.shape[3:])


def dplr_recurrence(q, k, v, a, b, gk, scale: float, initial_state: Optional[torch.Tensor],
                    output_final_state: bool, reverse: bool, cu_seqlens: Optional[torch.LongTensor]):
    """Port-only core shared with ``fused_recurrent_rwkv7_fwd``: ``(o, ht)`` with ``o`` in ``v.dtype``
    and ``ht`` fp32 (fp64 for fp64 inputs) or None. One token per sequence on CUDA tensors goes
    through ``step_replayed``."""
    if q.device.type == 'cuda' and k.shape[1] == 1 and cu_seqlens is None:
        return step_replayed('dplr', _given_vectors, q, k, v, {'a': a, 'b': b}, gk, scale, initial_state,
                             output_final_state)
    return _recurrence(q, k, v, a, b, gk, scale, initial_state, output_final_state, reverse, cu_seqlens)


def _given_vectors(x):
    return x['a'], x['b']


def _step_body(x, out, scale: float, vectors) -> None:
    """A one-token ``_recurrence`` as a ``run_loop`` body: the DPLR vectors ``a, b = vectors(x)``;
    fills ``out['o']`` and ``out['state']``."""
    a, b = vectors(x)
    o, h = _recurrence(x['q'], x['k'], x['v'], a, b, x['gk'], scale, x['h0'], True, False, None)
    out['o'].copy_(o)
    out['state'].copy_(h)


def step_replayed(name: str, vectors, q, k, v, extra, gk, scale: float, initial_state: Optional[torch.Tensor],
                  output_final_state: bool):
    """Port-only: the one-token step (``T == 1``, no ``cu_seqlens``) through ``run_loop``: eager on a
    shape's first call, recorded on its second, then one graph launch plus the copies of the inputs in
    and of the output and state out. ``vectors(inputs)`` (a module-level function) forms the DPLR
    vectors ``(a, b)`` inside the recorded step from the tensors of ``extra``, so callers that derive
    them (RWKV-7's ``-kk``, ``kk * a``) launch nothing outside it. Returns ``(o, ht)`` as
    ``_recurrence`` does (the direction does not matter for one token)."""
    B, _, H, K, V = *k.shape, v.shape[-1]
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    inputs = {'q': q, 'k': k, 'v': v, 'gk': gk, **extra,
              'h0': None if initial_state is None else initial_state.reshape(B, H, K, V)}
    res = loop_graph.run_loop(f'{name}_recurrent_step:{scale}',
                              functools.partial(_step_body, scale=scale, vectors=vectors), inputs,
                              {'o': ((B, 1, H, V), v.dtype), 'state': ((B, H, K, V), dtype)}, q.device)
    o = loop_graph.owned(res['o'], res['o'])
    return o, (loop_graph.owned(res['state'], res['state']) if output_final_state else None)


def _recurrence(q, k, v, a, b, gk, scale: float, initial_state: Optional[torch.Tensor],
                output_final_state: bool, reverse: bool, cu_seqlens: Optional[torch.LongTensor]):
    """``dplr_recurrence``'s token loop (every device, any length)."""
    B, T, H, K, V = *k.shape, v.shape[-1]
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    layout = get_chunk_layout(B, T, max(T, 1), cu_seqlens, device=q.device) if cu_seqlens is None else None
    if cu_seqlens is not None:
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        layout = get_chunk_layout(B, T, max(max(lens, default=1), 1), cu_seqlens, device=q.device)
    N = layout.N
    NH = N * H
    # the state (returned as the final state) from the CPU buffer pool: a decoding loop drops the
    # previous step's state as it stores the new one, so each step reuses a freed buffer instead of
    # page-faulting a fresh allocation (see myfla.ops.utils.workspace)
    h = new_empty((NH, K, V), dtype, q.device)
    with torch.no_grad():
        if initial_state is not None:
            h.copy_(initial_state.reshape(NH, K, V))
        else:
            h.zero_()
    o = torch.empty(B, T, H, V, dtype=v.dtype, device=v.device)
    if T == 0 or layout.NC == 0:
        return o, (h.view(N, H, K, V) if output_final_state else None)
    # every op of a step streams the [NH, K, V] state; the preparation touches [L, NH, 2, max(K, V)]
    L = layout.NC * layout.BT
    work = max(recurrent_state_work(NH * K * V), 2 * L * NH * max(K, V))
    with torch.no_grad(), small_work_single_threaded(work, q.device, 'dplr token loop'):
        # out of place: the time-major layout may be a view of the caller's tensor
        qs = (_time_major(layout, q, dtype) * scale).unsqueeze(-2)       # [L, NH, 1, K]
        at = _time_major(layout, a, dtype).unsqueeze(-2)                 # [L, NH, 1, K]
        decay = torch.exp(_time_major(layout, gk, dtype)).unsqueeze(-1)  # [L, NH, K, 1]
        bk = torch.stack((_time_major(layout, b, dtype), _time_major(layout, k, dtype)), -1)  # [L, NH, K, 2]
        vt = _time_major(layout, v, dtype).unsqueeze(-2)                 # [L, NH, 1, V]
        L = qs.shape[0]
        upd = torch.empty(L, NH, 2, V, dtype=dtype, device=q.device)     # rows: a^T h, v
        upd[:, :, 1:].copy_(vt)
        out = torch.empty(L, NH, 1, V, dtype=dtype, device=q.device)
        qs, at, decay, bk, ups, outs = qs.unbind(0), at.unbind(0), decay.unbind(0), bk.unbind(0), upd.unbind(0), out.unbind(0)
        steps = range(L - 1, -1, -1) if reverse else range(L)
        for t in steps:
            torch.bmm(at[t], h, out=ups[t][:, :1])                       # a^T h (before the decay)
            h.mul_(decay[t]).baddbmm_(bk[t], ups[t])
            torch.bmm(qs[t], h, out=outs[t])
        o_tm = out.squeeze(-2).view(L, N, H, V).transpose(0, 1)          # [N, L, H, V]
        o.copy_(layout.unpack(o_tm.unsqueeze(1).reshape(N, 1, L, H, V)))
    return o, (h.view(N, H, K, V) if output_final_state else None)


def fused_recurrent_dplr_delta_rule_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: Optional[float] = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
):
    """``(o, ht)``: outputs ``[B, T, H, V]`` in ``v.dtype`` and the fp32 final state ``[N, H, K, V]``
    (None unless ``output_final_state``); ``reverse`` runs every sequence from its last token.

    Source: fla/ops/generalized_delta_rule/dplr/fused_recurrent.py:L109-L151 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/fused_recurrent.py:L14-L106 (fla 0.4.0)
    """
    return dplr_recurrence(q, k, v, a, b, gk, scale, initial_state, output_final_state, reverse, cu_seqlens)


class FusedRecurrentDPLRDeltaRuleFunction(torch.autograd.Function):
    """Autograd function of ``fused_recurrent_dplr_delta_rule`` (inference only, as in fla).

    Source: fla/ops/generalized_delta_rule/dplr/fused_recurrent.py:L154-L196 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    @autocast_custom_fwd
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        gk: torch.Tensor,
        scale: Optional[float] = None,
        initial_state: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        reverse: bool = False,
        cu_seqlens: Optional[torch.LongTensor] = None,
    ):
        o, ht = fused_recurrent_dplr_delta_rule_fwd(
            q=q,
            k=k,
            v=v,
            a=a,
            b=b,
            gk=gk,
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            reverse=reverse,
            cu_seqlens=cu_seqlens,
        )
        return standalone(o), standalone(ht)

    @staticmethod
    @input_guard
    @autocast_custom_bwd
    def backward(ctx, do, dht):
        raise NotImplementedError(
            "Backward pass for fused_recurrent_dplr_delta_rule is not implemented and will not be supported. "
            "This kernel is only for inference. "
            "For training, please use `chunk_dplr_delta_rule`."
        )


def fused_recurrent_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""The DPLR recurrence token by token (inference only: the backward raises, as in fla),
    ``S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
        q (torch.Tensor): queries of shape `[B, T, H, K]`.
        k (torch.Tensor): keys of shape `[B, T, H, K]`.
        v (torch.Tensor): values of shape `[B, T, H, V]`.
        a (torch.Tensor): a of shape `[B, T, H, K]`.
        b (torch.Tensor): b of shape `[B, T, H, K]`.
        gk (torch.Tensor): gk of shape `[B, T, H, K]`. decay term in log space!
        scale (Optional[float]): scale of the attention scores; `1 / sqrt(K)` when `None`.
        initial_state (Optional[torch.Tensor]): initial state of shape `[N, H, K, V]`.
        output_final_state (Optional[bool]): whether to return the final state `[N, H, K, V]`.
        reverse (Optional[bool]): process every sequence from its last token. Default: `False`.
        cu_seqlens (Optional[torch.Tensor]): cumulative sequence lengths `[N + 1]` (then `B` must be 1).

    Source: fla/ops/generalized_delta_rule/dplr/fused_recurrent.py:L199-L269 (fla 0.4.0)
    """
    check_varlen_inputs(q, initial_state, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, final_state = FusedRecurrentDPLRDeltaRuleFunction.apply(
        q,
        k,
        v,
        a,
        b,
        gk,
        scale,
        initial_state,
        output_final_state,
        reverse,
        cu_seqlens,
    )
    return o, final_state
