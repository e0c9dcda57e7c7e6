"""The two functions of the ``flash-attn`` package that fla's ``Attention`` layer calls, in torch.

fla 0.4.0's :class:`~fla.layers.attn.Attention` imports ``flash_attn_func`` and
``flash_attn_varlen_func`` from the CUDA-only ``flash-attn`` package and refuses to build without
it. myfla gives the same semantics with torch (port-only module; a manifest deviation of
``fla.layers.attn``):

- softmax attention ``softmax(q k^T * softmax_scale) v`` with ``softmax_scale = D ** -0.5`` unless
  given, accumulated in fp32 (fp64 for fp64 inputs) and returned in ``q``'s dtype;
- grouped-query attention: query head ``h`` reads key/value head ``h // (Hq // Hk)``;
- ``causal=True`` aligns the causal mask to the bottom-right corner when the query is shorter than
  the keys (query ``i`` sees keys ``j <= i + Tk - Tq``), as flash-attn >= 2.1 does, so a decoding
  step sees the whole cache;
- ``window_size=(left, right)`` further limits query ``i`` to keys ``i + Tk - Tq - left <= j <=
  i + Tk - Tq + right`` (``-1`` means unlimited);
- a query row that sees no key returns zeros (flash-attn's convention);
- the varlen form takes packed ``[total, H, D]`` tensors and ``cu_seqlens`` for queries and keys
  and applies all of the above within each sequence.

``torch.nn.functional.scaled_dot_product_attention`` (torch >= 2.1) computes it where available;
an explicit softmax computes the same numbers on older torch (``myfla._torch_compat``; it is also
what ``use_sdpa=False`` selects, e.g. to compare the two).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla._torch_compat import scaled_dot_product_attention, softmax_attention
from myfla.utils import accumulation_dtype


def _visibility(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    shift: torch.Tensor,
    causal: bool,
    window_size: Tuple[int, int],
) -> torch.Tensor:
    """Which key positions each query position sees; ``shift`` = key length - query length
    (broadcast against ``q_pos``), the bottom-right alignment of flash-attn's masks."""
    i = q_pos.unsqueeze(-1) + shift.unsqueeze(-1)
    j = k_pos.unsqueeze(-2)
    visible = torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=q_pos.device)
    left, right = window_size
    if causal:
        visible = visible & (j <= i)
    if left >= 0:
        visible = visible & (j >= i - left)
    if right >= 0:
        visible = visible & (j <= i + right)
    return visible


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    visible: Optional[torch.Tensor],
    softmax_scale: float,
    dropout_p: float,
    use_sdpa: bool,
) -> torch.Tensor:
    """q ``[N, H, Tq, D]``, k/v ``[N, H, Tk, D]`` (heads already matched), ``visible``
    ``[N or 1, Tq, Tk]`` or None; rows without a visible key give zeros."""
    acc = accumulation_dtype(q, k, v)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    empty_rows = None
    if visible is not None:
        empty_rows = ~visible.any(-1)
        if bool(empty_rows.any()):
            # let such rows see everything, then zero them: softmax over no key has no value
            visible = visible | empty_rows.unsqueeze(-1)
        else:
            empty_rows = None
        visible = visible.unsqueeze(1)
    attend = scaled_dot_product_attention if use_sdpa else softmax_attention
    o = attend(q, k, v, attn_mask=visible, dropout_p=dropout_p, scale=softmax_scale)
    if empty_rows is not None:
        o = o.masked_fill(empty_rows.unsqueeze(1).unsqueeze(-1), 0.0)
    return o


def _match_heads(k: torch.Tensor, Hq: int) -> torch.Tensor:
    Hk = k.shape[-2]
    if Hq % Hk != 0:
        raise ValueError(f"Number of heads in key/value ({Hk}) must divide the number of heads in query ({Hq})")
    return k if Hk == Hq else k.repeat_interleave(Hq // Hk, dim=-2)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    use_sdpa: bool = True,
) -> torch.Tensor:
    """flash-attn's ``flash_attn_func``: q ``[B, Tq, Hq, D]``, k/v ``[B, Tk, Hk, D]`` -> ``[B, Tq, Hq, D]``.

    myfla.layers.attn binds it where fla's attn.py binds flash-attn's (or None).
    """
    B, Tq, Hq, D = q.shape
    Tk = k.shape[1]
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    k, v = _match_heads(k, Hq), _match_heads(v, Hq)
    visible = None
    if causal or window_size[0] >= 0 or window_size[1] >= 0:
        q_pos = torch.arange(Tq, device=q.device)
        k_pos = torch.arange(Tk, device=q.device)
        visible = _visibility(q_pos, k_pos, torch.tensor(Tk - Tq, device=q.device), causal, window_size)[None]
    o = _attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), visible, scale, dropout_p, use_sdpa)
    return o.transpose(1, 2).to(q.dtype)


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    use_sdpa: bool = True,
) -> torch.Tensor:
    """flash-attn's ``flash_attn_varlen_func``: packed q ``[total_q, Hq, D]``, k/v ``[total_k, Hk, D]``
    with ``cu_seqlens_q`` / ``cu_seqlens_k`` ``[N + 1]`` -> ``[total_q, Hq, D]``.

    The sequences are laid out as one padded batch ``[N, max_seqlen, H, D]`` and attended at once,
    padding keys hidden by the mask.
    """
    Hq, D = q.shape[-2], q.shape[-1]
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    k, v = _match_heads(k, Hq), _match_heads(v, Hq)
    device = q.device
    cu_q, cu_k = cu_seqlens_q.to(device=device, dtype=torch.long), cu_seqlens_k.to(device=device, dtype=torch.long)
    lens_q, lens_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    N = lens_q.shape[0]
    Tq = int(max(int(lens_q.max()) if N else 0, 0))
    Tk = int(max(int(lens_k.max()) if N else 0, 0))

    def scatter_index(cu, lens, T):
        seq = torch.repeat_interleave(torch.arange(N, device=device), lens)
        pos = torch.arange(int(cu[-1]), device=device) - cu[:-1][seq]
        return seq, pos, seq * T + pos

    seq_q, pos_q, flat_q = scatter_index(cu_q, lens_q, Tq)
    _, _, flat_k = scatter_index(cu_k, lens_k, Tk)
    qp = q.new_zeros(N * Tq, Hq, D).index_copy(0, flat_q, q).view(N, Tq, Hq, D)
    kp = k.new_zeros(N * Tk, Hq, D).index_copy(0, flat_k, k).view(N, Tk, Hq, D)
    vp = v.new_zeros(N * Tk, Hq, v.shape[-1]).index_copy(0, flat_k, v).view(N, Tk, Hq, v.shape[-1])

    q_pos = torch.arange(Tq, device=device).expand(N, Tq)
    k_pos = torch.arange(Tk, device=device).expand(N, Tk)
    visible = _visibility(q_pos, k_pos, (lens_k - lens_q).view(N, 1), causal, window_size)
    visible = visible & (k_pos < lens_k.view(N, 1)).unsqueeze(1)
    o = _attend(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), visible, scale, dropout_p, use_sdpa)
    o = o.transpose(1, 2).reshape(N * Tq, Hq, -1)
    return o.index_select(0, flat_q).to(q.dtype)
