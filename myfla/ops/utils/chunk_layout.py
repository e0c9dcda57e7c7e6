"""Padded chunk grid for the chunked algorithms (port-only helper; fla has no counterpart).

fla's Triton kernels launch one program per (chunk, head) and find a chunk's tokens through
``cu_seqlens``/``chunk_indices``. The torch port instead lays all chunks of all sequences out on
one padded grid ``[N, NC, BT, ...]`` (N sequences, NC = most chunks of any sequence, BT = chunk
size), so intra-chunk math is a single batched op and only the inter-chunk state recurrence loops
(over NC). Padding tokens are zero, or, for chunk-local cumulative gates, a copy of the chunk's last
valid value, so that ``g[last]`` decays and ``exp(g_i - g_j)`` stay bounded exactly as the kernels'
masked loads make them. Fully empty chunks (shorter sequences) are zero everywhere, which leaves a
carried state unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch


class ChunkLayout:
    """Index maps between fla's token layout ``[B, T, ...]`` (varlen: ``B == 1`` with
    ``cu_seqlens``) and the padded chunk grid ``[N, NC, BT, ...]``; also between fla's per-chunk
    layout ``[B, NT, ...]`` (varlen: all chunks of all sequences, in order) and ``[N, NC, ...]``."""

    def __init__(self, B: int, T: int, chunk_size: int, cu_seqlens: Optional[torch.Tensor] = None,
                 device: Optional[torch.device] = None):
        self.B, self.T, self.BT = B, T, chunk_size
        self.varlen = cu_seqlens is not None
        if not self.varlen:
            self.N = B
            self.NC = (T + chunk_size - 1) // chunk_size
            self.lens = [T] * B
            self.pad = self.NC * chunk_size - T
            return
        if B != 1:
            raise ValueError(f"The batch size is expected to be 1 rather than {B} when using `cu_seqlens`.")
        offsets = [int(x) for x in cu_seqlens.tolist()]
        self.lens = [e - s for s, e in zip(offsets[:-1], offsets[1:])]
        self.N = len(self.lens)
        nchunks = [(n + chunk_size - 1) // chunk_size for n in self.lens]
        self.NC = max(nchunks) if nchunks else 0
        NC, BT = self.NC, chunk_size
        dev = device if device is not None else cu_seqlens.device
        starts = torch.tensor(offsets[:-1], dtype=torch.long, device=dev)
        lens = torch.tensor(self.lens, dtype=torch.long, device=dev)
        pos = torch.arange(NC * BT, device=dev).view(1, NC * BT)          # position within sequence
        valid = pos < lens.view(-1, 1)                                     # [N, NC*BT]
        zero_row = T                                                       # index of an appended zero row
        self.token_index = torch.where(valid, starts.view(-1, 1) + pos, zero_row).view(-1)
        # 'last' fill: pads of a partially filled chunk read the chunk's last valid token.
        chunk_start = (pos // BT) * BT
        last_in_chunk = torch.minimum(chunk_start + BT, lens.view(-1, 1)) - 1
        has_tokens = chunk_start < lens.view(-1, 1)
        self.last_index = torch.where(
            valid, starts.view(-1, 1) + pos,
            torch.where(has_tokens, starts.view(-1, 1) + last_in_chunk, zero_row)).view(-1)
        slot = torch.arange(self.N * NC * BT, device=dev).view(self.N, NC * BT)
        self.slot_of_token = slot[valid]                                   # [T]: token -> grid slot
        chunk_valid = torch.arange(NC, device=dev).view(1, NC) < torch.tensor(nchunks, device=dev).view(-1, 1)
        self.chunk_slot = torch.arange(self.N * NC, device=dev).view(self.N, NC)[chunk_valid]  # [NT]
        self.NT = int(sum(nchunks))

    # ---- token layout <-> chunk grid -------------------------------------------------------
    def pack(self, x: torch.Tensor, fill: str = 'zero') -> torch.Tensor:
        """``[B, T, *rest]`` -> ``[N, NC, BT, *rest]``; ``fill`` is 'zero' or 'last'."""
        rest = x.shape[2:]
        if not self.varlen:
            if self.pad:
                if fill == 'last':
                    x = torch.cat([x, x[:, -1:].expand(x.shape[0], self.pad, *rest)], 1)
                else:
                    x = torch.cat([x, x.new_zeros(x.shape[0], self.pad, *rest)], 1)
            return x.reshape(self.B, self.NC, self.BT, *rest)
        flat = torch.cat([x.reshape(self.T, *rest), x.new_zeros(1, *rest)], 0)
        index = self.last_index if fill == 'last' else self.token_index
        return flat.index_select(0, index).view(self.N, self.NC, self.BT, *rest)

    def unpack(self, xc: torch.Tensor) -> torch.Tensor:
        """``[N, NC, BT, *rest]`` -> ``[B, T, *rest]`` (padding dropped)."""
        rest = xc.shape[3:]
        if not self.varlen:
            return xc.reshape(self.B, self.NC * self.BT, *rest)[:, :self.T]
        return xc.reshape(-1, *rest).index_select(0, self.slot_of_token).view(1, self.T, *rest)

    # ---- per-chunk layout <-> chunk grid ---------------------------------------------------
    def pack_chunks(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, NT, *rest]`` -> ``[N, NC, *rest]`` (empty chunks are zero)."""
        if not self.varlen:
            return h
        rest = h.shape[2:]
        out = h.new_zeros(self.N * self.NC, *rest)
        out.index_copy_(0, self.chunk_slot, h.reshape(self.NT, *rest))
        return out.view(self.N, self.NC, *rest)

    def unpack_chunks(self, hc: torch.Tensor) -> torch.Tensor:
        """``[N, NC, *rest]`` -> ``[B, NT, *rest]``."""
        if not self.varlen:
            return hc
        rest = hc.shape[2:]
        return hc.reshape(self.N * self.NC, *rest).index_select(0, self.chunk_slot).view(1, self.NT, *rest)

    def valid_mask(self, device=None) -> torch.Tensor:
        """``[N, NC, BT]`` bool: which grid slots hold real tokens."""
        pos = torch.arange(self.NC * self.BT, device=device)
        lens = torch.tensor(self.lens, device=device)
        return (pos.view(1, -1) < lens.view(-1, 1)).view(self.N, self.NC, self.BT)


# Chunk-heads processed together by the slab-wise passes (KDA, GLA helpers) on a CPU with up to four
# threads: a slab's temporaries stay in cache, which keeps their cost linear in T (whole-grid passes
# at long T run from DRAM). More threads share a slab, so it grows with them (16 chunk-heads per
# thread); on GPUs the whole grid is one slab (every slab costs the same launches, whatever its size).
SLAB_CHUNK_HEADS = 64


def slab_chunk_heads(device: torch.device) -> int:
    """Chunk-heads per slab on ``device`` (see ``SLAB_CHUNK_HEADS``); 0 means the whole grid."""
    if torch.device(device).type != 'cpu':
        return 0
    return max(SLAB_CHUNK_HEADS, 16 * torch.get_num_threads())


def chunk_slabs(xc: torch.Tensor):
    """Slices of the chunk axis (dim 2 of ``[N, H, NC, ...]``) of about ``slab_chunk_heads`` chunk-heads
    each (a single slice on GPUs)."""
    N, H, NC = xc.shape[:3]
    per_slab = slab_chunk_heads(xc.device)
    if per_slab == 0:
        return [slice(0, NC)]
    step = max(1, per_slab // max(1, N * H))
    return [slice(c, min(c + step, NC)) for c in range(0, NC, step)]


_cache: list = []


def get_chunk_layout(B: int, T: int, chunk_size: int, cu_seqlens: Optional[torch.Tensor] = None,
                     device: Optional[torch.device] = None) -> ChunkLayout:
    """A ``ChunkLayout``, reused while the same ``cu_seqlens`` tensor object comes back (as
    ``fla.utils.tensor_cache`` does for fla's index helpers)."""
    for key, layout in _cache:
        if key[0] == B and key[1] == T and key[2] == chunk_size and key[3] is cu_seqlens:
            return layout
    layout = ChunkLayout(B, T, chunk_size, cu_seqlens, device)
    _cache.insert(0, ((B, T, chunk_size, cu_seqlens), layout))
    del _cache[8:]
    return layout
