"""myfla.ops.utils (index, cumsum, op, solve_tril) against small references written from the math."""

from __future__ import annotations

import sys

import pytest
import torch

from myfla.ops.utils import (
    chunk_local_cumsum,
    chunk_local_cumsum_scalar,
    chunk_local_cumsum_vector,
    prepare_chunk_indices,
    prepare_chunk_offsets,
    prepare_cu_seqlens_from_lens,
    prepare_cu_seqlens_from_mask,
    prepare_lens,
    prepare_lens_from_mask,
    prepare_position_ids,
    prepare_sequence_ids,
    solve_tril
)
from myfla.ops.utils import op
from tests.numerics import assert_rms


# ---- index -----------------------------------------------------------------------------------
def test_index_helpers():
    cu = torch.tensor([0, 1, 5, 70, 200], dtype=torch.long)
    lens = [1, 4, 65, 130]
    assert prepare_lens(cu).tolist() == lens
    assert prepare_position_ids(cu).tolist() == [i for n in lens for i in range(n)]
    assert prepare_position_ids(cu).dtype == cu.dtype
    assert prepare_sequence_ids(cu).tolist() == [s for s, n in enumerate(lens) for _ in range(n)]
    chunks = [(s, c) for s, n in enumerate(lens) for c in range((n + 63) // 64)]
    ci = prepare_chunk_indices(cu, 64)
    assert ci.tolist() == [list(x) for x in chunks] and ci.dtype == cu.dtype
    assert prepare_chunk_offsets(cu, 64).tolist() == [0, 1, 2, 4, 7]
    assert prepare_chunk_offsets(cu, 16).tolist() == [0, 1, 2, 7, 16]
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    assert prepare_lens_from_mask(mask).tolist() == [2, 4, 3]
    assert prepare_lens_from_mask(mask).dtype == torch.int32
    cus = prepare_cu_seqlens_from_mask(mask)
    assert cus.tolist() == [0, 2, 6, 9] and cus.dtype == torch.int32
    assert prepare_cu_seqlens_from_lens(torch.tensor([3, 1]), torch.long).tolist() == [0, 3, 4]
    assert prepare_cu_seqlens_from_lens(torch.tensor([3, 1]), torch.long).dtype == torch.long


def test_index_helpers_are_cached_on_identity():
    cu = torch.tensor([0, 3, 9])
    assert prepare_position_ids(cu) is prepare_position_ids(cu)
    assert prepare_position_ids(torch.tensor([0, 3, 9])) is not prepare_position_ids(cu)


# ---- op --------------------------------------------------------------------------------------
def test_op_aliases():
    x = torch.rand(5) + 0.5
    assert torch.equal(op.exp(x), torch.exp(x)) and torch.equal(op.log(x), torch.log(x))
    with pytest.raises(RuntimeError, match="TMA"):
        op.make_tensor_descriptor(x, [5], [1], [5])


# ---- cumsum ----------------------------------------------------------------------------------
def ref_local_cumsum(g, BT, reverse, scale, cu_seqlens):
    """[B, T, H, ...] per-chunk cumsum, chunk boundaries restarting in every sequence."""
    g = g.double()
    out = torch.empty_like(g)
    spans = [(b, 0, g.shape[1]) for b in range(g.shape[0])] if cu_seqlens is None else \
        [(0, s, e) for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())]
    for b, s0, e0 in spans:
        for s in range(s0, e0, BT):
            e = min(s + BT, e0)
            x = g[b, s:e]
            out[b, s:e] = x.flip(0).cumsum(0).flip(0) if reverse else x.cumsum(0)
    return out * (scale if scale is not None else 1.0)


@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,cu", [(1, None), (63, None), (200, None), (200, [0, 1, 64, 65, 130, 200])])
def test_chunk_local_cumsum(vector, reverse, T, cu):
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    B = 2 if cu is None else 1
    shape = (B, T, 3, 20) if vector else (B, T, 3)
    g = torch.randn(shape)
    for BT, scale in [(64, None), (16, 0.5)]:
        ref = ref_local_cumsum(g, BT, reverse, scale, cu_seqlens)
        out = chunk_local_cumsum(g, BT, reverse=reverse, scale=scale, cu_seqlens=cu_seqlens)
        assert out.dtype == torch.float32
        assert_rms("cumsum", ref, out, 1e-6)
        # head_first takes [B, H, T, ...]
        g_hf = g.transpose(1, 2).contiguous()
        out_hf = chunk_local_cumsum(g_hf, BT, reverse=reverse, scale=scale, cu_seqlens=cu_seqlens, head_first=True)
        assert_rms("cumsum head_first", ref.transpose(1, 2), out_hf, 1e-6)
    fn = chunk_local_cumsum_vector if vector else chunk_local_cumsum_scalar
    half = fn(g.half(), 64, reverse=reverse, cu_seqlens=cu_seqlens, output_dtype=None)
    assert half.dtype == torch.float16
    assert_rms("cumsum fp16", ref_local_cumsum(g.half(), 64, reverse, None, cu_seqlens), half, 2e-3)


def test_chunk_local_cumsum_errors():
    with pytest.raises(ValueError, match=r"Unsupported input shape .*which should be \(B, T, H, D\)"):
        chunk_local_cumsum(torch.randn(1, 2, 3, 4, 5), 64)
    with pytest.raises(AssertionError, match="chunk_size must be a power of 2"):
        chunk_local_cumsum(torch.randn(1, 8, 2), 48)
    with pytest.raises(AssertionError, match="Only batch size 1 is supported when cu_seqlens are provided"):
        chunk_local_cumsum(torch.randn(2, 8, 2), 64, cu_seqlens=torch.tensor([0, 8]))


# ---- solve_tril -------------------------------------------------------------------------------
def ref_solve_tril(A, cu_seqlens):
    """(I + tril(A, -1))^-1 per chunk via torch.inverse, fp64."""
    B, T, H, BT = A.shape
    A = A.double()
    out = torch.zeros_like(A)
    spans = [(b, 0, T) for b in range(B)] if cu_seqlens is None else \
        [(0, s, e) for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())]
    for b, s0, e0 in spans:
        for s in range(s0, e0, BT):
            e = min(s + BT, e0)
            n = e - s
            blk = A[b, s:e, :, :n].permute(1, 0, 2).tril(-1)               # [H, n, n]
            inv = torch.inverse(torch.eye(n, dtype=A.dtype) + blk)
            out[b, s:e, :, :n] = inv.permute(1, 0, 2)
    return out


@pytest.mark.parametrize("method", ["doubling", "trsm"])
@pytest.mark.parametrize("BT", [16, 32, 64])
@pytest.mark.parametrize("T,cu", [(1, None), (63, None), (150, None), (150, [0, 1, 40, 100, 150])])
def test_solve_tril(BT, T, cu, method, monkeypatch):
    # both ways a CPU batch may be inverted (which one a small batch takes depends on this CPU)
    monkeypatch.setattr(sys.modules["myfla.ops.utils.solve_tril"], "SMALL_BATCHES", method)
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    B = 2 if cu is None else 1
    # scaled like a real beta * K K^T block (entries well below 1); the upper part must be ignored
    A = torch.randn(B, T, 2, BT) * 0.1
    ref = ref_solve_tril(A, cu_seqlens)
    out = solve_tril(A, cu_seqlens=cu_seqlens)
    assert out.dtype == torch.float32 and out.shape == A.shape
    assert_rms("Ai", ref, out, 1e-6)
    assert solve_tril(A, cu_seqlens=cu_seqlens, output_dtype=None).dtype == torch.float32
    bf = solve_tril(A.bfloat16(), cu_seqlens=cu_seqlens, output_dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16
    # bf16 storage of the result: 8-bit mantissa, relative rounding ~4e-3
    assert_rms("Ai bf16", ref_solve_tril(A.bfloat16(), cu_seqlens), bf, 1e-2)


def test_solve_tril_rejects_other_chunk_sizes():
    with pytest.raises(AssertionError):
        solve_tril(torch.zeros(1, 8, 1, 8))
