"""Pure-torch KDA references: a token-by-token recurrence and a chunked (WY) formulation.

Both follow fla's ``naive.py`` signatures and math in fp32: per token, the state ``S`` (``[K, V]`` per
head) decays by ``exp(g_t)`` along K, then takes the delta-rule update
``S += beta_t * k_t (v_t - k_t^T S)``, and ``o_t = (scale * q_t)^T S``.
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange


def naive_recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
):
    """Token-by-token KDA; ``q, k, g`` ``[B, T, H, K]``, ``v`` ``[B, T, H, V]``, ``beta`` ``[B, T, H]``.

    Returns ``(o, S)``: ``o`` in ``v.dtype``, ``S`` the fp32 final state ``[B, H, K, V]`` or None.

    Source: fla/ops/kda/naive.py:L9-L38 (fla 0.4.0)
    """
    out_dtype = v.dtype
    B, T, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K ** -0.5
    q, k, v, g, beta = (x.to(torch.float) for x in (q, k, v, g, beta))
    q = q * scale

    state = q.new_zeros(B, H, K, V)
    if initial_state is not None:
        state = state + initial_state
    outputs = []
    for t in range(T):
        k_t = k[:, t]
        state = state * g[:, t].exp().unsqueeze(-1)
        residual = v[:, t] - torch.einsum('bhk,bhkv->bhv', k_t, state)
        state = state + torch.einsum('bhk,bhv->bhkv', beta[:, t].unsqueeze(-1) * k_t, residual)
        outputs.append(torch.einsum('bhk,bhkv->bhv', q[:, t], state))
    o = torch.stack(outputs, 1) if outputs else v.new_zeros(B, 0, H, V)
    return o.to(out_dtype), (state if output_final_state else None)


def naive_chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64
):
    """Chunked KDA in WY form (``T`` must be a multiple of ``chunk_size``), same I/O as the recurrence.

    Within a chunk, with chunk-local cumulative gates ``G``: ``L = tril(beta_i k_i.(k_j exp(G_i-G_j)), -1)``,
    ``W = (I + L)^-1 diag(beta)``, ``w = W (k exp(G))``, ``u = W v``; then per chunk
    ``v' = u - w S``, ``o = (q exp(G)) S + tril(q_i.(k_j exp(G_i-G_j))) v'`` and
    ``S <- exp(G_last) S + (k exp(G_last - G))^T v'``.

    Source: fla/ops/kda/naive.py:L41-L102 (fla 0.4.0)
    """
    out_dtype = v.dtype
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = chunk_size
    if scale is None:
        scale = K ** -0.5
    assert T % BT == 0

    def chunked(x):
        return rearrange(x, 'b (n c) h ... -> b h n c ...', c=BT).to(torch.float)

    q, k, v, g, beta = (chunked(x) for x in (q, k, v, g, beta))
    q = q * scale
    G = g.cumsum(-2)

    # pairwise decays exp(G_i - G_j) for i >= j (others masked before exp so they cannot overflow)
    lower = torch.ones(BT, BT, dtype=torch.bool, device=q.device).tril()
    diff = (G.unsqueeze(-2) - G.unsqueeze(-3)).masked_fill(~lower[..., None], float('-inf'))
    decay = diff.exp()                                               # [B, H, N, BT, BT, K]
    kk = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', k, k, decay)
    L = (beta.unsqueeze(-1) * kk).tril(-1)
    eye = torch.eye(BT, dtype=torch.float, device=q.device)
    W = torch.linalg.solve_triangular(eye + L, torch.diag_embed(beta), upper=False, unitriangular=True)
    w = W @ (G.exp() * k)
    u = W @ v
    qk = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', q, k, decay)

    state = q.new_zeros(B, H, K, V)
    if initial_state is not None:
        state = state + initial_state
    outputs = []
    for i in range(T // BT):
        q_i, k_i, G_i = q[:, :, i], k[:, :, i], G[:, :, i]
        v_i = u[:, :, i] - w[:, :, i] @ state
        outputs.append((q_i * G_i.exp()) @ state + qk[:, :, i] @ v_i)
        G_last = G_i[:, :, -1]
        state = state * G_last.exp().unsqueeze(-1) \
            + ((G_last.unsqueeze(-2) - G_i).exp() * k_i).transpose(-1, -2) @ v_i
    o = torch.stack(outputs, 2) if outputs else v.new_zeros(B, H, 0, BT, V)
    o = rearrange(o, 'b h n c d -> b (n c) h d')
    return o.to(out_dtype), (state if output_final_state else None)
