"""Token-by-token gated delta rule, as ``fla.ops.gated_delta_rule.fused_recurrent``.

Per token, with state ``h`` ``[K, V]`` (fp32):

    h = h * exp(g) * exp(gk)[:, None] (* exp(gv)[None, :])
    v' = beta * (v - h^T k);  h = h + k v'^T;  o = h^T (scale * q)

(with ``gv`` the correction goes to the key instead: ``k' = beta * (k - h v)``). The recurrence is
sequential by nature, as in fla's kernel: one step per token, vectorised over sequences, heads and
the ``K x V`` state; inputs are prepared for all tokens at once and outputs written into one buffer.
Variable-length batches are laid out as ``[N, max_len]`` with zero padding, which leaves a state
unchanged.

A step reads and writes the state as few times as torch ops allow, because that traffic is what a
decoding step costs: the decays write the decayed state into the state buffer (for the first token
that is also the copy out of ``initial_state``, which is never modified); one batched matmul reads
``k^T h`` and ``q^T h`` together; the rank-1 update is one in-place ``addcmul``. The output then
follows without reading the updated state: ``(h + k v'^T)^T q = h^T q + (k . q) v'``. Small calls
(one-token decoding) run on one intra-op thread (``myfla.ops.utils.threads``). On a GPU a one-token
step is bound by kernel launches, not by the state's bytes, so from the second call of a shape on
it is replayed as a CUDA graph (``myfla.ops.utils.loop_graph``): the inputs are copied into the
graph's buffers and the whole step is one launch.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from myfla.ops.utils.calls import as_dtype, autograd_records
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.gva import gva_groups
from myfla.ops.utils import loop_graph
from myfla.ops.utils.threads import recurrent_state_work, small_work_single_threaded
from myfla.ops.utils.validation import check_op_inputs
from myfla.ops.utils.workspace import new_empty, standalone
from myfla.utils import autocast_off_like_kernels, input_guard

def _time_major(layout, x: torch.Tensor, dtype: torch.dtype, heads: int, rep: int, *rest: int) -> torch.Tensor:
    """``[B, T, h, ...]`` -> ``[L, N*heads, *rest]``, or ``[N*heads, *rest]`` for one token per
    sequence (``L == 1``, the decoding step); heads repeated ``rep`` times for GVA. ``layout`` None
    means equal-length sequences (``L = T``, ``N = B``). One token per sequence gives a view where no
    conversion or repeat is needed: callers never write into the result."""
    if x.dtype != dtype:
        x = x.to(dtype)
    if layout is not None:
        x = layout.pack(x, fill='zero')[:, 0]                           # [N, L, h, ...]
    if rep > 1:
        x = x.repeat_interleave(rep, dim=2)
    N, L = x.shape[:2]
    if L == 1:
        return x.reshape(N * heads, *rest)
    return x.transpose(0, 1).reshape(L, N * heads, *rest)


def _recurrent_step(
    state_in: torch.Tensor,
    state: torch.Tensor,
    kq: torch.Tensor,
    k_col: torch.Tensor,
    kdotq: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay_k: Optional[torch.Tensor],
    decay_v: Optional[torch.Tensor],
    out: torch.Tensor,
) -> None:
    """One token for ``R`` (sequence, head) rows: ``state`` ``[R, K, V]`` becomes the state after the
    token, computed from ``state_in`` (``state`` itself after the first token). ``kq`` ``[R, 2, K]``
    holds k and q, ``k_col`` ``[R, K, 1]`` is k again and ``kdotq`` ``[R, 1]`` is ``k . q``;
    ``v`` ``[R, V]``; ``beta`` ``[R, 1]`` or ``[R, V]``; ``decay_k`` ``[R, K or 1, 1]`` and
    ``decay_v`` ``[R, 1, V]`` are exponentiated decays (or None). The output ``h^T q`` ``[R, V]``
    (unscaled) goes to ``out``.

    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L93-L122 (fla 0.4.0)
    """
    if decay_k is not None:
        torch.mul(state_in, decay_k, out=state)
    elif state_in is not state:
        state.copy_(state_in)
    if decay_v is None:
        # k^T h and q^T h in one pass over the state
        kh, qh = torch.bmm(kq, state).unbind(1)
        b_v = beta * (v - kh)
        # o = (h + k v'^T)^T q = h^T q + (k . q) v'
        torch.addcmul(qh, b_v, kdotq, out=out)
        state.addcmul_(k_col, b_v.unsqueeze(1))
    else:
        state.mul_(decay_v)
        # the correction goes to the key: k' = beta * (k - h v), beta per key channel as fla pairs them
        b_k = beta.unsqueeze(-1) * (k_col - torch.bmm(state, v.unsqueeze(-1)))
        q_row = kq[:, 1:]
        # o = (h + k' v^T)^T q = h^T q + (k' . q) v
        torch.addcmul(torch.bmm(q_row, state).squeeze(1), v, torch.bmm(q_row, b_k).squeeze(1), out=out)
        state.addcmul_(b_k, v.unsqueeze(1))


# per (scale, dtype, device): constants that fold the output scale into q (see _scale_folds)
_SCALE_FOLDS = {}


def _scale_folds(scale: float, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """``(w, e, s)``: ``w``, ``e`` ``[2]`` such that ``rsqrt(w * [|k|^2, |q|^2] + e)`` is
    ``[1 / sqrt(|k|^2 + 1e-6), scale / sqrt(|q|^2 + 1e-6)]`` (fla's in-kernel L2 norm of k, and of
    q with the output scale, in one op), and ``s`` ``[2, 1]`` = ``[1, scale]`` (the scale alone, for
    calls without the L2 norm). Made once per scale, dtype and device.

    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L94-L97 (fla 0.4.0)
    """
    key = (scale, dtype, device)
    folds = _SCALE_FOLDS.get(key)
    if folds is None:
        inv = 1.0 / (scale * scale)
        folds = (torch.tensor([1.0, inv], dtype=dtype, device=device),
                 torch.tensor([1e-6, 1e-6 * inv], dtype=dtype, device=device),
                 torch.tensor([[1.0], [scale]], dtype=dtype, device=device))
        _SCALE_FOLDS[key] = folds
    return folds


def _decay_update(state_in, state, decay, k_col, b_v_row) -> None:
    """``state = decay * state_in + k_col b_v_row`` (``state_in`` may be ``state``).

    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L104-L118 (fla 0.4.0)
    """
    if decay is not None:
        torch.mul(state_in, decay, out=state)
    elif state_in is not state:
        state.copy_(state_in)
    state.addcmul_(k_col, b_v_row)


def _decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor],
    gk: Optional[torch.Tensor],
    beta: torch.Tensor,
    scale: float,
    state_in: torch.Tensor,
    state: torch.Tensor,
    use_qk_l2norm_in_kernel: bool,
    rep: int,
    cdt: torch.dtype,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One token for each of ``N`` sequences (q/k ``[N, 1, H, K]``, v ``[N, 1, HV, V]``, gates and
    beta alike), the decoding step: ``state`` ``[R, K, V]`` (R = N * HV) becomes the state after
    the token, from ``state_in`` (read only, or ``state`` itself); returns the scaled output
    ``[R, V]`` in ``cdt`` (written into ``out`` when given).

    A step's cost is its number of torch ops where the state is small (each op is a kernel launch
    on a GPU, a few microseconds of dispatch on a CPU) and its passes over the state where it is
    large, so it is written with as few of both as torch ops allow: 14 kernels for GDN / KDA with
    the L2 norm and without GVA (16 before this path existed), and a large state goes through
    memory three times (read by the ``bmm``; read and written once by the update), against five
    before. k and q are stacked once; one ``bmm`` of ``[k; q]`` with itself gives both
    squared norms, whose reciprocal square roots (with the output scale folded into q's,
    :func:`_scale_folds`) normalise both rows in one multiply; the decay moves onto k and q, so one
    ``bmm`` reads ``k^T h`` and ``q^T h`` of the decayed state from ``initial_state``; one
    ``addcmul`` gives the output ``h^T q + (k . q) v'`` without reading the updated state; and the
    decay and the rank-1 update write the new state in one piece (cache-sized blocks of rows were
    tried and lost on the 16-core host: 2x slower for a 16 MB state at one thread, and every block a
    stalled parallel region at two threads on a busy machine; benchmarks/bench_decode.py, 2026-11-26).

    Source: fla/ops/gated_delta_rule/fused_recurrent.py:L14-L139 (fla 0.4.0)
    """
    R, K, V = state.shape
    kq = torch.stack((k, q), dim=-2).view(-1, 2, K)                       # [N*H, 2, K]
    kq = as_dtype(kq, cdt)
    if rep > 1:
        kq = kq.repeat_interleave(rep, dim=0)                             # value head i reads key head i // rep
    w, e, s = _scale_folds(scale, cdt, kq.device)
    if use_qk_l2norm_in_kernel:
        norms = torch.bmm(kq, kq.transpose(1, 2)).diagonal(dim1=1, dim2=2)   # [R, 2]: |k|^2, |q|^2
        kq = kq * torch.addcmul(e, norms, w).rsqrt_().unsqueeze(-1)      # [k / |k|, scale * q / |q|]
    else:
        kq = kq * s                                                       # [k, scale * q]
    k_row, q_row = kq.unbind(1)
    kdotq = torch.bmm(k_row.unsqueeze(1), q_row.unsqueeze(2)).view(R, 1)  # k . (scale q), one kernel

    # row decays [R, K or 1, 1], exponentiated in cdt
    decay = None
    if g is not None:
        decay = torch.exp(as_dtype(g.reshape(R, 1, 1), cdt))
    if gk is not None:
        decay_gk = torch.exp(as_dtype(gk.reshape(R, K, 1), cdt))
        decay = decay_gk if decay is None else decay * decay_gk
    if state_in.dtype != cdt or not state_in.is_contiguous():
        # bmm takes one dtype, and a strided state would take another (slower, differently rounded)
        # matmul path: the state is read from its contiguous cdt copy
        state_in = state.copy_(state_in)

    # k^T h and q^T h of the decayed state, read from state_in with the decay moved onto k and q
    # ((d * k)^T h = k^T (d h) for a row decay d), so that the decay and the update below go
    # through the state together
    kq_d = kq if decay is None else kq * (decay if decay.shape[1] == 1 else decay.transpose(1, 2))
    kh, qh = torch.bmm(kq_d, state_in).unbind(1)                          # [R, V] each
    b_v = torch.sub(as_dtype(v.reshape(R, V), cdt), kh).mul_(as_dtype(beta.reshape(R, -1), cdt))
    out = torch.addcmul(qh, b_v, kdotq, out=out)                          # (h + k v'^T)^T q = h^T q + (k.q) v'

    # h = d h_in + k v'^T
    _decay_update(state_in, state, decay, k_row.unsqueeze(-1), b_v.unsqueeze(1))
    return out


def _decode_body(x, out, scale: float, use_qk_l2norm_in_kernel: bool, rep: int, cdt: torch.dtype) -> None:
    """``_decode_step`` on ``run_loop``'s buffers: the state goes to ``out['state']``, the output to
    ``out['o']``."""
    state = out['state']
    state_in = x['h0'] if x['h0'] is not None else state.zero_()
    _decode_step(x['q'], x['k'], x['v'], x['g'], x['gk'], x['beta'], scale, state_in, state,
                 use_qk_l2norm_in_kernel, rep, cdt, out=out['o'])


def _decode_step_replayed(q, k, v, g, gk, beta, scale: float, initial_state, final_state,
                          use_qk_l2norm_in_kernel: bool, rep: int, cdt: torch.dtype):
    """The one-token step on CUDA tensors through ``run_loop`` (port-only): eager on a shape's first
    call, recorded on its second, then one graph launch plus the copies of the inputs in and of the
    output and final state out (9 launches against the eager step's 14 kernels and ~20 other torch
    ops, each a few microseconds of host time). Returns ``(o, final_state)`` as the eager path."""
    B, T, HV, V = v.shape
    K = k.shape[-1]
    R = B * T * HV                  # one token per sequence: B sequences, or T packed ones (B = 1)
    inputs = {'q': q, 'k': k, 'v': v, 'g': g, 'gk': gk, 'beta': beta,
              'h0': None if initial_state is None else initial_state.reshape(R, K, V)}
    body = functools.partial(_decode_body, scale=scale, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                             rep=rep, cdt=cdt)
    res = loop_graph.run_loop(f'fused_recurrent_decode:{scale}:{use_qk_l2norm_in_kernel}:{rep}:{cdt}', body,
                              inputs, {'o': ((R, V), cdt), 'state': ((R, K, V), cdt)}, v.device)
    o = loop_graph.owned(as_dtype(res['o'].view(B, T, HV, V), v.dtype), res['o'])
    if final_state is not None:
        final_state.copy_(res['state'].view(final_state.shape))
    return o, final_state


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
    # one "chunk" as long as the longest sequence: [N, L, ...] with zero padding
    if cu_seqlens is None:
        L = T
    else:
        L = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if N > 0 else 0
    R = N * HV
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32
    # the returned state from the CPU buffer pool: a decoding loop drops the previous step's state
    # as it stores the new one, so each step reuses a freed buffer instead of page-faulting a fresh
    # allocation (glibc unmaps freed blocks of this size; see myfla.ops.utils.workspace)
    final_state = new_empty((N, HV, K, V), torch.float32, q.device) if output_final_state else None
    # decoding: one token per sequence, in order (with cu_seqlens, B = 1 and T = N)
    decoding = L == 1 and gv is None and (cu_seqlens is None or T == N)
    if decoding and v.device.type == 'cuda' and loop_graph.ENABLED and not torch.cuda.is_current_stream_capturing():
        # the replayed step keeps its own state buffers: nothing below is needed
        return _decode_step_replayed(q, k, v, g, gk, beta, scale, initial_state, final_state,
                                     use_qk_l2norm_in_kernel, rep, cdt)
    # the state lives in the final-state buffer where their dtypes agree, else in a buffer of its own
    state_is_final = final_state is not None and cdt == torch.float32
    state = final_state.view(R, K, V) if state_is_final else new_empty((R, K, V), cdt, v.device)
    if initial_state is not None:
        state_in = initial_state.reshape(R, K, V)                       # read, never written
    else:
        state_in = state.zero_()
    if L == 0 or N == 0:
        if final_state is not None:
            final_state.copy_(state_in.view(N, HV, K, V))
        return torch.empty_like(v), final_state

    # every op of a step streams the [R, K, V] state; the preparation touches [L, R, 2, max(K, V)]
    with small_work_single_threaded(max(recurrent_state_work(R * K * V), 2 * L * R * max(K, V)), v.device,
                                    'gated delta token loop'):
        if decoding:
            o = _decode_step(q, k, v, g, gk, beta, scale, state_in, state, use_qk_l2norm_in_kernel, rep, cdt)
            o = as_dtype(o.view(B, T, HV, V), v.dtype)
            if final_state is not None and not state_is_final:
                final_state.copy_(state.view(N, HV, K, V))
            return o, final_state

        layout = get_chunk_layout(B, T, L, cu_seqlens, device=v.device) if cu_seqlens is not None else None
        # per token (a leading L axis unless L == 1): k and q side by side [R, 2, K], normalised
        # together; k as a column [R, K, 1]; k . q [R, 1]. The scale multiplies the outputs.
        kq = _time_major(layout, torch.stack((k, q), dim=-2), cdt, HV, rep, 2, K)
        if use_qk_l2norm_in_kernel:
            # in place: kq is a fresh tensor (torch.stack)
            kq.div_((kq * kq).sum(-1, keepdim=True).add_(1e-6).sqrt_())
        k_row, q_row = kq.unbind(-2)
        k_col = k_row.unsqueeze(-1)
        kdotq = (k_row * q_row).sum(-1, keepdim=True)
        v_t = _time_major(layout, v, cdt, HV, 1, V)
        beta_t = _time_major(layout, beta, cdt, HV, 1, 1 if beta.ndim != v.ndim else V)
        # state decays of every step, computed for all steps at once: row decays [R, K or 1, 1]
        decay_k = None
        if g is not None:
            decay_k = torch.exp(_time_major(layout, g, cdt, HV, 1, 1, 1))
        if gk is not None:
            decay_gk = torch.exp(_time_major(layout, gk, cdt, HV, 1, K, 1))
            decay_k = decay_gk if decay_k is None else decay_k * decay_gk
        decay_v = torch.exp(_time_major(layout, gv, cdt, HV, 1, 1, V)) if gv is not None else None

        if L == 1:
            o_t = v.new_empty(R, V, dtype=cdt)
            _recurrent_step(state_in, state, kq, k_col, kdotq, v_t, beta_t, decay_k, decay_v, o_t)
        else:
            o_t = v.new_empty(L, R, V, dtype=cdt)
            per_token = [x.unbind(0) if x is not None else (None,) * L
                         for x in (kq, k_col, kdotq, v_t, beta_t, decay_k, decay_v, o_t)]
            for t, token in enumerate(zip(*per_token)):
                _recurrent_step(state_in if t == 0 else state, state, *token)
        o_t.mul_(scale)

        if layout is not None:
            o = layout.unpack(o_t.view(L, N, HV, V).transpose(0, 1).unsqueeze(1))
        elif L == 1:
            o = o_t.view(B, 1, HV, V)
        else:
            o = o_t.view(L, B, HV, V).transpose(0, 1).contiguous()
        if o.dtype != v.dtype:
            o = o.to(v.dtype)
        if final_state is not None and not state_is_final:
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

        return standalone(o), standalone(final_state)

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

    if autograd_records(q, k, v, g, gk, gv, beta, initial_state):
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
    else:
        # nothing for autograd to record: the same forward without the Function's per-call cost
        # (a sizeable part of a one-token step); it takes any strides, as input_guard's copies do
        with autocast_off_like_kernels(q):
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
