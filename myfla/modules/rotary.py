"""Rotary position embeddings (RoPE, and XPos when ``scale_base`` is set), as fla's Attention uses them.

fla's Triton kernel rotates each token with the cos/sin table row of its position ``t + offset``
(``offset`` an int or one per sequence; with ``cu_seqlens`` the position restarts at every
sequence start). Here the rows are gathered for all tokens at once and the rotation is one batched
expression, accumulated in fp32 like the kernel. The backward pass is the same rotation with the
sine negated (the conjugate), as in fla.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from einops import rearrange, repeat

from myfla.utils import input_guard, is_amd

# Triton launch options of fla's kernel (kept for API parity; nothing is autotuned here).
# Source: fla/modules/rotary.py:L15-L15 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def rotate_half(x, interleaved=False):
    """``(-x2, x1)`` for the two halves of the last dim (GPT-NeoX), or for each even/odd pair (GPT-J).

    Source: fla/modules/rotary.py:L18-L24 (fla 0.4.0)
    """
    if not interleaved:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return rearrange(torch.stack((-x2, x1), dim=-1), '... d two -> ... (d two)', two=2)


def rotary_embedding_ref(x, cos, sin, interleaved=False):
    """fla's pure-torch reference: rotate the first ``2 * cos.shape[-1]`` channels of ``x``
    ``[..., T, H, D]`` with ``cos``/``sin`` ``[..., T, R/2]``; the other channels pass through.

    Source: fla/modules/rotary.py:L27-L32 (fla 0.4.0)
    """
    ro_dim = cos.shape[-1] * 2
    assert ro_dim <= x.shape[-1]
    pattern = '... d -> ... 1 (2 d)' if not interleaved else '... d -> ... 1 (d 2)'
    cos, sin = repeat(cos, pattern), repeat(sin, pattern)
    rotated = x[..., :ro_dim] * cos + rotate_half(x[..., :ro_dim], interleaved) * sin
    return torch.cat([rotated, x[..., ro_dim:]], -1)


def _token_positions(
    B: int,
    T: int,
    seqlen_offsets: Union[int, torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """Each token's row of the cos/sin table, ``[B, T]``: its index within its sequence plus the
    sequence's offset."""
    t = torch.arange(T, device=device)
    if cu_seqlens is None:
        pos = t.view(1, T).expand(B, T)
        seq = torch.arange(B, device=device).view(B, 1).expand(B, T)
    else:
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        seq = torch.bucketize(t, cu[1:], right=True).view(1, T)
        pos = (t - cu[:-1][seq.view(T)]).view(1, T)
    if isinstance(seqlen_offsets, torch.Tensor):
        return pos + seqlen_offsets.to(device=device, dtype=torch.long)[seq]
    return pos + seqlen_offsets


def rotary_embedding_fwdbwd(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    seqlen_offsets: Union[int, torch.Tensor] = 0,
    cu_seqlens: Optional[torch.Tensor] = None,
    interleaved: bool = False,
    inplace: bool = False,
    conjugate: bool = False
) -> torch.Tensor:
    """Rotate ``x`` ``[B, T, H, D]`` by the table rows ``cos``/``sin`` ``[TR, R/2]`` of each token's
    position (``conjugate`` negates the sine: the backward pass).

    A token whose position falls outside ``[0, TR)`` (left padding, with a negative per-sequence
    offset) is not rotated: fla's kernel skips its store, leaving ``x`` (in place) or unwritten
    memory; here its channels pass through unchanged in both cases.

    Source: fla/modules/rotary.py:L138-L209 (fla 0.4.0)
    Source: fla/modules/rotary.py:L35-L135 (fla 0.4.0)
    """
    is_varlen = cu_seqlens is not None

    B, T, H, D = x.shape
    N = B if not is_varlen else cu_seqlens.shape[0] - 1
    TR, R = cos.shape
    R2 = R * 2

    assert D <= 256, "Only support D <= 256"
    assert TR >= T, f"TR must be >= T, got {TR} and {T}"

    assert cos.dtype == sin.dtype, f"cos and sin must have the same dtype, got {cos.dtype} and {sin.dtype}"
    assert x.dtype == cos.dtype, f"Input and cos/sin must have the same dtype, got {x.dtype} and {cos.dtype}"

    if isinstance(seqlen_offsets, torch.Tensor):
        assert seqlen_offsets.shape == (N,)
        assert seqlen_offsets.dtype in [torch.int32, torch.int64]
    else:
        assert seqlen_offsets + T <= TR

    pos = _token_positions(B, T, seqlen_offsets, cu_seqlens, x.device)      # [B, T]
    inside = ((pos >= 0) & (pos < TR)).view(B, T, 1, 1)
    rows = pos.clamp(0, TR - 1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    b_cos, b_sin = cos[rows].to(acc), sin[rows].to(acc)                      # [B, T, R]
    if conjugate:
        b_sin = -b_sin
    b_x = x[..., :R2].to(acc)
    rotated = rotary_embedding_ref(b_x, b_cos, b_sin, interleaved)
    rotated = torch.where(inside, rotated, b_x).to(x.dtype)

    y = x if inplace else torch.empty_like(x)
    y[..., :R2] = rotated
    if R2 < D and not inplace:
        y[..., R2:].copy_(x[..., R2:])
    return y


class RotaryEmbeddingFunction(torch.autograd.Function):
    """Rotation forward; the conjugate rotation of the output gradient backward.

    Source: fla/modules/rotary.py:L212-L268 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x,
        cos,
        sin,
        interleaved=False,
        inplace=False,
        seqlen_offsets: Union[int, torch.Tensor] = 0,
        cu_seqlens: Optional[torch.Tensor] = None,
    ):
        y = rotary_embedding_fwdbwd(
            x,
            cos,
            sin,
            seqlen_offsets=seqlen_offsets,
            cu_seqlens=cu_seqlens,
            interleaved=interleaved,
            inplace=inplace,
        )
        if isinstance(seqlen_offsets, int):
            ctx.save_for_backward(cos, sin, cu_seqlens)
            ctx.seqlen_offsets = seqlen_offsets
        else:
            ctx.save_for_backward(cos, sin, cu_seqlens, seqlen_offsets)
            ctx.seqlen_offsets = None
        ctx.interleaved = interleaved
        ctx.inplace = inplace
        if inplace:
            ctx.mark_dirty(x)  # torch must know x was rotated in place (Triton's writes bypass autograd)
        return y if not inplace else x

    @staticmethod
    @input_guard
    def backward(ctx, do):
        seqlen_offsets = ctx.seqlen_offsets
        if seqlen_offsets is None:
            cos, sin, cu_seqlens, seqlen_offsets = ctx.saved_tensors
        else:
            cos, sin, cu_seqlens = ctx.saved_tensors
        if not ctx.interleaved and not ctx.inplace:
            do = do.clone()
        dx = rotary_embedding_fwdbwd(
            do,
            cos,
            sin,
            seqlen_offsets=seqlen_offsets,
            cu_seqlens=cu_seqlens,
            interleaved=ctx.interleaved,
            inplace=ctx.inplace,
            conjugate=True,
        )
        return dx, None, None, None, None, None, None, None


def rotary_embedding(
    x,
    cos,
    sin,
    interleaved=False,
    inplace=False,
    seqlen_offsets: Union[int, torch.Tensor] = 0,
    cu_seqlens: Optional[torch.Tensor] = None
):
    """Apply the rotary embedding to ``x`` ``[B, T, H, D]`` with tables ``cos``/``sin`` ``[TR, R/2]``.

    ``interleaved`` rotates even/odd pairs (GPT-J) instead of the two halves (GPT-NeoX);
    ``seqlen_offsets`` (int or ``[N]``) shifts each sequence's positions (decoding with a cache);
    ``cu_seqlens`` ``[N + 1]`` marks packed sequences.

    Source: fla/modules/rotary.py:L271-L304 (fla 0.4.0)
    """
    return RotaryEmbeddingFunction.apply(
        x,
        cos,
        sin,
        interleaved,
        inplace,
        seqlen_offsets,
        cu_seqlens
    )


class RotaryEmbedding(nn.Module):
    """Rotary position embeddings (RoFormer, Su et al.); with ``scale_base`` set, XPos (Sun et al.,
    https://arxiv.org/abs/2212.10554), whose keys use the inverse scale.

    ``interleaved`` rotates even/odd pairs (GPT-J) instead of the two halves (GPT-NeoX).
    ``pos_idx_in_fp32`` builds the position indices in fp32 even when ``inv_freq`` is in lower
    precision (bf16 cannot tell 1995 from 2000).

    Source: fla/modules/rotary.py:L307-L501 (fla 0.4.0)
    """

    def __init__(
        self,
        dim: int,
        base: float = 10000.0,
        scale_base: Optional[float] = None,
        interleaved: bool = False,
        pos_idx_in_fp32: bool = True,
        device: Optional[torch.device] = None,
    ):
        super().__init__()

        self.dim = dim
        self.base = float(base)
        self.scale_base = scale_base
        self.interleaved = interleaved
        self.pos_idx_in_fp32 = pos_idx_in_fp32
        self.device = device

        # the inverse frequencies (a non-persistent buffer: not in the state_dict)
        self.register_buffer("inv_freq", torch.empty(-(dim // -2), dtype=torch.float32, device=device), persistent=False)

        scale = None
        if scale_base is not None:
            scale = torch.empty(-(dim // -2), dtype=torch.float32, device=device)
        self.register_buffer("scale", scale, persistent=False)

        self._seq_len_cached = 0
        self._cos_cached = None
        self._sin_cached = None
        self._cos_k_cached = None
        self._sin_k_cached = None

        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.inv_freq.copy_(self._compute_inv_freq(device=self.inv_freq.device))
            if self.scale_base is not None:
                self.scale.copy_(self._compute_scale(device=self.scale.device))

    def __repr__(self):
        s = f"{self.__class__.__name__}("
        s += f"dim={self.dim}, "
        s += f"base={self.base}, "
        s += f"interleaved={self.interleaved}, "
        if self.scale_base is not None:
            s += f"scale_base={self.scale_base}, "
        s += f"pos_idx_in_fp32={self.pos_idx_in_fp32})"
        return s

    def _compute_inv_freq(self, device=None):
        return 1.0 / (
            self.base
            ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim)
        )

    def _compute_scale(self, device=None):
        return (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) + 0.4 * self.dim) / (1.4 * self.dim)

    def _update_cos_sin_cache(self, seqlen, device=None, dtype=None):
        # rebuild the tables when they are too short, on another device or dtype, or were made
        # under inference mode and are now needed for training
        if (
            seqlen > self._seq_len_cached
            or self._cos_cached is None
            or self._cos_cached.device != device
            or self._cos_cached.dtype != dtype
            or (self.training and self._cos_cached.is_inference())
        ):
            self._seq_len_cached = seqlen
            # positions and frequencies in fp32 (bf16 would round large positions together)
            if self.pos_idx_in_fp32:
                t = torch.arange(seqlen, device=device, dtype=torch.float32)
                if self.inv_freq.dtype != torch.float32:
                    inv_freq = self._compute_inv_freq(device=device)
                else:
                    inv_freq = self.inv_freq
            else:
                t = torch.arange(seqlen, device=device, dtype=self.inv_freq.dtype)
                inv_freq = self.inv_freq
            # an outer product, not einsum (which autocast would run in fp16)
            freqs = torch.outer(t, inv_freq)
            if self.scale is None:
                self._cos_cached = torch.cos(freqs).to(dtype)
                self._sin_cached = torch.sin(freqs).to(dtype)
            else:
                power = (
                    torch.arange(seqlen, dtype=self.scale.dtype, device=self.scale.device)
                    - seqlen // 2
                ) / self.scale_base
                scale = self.scale.to(device=power.device) ** rearrange(power, "s -> s 1")
                # the scale multiplies in fp32
                self._cos_cached = (torch.cos(freqs) * scale).to(dtype)
                self._sin_cached = (torch.sin(freqs) * scale).to(dtype)
                self._cos_k_cached = (torch.cos(freqs) / scale).to(dtype)
                self._sin_k_cached = (torch.sin(freqs) / scale).to(dtype)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        seqlen_offset: Union[int, torch.Tensor] = 0,
        cu_seqlens: Optional[torch.Tensor] = None,
        max_seqlen: Optional[int] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Rotate q and k ``[B, T, H, D]``; ``seqlen_offset`` (int or ``[N]``) shifts positions,
        ``max_seqlen`` sizes the tables."""
        if max_seqlen is not None:
            self._update_cos_sin_cache(max_seqlen, device=q.device, dtype=q.dtype)
        elif isinstance(seqlen_offset, int):
            self._update_cos_sin_cache(q.shape[1] + seqlen_offset, device=q.device, dtype=q.dtype)
        if self.scale is None:
            q = rotary_embedding(
                q,
                self._cos_cached,
                self._sin_cached,
                interleaved=self.interleaved,
                seqlen_offsets=seqlen_offset,
                cu_seqlens=cu_seqlens,
            )
            k = rotary_embedding(
                k,
                self._cos_cached,
                self._sin_cached,
                interleaved=self.interleaved,
                seqlen_offsets=seqlen_offset,
                cu_seqlens=cu_seqlens,
            )

        else:
            q = rotary_embedding(
                q,
                self._cos_cached,
                self._sin_cached,
                interleaved=self.interleaved,
                seqlen_offsets=seqlen_offset,
                cu_seqlens=cu_seqlens,
            )
            k = rotary_embedding(
                k,
                self._cos_k_cached,
                self._sin_k_cached,
                interleaved=self.interleaved,
                seqlen_offsets=seqlen_offset,
                cu_seqlens=cu_seqlens,
            )

        return q, k
