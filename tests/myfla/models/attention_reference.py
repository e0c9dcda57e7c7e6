"""flash-attn's ``flash_attn_func`` / ``flash_attn_varlen_func`` as an explicit softmax, written from
flash-attn's documented semantics (pure torch, no other import): the oracle for myfla's torch
attention and the stand-in for the flash-attn package wherever fla's own ``Attention`` has to run
without it (the fla-model oracle on CPU; the golden recording on a GPU machine without flash-attn).

- scores ``q k^T * softmax_scale`` (default ``D ** -0.5``), softmax over visible keys, times ``v``;
- GQA: query head ``h`` reads key/value head ``h // (Hq // Hk)``;
- ``causal`` aligns the mask bottom-right: query ``i`` sees keys ``j <= i + Tk - Tq``;
- ``window_size=(left, right)``: ``i + Tk - Tq - left <= j <= i + Tk - Tq + right`` (-1 = unlimited);
- a query that sees no key gives zeros.
"""

import torch


def ref_attention(q, k, v, causal=False, window_size=(-1, -1), softmax_scale=None):
    """One sequence: q ``[Tq, Hq, D]``, k/v ``[Tk, Hk, D]`` -> ``[Tq, Hq, D]`` (a token loop-free
    explicit softmax in fp32, fp64 for fp64 inputs)."""
    Tq, Hq, D = q.shape
    Tk, Hk = k.shape[0], k.shape[1]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = k.repeat_interleave(Hq // Hk, dim=1).to(ct)
    v = v.repeat_interleave(Hq // Hk, dim=1).to(ct)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum('qhd,khd->hqk', q.to(ct), k) * scale
    i = torch.arange(Tq, device=q.device).view(-1, 1) + (Tk - Tq)
    j = torch.arange(Tk, device=q.device).view(1, -1)
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= j <= i
    left, right = window_size
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    s = s.masked_fill(~allowed, float('-inf'))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum('hqk,khd->qhd', p, v).to(q.dtype)


def ref_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        **kwargs):
    """``[B, Tq, Hq, D]``, ``[B, Tk, Hk, D]`` -> ``[B, Tq, Hq, D]``."""
    return torch.stack([ref_attention(q[b], k[b], v[b], causal, window_size, softmax_scale)
                        for b in range(q.shape[0])])


def ref_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), **kwargs):
    """Packed ``[total_q, Hq, D]`` / ``[total_k, Hk, D]`` with ``cu_seqlens`` -> ``[total_q, Hq, D]``."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return torch.cat([
        ref_attention(q[cq[n]:cq[n + 1]], k[ck[n]:ck[n + 1]], v[ck[n]:ck[n + 1]], causal, window_size,
                      softmax_scale)
        for n in range(len(cq) - 1)
    ])
