"""Inter-chunk state recurrence of gated linear attention, as ``fla.ops.common.chunk_h``.

Forward, per sequence and head, chunk by chunk (``h`` is the ``[K, V]`` state entering a chunk,
``G`` the chunk-local cumulative gates, ``last`` the chunk's last valid token):

    h <- exp(g_last) * diag(exp(gk_last)) h diag(exp(gv_last))
         + (k * exp(gk_last - gk))^T (v * exp(g_last - g) * exp(gv_last - gv))

with a scalar gate ``g`` ``[B, T, H]``, a per-head constant decay ``g_gamma`` ``[H]`` (gate
``gamma * (i + 1)`` at position ``i`` of the chunk), a key gate ``gk`` ``[B, T, H, K]`` and a value
gate ``gv`` ``[B, T, H, V]``, each optional. The backward runs the transposed recurrence
``dh <- decay * dh + (scale * q * exp(gates))^T (do * exp(gv))`` from the last chunk to the first.
The state-independent terms are computed for all chunks of all heads at once; only the carried
state loops over chunks. States are stored every ``split_size // chunk_size`` chunks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.common.chunk_delta_h import chunks_from_grid, to_grid
from myfla.ops.utils.chunk_layout import ChunkLayout, get_chunk_layout
from myfla.utils import accumulation_dtype, check_shared_mem

# Block sizes of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/common/chunk_h.py:L14-L14 (fla 0.4.0)
BKV_LIST = [32, 64] if check_shared_mem() else [16, 32]


def _round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fla casts gated operands back to the input dtype before its dots (a rounding step for
    fp16/bf16 inputs); a no-op when ``dtype`` is the accumulation dtype."""
    return x if x.dtype == dtype else x.to(dtype).to(x.dtype)


def _chunk_lengths(layout: ChunkLayout, H: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Valid tokens of every chunk on the ``[NC, N*H]`` grid."""
    lens = layout.valid_mask(device).sum(-1).to(dtype)                 # [N, NC]
    return lens.t().unsqueeze(-1).expand(-1, -1, H).reshape(lens.shape[1], -1)


def _gates(layout: ChunkLayout, H: int, K: int, V: int, g, g_gamma, gk, gv, cdt, device):
    """Gate factors on the ``[NC, N*H, ...]`` grid.

    Returns ``(decay, q_gate, k_gate, v_gate)``: ``decay`` ``[NC, NH, K|1, V|1]`` multiplies the state
    over a whole chunk (None without gates); ``q_gate`` ``[NC, NH, BT, K|1]`` is ``exp(g + gk)``
    (``exp(gamma (i+1))`` for ``g_gamma``); ``k_gate`` ``[NC, NH, BT, K]`` is ``exp(gk_last - gk)``;
    ``v_gate`` ``[NC, NH, BT, V|1]`` is ``exp(g_last - g) * exp(gv_last - gv)``; ``gv_q``
    ``[NC, NH, BT, V]`` is ``exp(gv)``. Padding repeats a chunk's last gate, so pads give factor 1
    and empty chunks no decay.
    """
    decay = q_gate = k_gate = v_gate = gv_q = None

    def mul(a, b):
        return b if a is None else a * b

    if g is not None:
        g_c = to_grid(layout, g, fill='last', dtype=cdt)                  # [NC, NH, BT]
        g_last = g_c[:, :, -1:]
        decay = mul(decay, torch.exp(g_last)[..., None])                  # [NC, NH, 1, 1]
        q_gate = mul(q_gate, torch.exp(g_c)[..., None])
        v_gate = mul(v_gate, torch.exp(g_last - g_c)[..., None])
    if g_gamma is not None:
        NC = layout.NC
        BT = layout.BT
        gamma = g_gamma.to(cdt).repeat(layout.N)                          # [NH]
        b_g = gamma[:, None] * torch.arange(1, BT + 1, dtype=cdt, device=device)   # [NH, BT]
        g_last = gamma[None, :] * _chunk_lengths(layout, H, cdt, device)  # [NC, NH]
        decay = mul(decay, torch.exp(g_last)[..., None, None])
        q_gate = mul(q_gate, torch.exp(b_g).expand(NC, -1, -1)[..., None])
        v_gate = mul(v_gate, torch.exp(g_last[..., None] - b_g)[..., None])
    if gk is not None:
        gk_c = to_grid(layout, gk, fill='last', dtype=cdt)                # [NC, NH, BT, K]
        gk_last = gk_c[:, :, -1:, :]
        decay = mul(decay, torch.exp(gk_last).transpose(-1, -2))          # [NC, NH, K, 1]
        q_gate = mul(q_gate, torch.exp(gk_c))
        k_gate = torch.exp(gk_last - gk_c)
    if gv is not None:
        gv_c = to_grid(layout, gv, fill='last', dtype=cdt)                # [NC, NH, BT, V]
        gv_last = gv_c[:, :, -1:, :]
        decay = mul(decay, torch.exp(gv_last))                            # [NC, NH, 1, V]
        v_gate = mul(v_gate, torch.exp(gv_last - gv_c))
        gv_q = torch.exp(gv_c)
    return decay, q_gate, k_gate, v_gate, gv_q


def _split_states(layout: ChunkLayout, states: torch.Tensor, B: int, T: int, BT: int, BS: int,
                  cu_seqlens, H: int, dtype: torch.dtype) -> torch.Tensor:
    """Every ``BS // BT``-th chunk state ``[NC, NH, K, V]`` -> fla's per-split layout
    ``[B, NS, H, K, V]`` (split ``s`` of a sequence starts at its chunk ``s * BS // BT``)."""
    NTS = BS // BT
    sel = states[::NTS]
    split_layout = layout if NTS == 1 else get_chunk_layout(B, T, BS, cu_seqlens, device=states.device)
    if sel.shape[0] == 0:
        return states.new_empty(B, 0, H, *states.shape[2:]).to(dtype)
    return chunks_from_grid(split_layout, sel.to(dtype), H)


def chunk_fwd_h(
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    gk: Optional[torch.Tensor] = None,
    gv: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    split_size: Optional[int] = None,
    states_in_fp32: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """States at the start of every split, ``h`` ``[B, NS, H, K, V]`` (``k.dtype``, fp32 with
    ``states_in_fp32``), and the fp32 final state ``[N, H, K, V]`` (None unless
    ``output_final_state``). The gates are chunk-local cumulative log gates (``g_gamma`` a per-head
    constant). Accumulation is fp32 (fp64 for fp64 inputs, whose states then stay fp64).

    Source: fla/ops/common/chunk_h.py:L271-L322 (fla 0.4.0)
    Source: fla/ops/common/chunk_h.py:L17-L157 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    BT = chunk_size
    BS = BT if split_size is None else split_size
    assert BS % BT == 0, f"The `split_size` (got {BS}) must be a multiple of `chunk_size` {BT}"
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    N, NC = layout.N, layout.NC
    cdt = accumulation_dtype(k, v)
    state_dtype = torch.promote_types(torch.float, cdt) if states_in_fp32 else k.dtype

    decay, _, k_gate, v_gate, _ = _gates(layout, H, K, V, g, g_gamma, gk, gv, cdt, k.device)
    k_c = to_grid(layout, k, dtype=cdt)
    if k_gate is not None:
        k_c = _round_to(k_c * k_gate, k.dtype)
    v_c = to_grid(layout, v, dtype=cdt)
    if v_gate is not None:
        v_c = _round_to(v_c * v_gate, v.dtype)
    # every chunk's own contribution k^T v, for all chunks at once
    kv = torch.matmul(k_c.transpose(-1, -2), v_c)                         # [NC, NH, K, V]

    states = k_c.new_empty(NC + 1, N * H, K, V)
    with torch.no_grad():
        if h0 is not None:
            states[0].copy_(h0.reshape(N * H, K, V))
        else:
            states[0].zero_()
        s_out = states.unbind(0)
        for c in range(NC):
            nxt = s_out[c + 1]
            if decay is not None:
                torch.mul(s_out[c], decay[c], out=nxt)
                nxt.add_(kv[c])
            else:
                torch.add(s_out[c], kv[c], out=nxt)

    h = _split_states(layout, states[:NC], B, T, BT, BS, cu_seqlens, H, state_dtype)
    ht = states[NC].reshape(N, H, K, V).to(torch.promote_types(torch.float, cdt)) if output_final_state else None
    return h, ht


def chunk_bwd_dh(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    h0: torch.Tensor,
    dht: torch.Tensor,
    scale: float,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    gk: Optional[torch.Tensor] = None,
    gv: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    split_size: Optional[int] = None,
    states_in_fp32: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the states: ``dh`` ``[B, NS, HQ, K, V]`` holds, for every split, the gradient of
    the state at the end of its first chunk (``k.dtype``, fp32 with ``states_in_fp32``), and ``dh0``
    (fp32, None without ``h0``) that of the initial state. ``q``/``do`` may have ``HQ`` heads, a
    multiple of the ``H`` heads of ``k`` and the gates (grouped queries share their group's gates).

    Source: fla/ops/common/chunk_h.py:L325-L386 (fla 0.4.0)
    Source: fla/ops/common/chunk_h.py:L144-L268 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    HQ = q.shape[2]
    BT = chunk_size
    BS = BT if split_size is None else split_size
    assert BS % BT == 0, f"The `split_size` (got {BS}) must be a multiple of `chunk_size` {BT}"
    NG = HQ // H
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=q.device)
    N, NC = layout.N, layout.NC
    cdt = accumulation_dtype(q, do)
    state_dtype = torch.promote_types(torch.float, cdt) if states_in_fp32 else k.dtype

    decay, q_gate, _, _, gv_q = _gates(layout, H, K, V, g, g_gamma, gk, gv, cdt, q.device)

    def per_query_head(x):
        """Gate tensors of the H key heads, repeated for the NG query heads of each group."""
        if x is None or NG == 1:
            return x
        x = x.view(x.shape[0], N, H, *x.shape[2:])
        return x.repeat_interleave(NG, dim=2).flatten(1, 2)

    decay, q_gate, gv_q = per_query_head(decay), per_query_head(q_gate), per_query_head(gv_q)
    q_c = _round_to(to_grid(layout, q, dtype=cdt) * scale, q.dtype)
    if q_gate is not None:
        q_c = _round_to(q_c * q_gate, q.dtype)
    do_c = to_grid(layout, do, dtype=cdt)
    if gv_q is not None:
        do_c = do_c * gv_q
    # every chunk's own contribution q^T do, for all chunks at once
    qdo = torch.matmul(q_c.transpose(-1, -2), _round_to(do_c, q.dtype))   # [NC, NHQ, K, V]

    dhs = qdo.new_empty(NC + 1, N * HQ, K, V)
    with torch.no_grad():
        if dht is not None:
            dhs[NC].copy_(dht.reshape(N * HQ, K, V))
        else:
            dhs[NC].zero_()
        d_out = dhs.unbind(0)
        for c in range(NC - 1, -1, -1):
            nxt = d_out[c]
            if decay is not None:
                torch.mul(d_out[c + 1], decay[c], out=nxt)
                nxt.add_(qdo[c])
            else:
                torch.add(d_out[c + 1], qdo[c], out=nxt)

    dh = _split_states(layout, dhs[1:], B, T, BT, BS, cu_seqlens, HQ, state_dtype)
    dh0 = dhs[0].reshape(N, HQ, K, V).to(torch.promote_types(torch.float, cdt)) if h0 is not None else None
    return dh, dh0
