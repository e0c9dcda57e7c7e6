"""Chunk outputs and their local gradients, as ``fla.ops.common.chunk_o``.

Within a chunk, with ``h`` the state entering it and ``G_ij = exp(g_i - g_j)`` the gate ratio:

    o = scale * (exp(g) * (q @ h) + tril(q @ k^T * G) @ v)

The backward pieces (``chunk_bwd_dv``, ``chunk_bwd_dv_local``, ``chunk_bwd_dqkwg``) differentiate the intra-chunk and
the state-readout parts; the state recurrence itself is in ``chunk_delta_h``. All chunks of all
heads are handled by single batched matmuls on the chunk grid.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.common.chunk_delta_h import chunks_to_grid, from_grid, gate_ratio, memo, to_grid
from myfla.ops.utils.chunk_layout import ChunkLayout, get_chunk_layout
from myfla.ops.utils.workspace import out_buffer
from myfla.utils import accumulation_dtype, check_shared_mem, is_nvidia_hopper

# Block sizes of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/common/chunk_o.py:L14-L14 (fla 0.4.0)
BKV_LIST = [64, 128] if check_shared_mem() else [32, 64]
# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/common/chunk_o.py:L15-L15 (fla 0.4.0)
NUM_WARPS = [2, 4] if is_nvidia_hopper else [2, 4, 8]


def _valid_grid(layout: ChunkLayout, H: int, device) -> torch.Tensor:
    """``[NC, N*H, BT]`` bool: which chunk-grid slots hold real tokens."""
    valid = layout.valid_mask(device=device)                            # [N, NC, BT]
    N, NC, BT = valid.shape
    return valid.transpose(0, 1).unsqueeze(2).expand(NC, N, H, BT).reshape(NC, N * H, BT)


def _gamma_gates(layout: ChunkLayout, g_gamma: torch.Tensor, H: int, dtype, device):
    """Constant per-head decay ``g_gamma`` [H] as chunk-local cumulative gates: ``gamma * (i + 1)``
    for every slot, and ``gamma * (valid tokens of the chunk)`` for the chunk's last gate."""
    BT = layout.BT
    gamma = g_gamma.to(dtype).repeat(layout.N)                          # [N*H]
    g_c = gamma.view(1, -1, 1) * torch.arange(1, BT + 1, dtype=dtype, device=device).view(1, 1, BT)
    n_valid = _valid_grid(layout, H, device).sum(-1).to(dtype)          # [NC, N*H]
    g_last = gamma.view(1, -1) * n_valid
    return g_c.expand(layout.NC, -1, -1), g_last


def chunk_fwd_o(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> torch.Tensor:
    """Output ``o`` ``[B, T, H, V]`` (``v.dtype``) from chunk-start states ``h`` ``[B, NT, H, K, V]``.

    Source: fla/ops/common/chunk_o.py:L490-L527 (fla 0.4.0)
    Source: fla/ops/common/chunk_o.py:L18-L120 (fla 0.4.0)
    """
    B, T, H, K, V = *q.shape, v.shape[-1]
    BT = chunk_size
    if scale is None:
        scale = k.shape[-1] ** -0.5
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=q.device)
    if layout.NC == 0:
        return torch.empty_like(v)
    cdt = accumulation_dtype(q, k, v, h)
    q_c = to_grid(layout, q, dtype=cdt)
    k_c = to_grid(layout, k, dtype=cdt)
    v_c = to_grid(layout, v, dtype=cdt)
    h_c = chunks_to_grid(layout, h, dtype=cdt)

    A = torch.matmul(q_c, k_c.transpose(-1, -2))                        # [NC, NH, BT, BT]
    G = _gates(layout, g, g_gamma, H, cdt, q.device)
    if G is not None:
        g_c, G = G
        o_c = torch.matmul(q_c * (torch.exp(g_c) * scale).unsqueeze(-1), h_c)
        A.mul_(G)
    else:
        o_c = torch.matmul(q_c, h_c).mul_(scale)
    A.tril_()                                                           # causal mask
    if v.dtype != cdt:
        A = A.to(v.dtype).to(cdt)
    o_c.flatten(0, 1).baddbmm_(A.flatten(0, 1), v_c.flatten(0, 1), alpha=scale)
    return from_grid(layout, o_c, H, v.dtype)


def _qk(layout: ChunkLayout, q: torch.Tensor, k: torch.Tensor, dtype) -> torch.Tensor:
    """``q @ k^T`` per chunk, ``[NC, N*H, BT, BT]``; computed once per backward pass (``dv_local`` and
    ``dqkwg`` both need it). Never modified in place."""
    def build():
        return torch.matmul(to_grid(layout, q, dtype=dtype), to_grid(layout, k, dtype=dtype).transpose(-1, -2))
    return memo(('qk', id(layout), dtype), (q, k, layout), build)


def _gates(layout: ChunkLayout, g, g_gamma, H: int, dtype, device):
    """``(g_c, G)``: the cumulative gate on the grid and the ratio matrix ``exp(g_i - g_j)``; None
    without gates."""
    if g is not None:
        return to_grid(layout, g, fill='last', dtype=dtype), gate_ratio(layout, g, dtype)
    if g_gamma is not None:
        g_c, _ = _gamma_gates(layout, g_gamma, H, dtype, device)
        return g_c, torch.exp(g_c.unsqueeze(-1) - g_c.unsqueeze(-2))
    return None


def chunk_bwd_dv(
    q: torch.Tensor,
    k: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> torch.Tensor:
    """Full ``dv`` of ``o = scale * (exp(g) q h + tril(q k^T G) v)`` with the state recurrence of
    ``chunk_fwd_h``: ``dv = scale * triu(k q^T G^T) do + exp(g_last - g) * (k dh)`` per chunk, with
    ``dh`` ``[B, NT, H, K, V]`` the gradient of the state at the end of every chunk; ``do.dtype``.

    Source: fla/ops/common/chunk_o.py:L530-L579 (fla 0.4.0)
    Source: fla/ops/common/chunk_o.py:L305-L397 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, do.shape[-1]
    BT = chunk_size
    if scale is None:
        scale = k.shape[-1] ** -0.5
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    if layout.NC == 0:
        return torch.empty_like(do)
    cdt = accumulation_dtype(q, k, do, dh)
    k_c = to_grid(layout, k, dtype=cdt)
    dh_c = chunks_to_grid(layout, dh, dtype=cdt)
    if k.dtype != cdt:
        # the kernel's dot takes dh in k's dtype
        dh_c = dh_c.to(k.dtype).to(cdt)
    dv_c = torch.matmul(k_c, dh_c)                                      # [NC, NH, BT, V]
    PT = _qk(layout, q, k, cdt).transpose(-1, -2)                       # k_i . q_j
    gates = _gates(layout, g, g_gamma, H, cdt, k.device)
    if gates is not None:
        g_c, G = gates
        if g is not None:
            g_last = g_c[:, :, -1]
        else:
            _, g_last = _gamma_gates(layout, g_gamma, H, cdt, k.device)
        valid = _valid_grid(layout, H, k.device)
        dv_c.mul_(torch.where(valid, torch.exp(g_last.unsqueeze(-1) - g_c), 0).unsqueeze(-1))
        PT = PT * G.transpose(-1, -2)                                   # exp(g_j - g_i), bounded for j >= i
    else:
        PT = PT.clone()
    PT.triu_().mul_(scale)
    if do.dtype != cdt:
        PT = PT.to(do.dtype).to(cdt)
    do_c = to_grid(layout, do, dtype=cdt)
    dv_c.flatten(0, 1).baddbmm_(PT.flatten(0, 1), do_c.flatten(0, 1))
    return from_grid(layout, dv_c, H, do.dtype)


def chunk_bwd_dv_local(
    q: torch.Tensor,
    k: torch.Tensor,
    do: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    A: Optional[torch.Tensor] = None,
    scale: float = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> torch.Tensor:
    """Intra-chunk part of ``dv``: ``tril(P)^T @ do`` per chunk, where ``P`` is the given attention
    matrix ``A`` ``[B, T, H, BT]`` (KDA passes its ``Aqk``) or else ``scale * q @ k^T * G``.

    Source: fla/ops/common/chunk_o.py:L582-L628 (fla 0.4.0)
    Source: fla/ops/common/chunk_o.py:L400-L487 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, do.shape[-1]
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    if layout.NC == 0:
        return torch.empty_like(do)
    cdt = accumulation_dtype(q, k, do, A)
    # P^T keeps its upper triangle (tril_/triu_ are several times faster than a broadcast mask)
    if A is not None:
        PT = to_grid(layout, A, dtype=cdt).transpose(-1, -2).triu()
        alpha = 1.0
    else:
        PT = _qk(layout, q, k, cdt).transpose(-1, -2)                   # (q k^T)^T
        G = _gates(layout, g, g_gamma, H, cdt, k.device)
        PT = PT * G[1].transpose(-1, -2) if G is not None else PT.clone()
        PT.triu_()
        alpha = scale
    if do.dtype != cdt:
        PT = (PT * alpha).to(do.dtype).to(cdt)
        alpha = 1.0
    do_c = to_grid(layout, do, dtype=cdt)
    dv_c = torch.matmul(PT, do_c, out=out_buffer(do_c.shape, cdt, do_c.device))
    if alpha != 1.0:
        dv_c.mul_(alpha)
    return from_grid(layout, dv_c, H, do.dtype)


def chunk_bwd_dqkwg(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    h: torch.Tensor,
    dh: torch.Tensor,
    w: Optional[torch.Tensor] = None,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    dv: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``q``, ``k``, ``w`` (the delta rule's ``w``: ``-dv @ h^T``) and of the
    chunk-local cumulative gate ``g`` (fp32, before the reverse cumsum), given ``v`` (the new values),
    chunk-start states ``h`` and the state gradients ``dh`` of ``chunk_gated_delta_rule_bwd_dhu``.

    Returns ``(dq, dk, dw, dg)``; ``dw`` is None without ``w`` and ``dg`` None without ``g``.

    Source: fla/ops/common/chunk_o.py:L631-L691 (fla 0.4.0)
    Source: fla/ops/common/chunk_o.py:L123-L302 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    if layout.NC == 0:
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(w) if w is not None else None,
                torch.empty(*g.shape, dtype=accumulation_dtype(q, k, g), device=g.device) if g is not None else None)
    cdt = accumulation_dtype(q, k, v, do, h, dh)
    q_c = to_grid(layout, q, dtype=cdt)
    k_c = to_grid(layout, k, dtype=cdt)
    v_c = to_grid(layout, v, dtype=cdt)
    do_c = to_grid(layout, do, dtype=cdt)
    h_c = chunks_to_grid(layout, h, dtype=cdt)                          # [NC, NH, K, V]
    dh_c = chunks_to_grid(layout, dh, dtype=cdt)
    hT = h_c.transpose(-1, -2)

    ds = torch.matmul(do_c, v_c.transpose(-1, -2))                      # [NC, NH, BT, BT]
    dq = torch.matmul(do_c, hT)                                         # [NC, NH, BT, K]
    dk = torch.matmul(v_c, dh_c.transpose(-1, -2))
    dw = None
    if w is not None:
        dw = torch.matmul(to_grid(layout, dv, dtype=cdt), hT).neg_()
    valid = _valid_grid(layout, H, k.device)                            # [NC, NH, BT]

    def flat(x):
        return x.flatten(0, 1)

    dg = None
    gates = _gates(layout, g, g_gamma, H, cdt, k.device)
    if gates is not None:
        g_c, G = gates
        if g is not None:
            g_last = g_c[:, :, -1]
        else:
            _, g_last = _gamma_gates(layout, g_gamma, H, cdt, k.device)
        dq.mul_((torch.exp(g_c) * scale).unsqueeze(-1))
        dk.mul_(torch.where(valid, torch.exp(g_last.unsqueeze(-1) - g_c), 0).unsqueeze(-1))
        ds.mul_(G).tril_().mul_(scale)
        if g is not None:
            NCH = h_c.shape[0] * h_c.shape[1]
            # sum(h * dh) per chunk as one batched dot product
            hdh = torch.bmm(h_c.reshape(NCH, 1, K * V), dh_c.reshape(NCH, K * V, 1)).view(g_last.shape)
            kdk = torch.linalg.vecdot(k_c, dk)                          # [NC, NH, BT]
            dg_last = hdh * torch.exp(g_last) + kdk.sum(-1)
            ds2 = _qk(layout, q, k, cdt) * ds
            dg_c = torch.linalg.vecdot(dq, q_c) - kdk + ds2.sum(-1) - ds2.sum(-2)
            # the chunk's last real token also carries the gradient through the state decay exp(g_last)
            is_last = valid & ~torch.cat([valid[..., 1:], torch.zeros_like(valid[..., :1])], -1)
            dg_c = dg_c + is_last * dg_last.unsqueeze(-1)
            dg = from_grid(layout, dg_c, H, cdt)          # fp32 (fp64 for fp64 inputs)
        flat(dq).baddbmm_(flat(ds), flat(k_c))
        flat(dk).baddbmm_(flat(ds).transpose(-1, -2), flat(q_c))
    else:
        ds.tril_()
        flat(dq).baddbmm_(flat(ds), flat(k_c)).mul_(scale)
        flat(dk).baddbmm_(flat(ds).transpose(-1, -2), flat(q_c), alpha=scale)

    dq = from_grid(layout, dq, H, q.dtype)
    dk = from_grid(layout, dk, H, k.dtype)
    if dw is not None:
        dw = from_grid(layout, dw, H, w.dtype)
    return dq, dk, dw, dg
