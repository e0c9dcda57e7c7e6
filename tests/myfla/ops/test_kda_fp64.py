"""fp64 gradchecks of KDA's autograd functions: ``ChunkKDAFunction`` through ``chunk_kda`` and
``KDAGateFunction`` through ``fused_kda_gate``.

With fp64 inputs every KDA/GLA function computes in fp64 (fp16/bf16/fp32 inputs compute in fp32 as
in fla), so finite differences check the hand-written backward passes against the forward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.kda import chunk_kda
from myfla.ops.kda.gate import fused_kda_gate


def _kda_inputs(B, T, H, K, V, N, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    q = torch.randn(B, T, H, K, generator=gen, dtype=dt)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dt), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dt)
    # moderate decays keep exp(G) well away from underflow over a 64-token chunk
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=dt) + 3.0)
    beta = torch.rand(B, T, H, generator=gen, dtype=dt)
    h0 = torch.randn(N, H, K, V, generator=gen, dtype=dt)
    return [x.requires_grad_() for x in (q, k, v, g, beta, h0)]


@pytest.mark.parametrize(
    "T, H, K, V, cu_seqlens, l2norm",
    [
        (17, 2, 8, 8, None, False),
        (17, 1, 8, 16, None, True),
        (65, 1, 8, 8, None, False),
        (65, 2, 8, 8, [0, 5, 40, 65], True),
    ],
)
def test_chunk_kda_gradcheck_fp64(T, H, K, V, cu_seqlens, l2norm):
    cu = torch.tensor(cu_seqlens) if cu_seqlens is not None else None
    N = len(cu_seqlens) - 1 if cu_seqlens is not None else 1
    inputs = _kda_inputs(1, T, H, K, V, N)

    def fn(q, k, v, g, beta, h0):
        return chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                         use_qk_l2norm_in_kernel=l2norm, cu_seqlens=cu)

    o, ht = fn(*inputs)
    assert o.dtype == torch.float64 and ht.dtype == torch.float64
    # fast mode compares random projections of the Jacobian (a full numerical Jacobian costs minutes)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("rank", [2, 3])
def test_fused_kda_gate_gradcheck_fp64(with_bias, rank):
    gen = torch.Generator().manual_seed(1)
    H, D = 3, 4
    shape = (2, 5, H * D) if rank == 3 else (7, H * D)
    g = (torch.randn(*shape, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    A = torch.randn(H, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(H * D, generator=gen, dtype=torch.float64).requires_grad_() if with_bias else None
    inputs = (g, A) + ((bias,) if with_bias else ())

    def fn(g, A, *rest):
        return fused_kda_gate(g, A, D, rest[0] if rest else None)

    y = fn(*inputs)
    assert y.dtype == torch.float64 and y.shape == (*shape[:-1], H, D)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_kda_gate_returns_fp32_below_fp64(dtype):
    g = torch.randn(2, 5, 8).to(dtype)
    A = torch.randn(2)
    assert fused_kda_gate(g, A, 4).dtype == torch.float32


def test_chunk_kda_gradcheck_fp64_full_jacobian():
    """One small case with the full numerical Jacobian (every input element perturbed)."""
    cu = torch.tensor([0, 6, 17])
    inputs = _kda_inputs(1, 17, 1, 4, 4, 2, seed=3)

    def fn(q, k, v, g, beta, h0):
        return chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                         use_qk_l2norm_in_kernel=True, cu_seqlens=cu)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
