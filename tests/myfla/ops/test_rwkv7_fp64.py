"""fp64 gradchecks of every autograd function of the RWKV-7 closure: ``ChunkDPLRDeltaRuleFunction``
(through ``chunk_dplr_delta_rule``, both intra-chunk paths, varlen, initial state), ``Rwkv7FusedAddcmul``,
``KUpdateFunction``, ``GateOutputCorrection`` and ``TokenShift`` (with and without caches, varlen).

With fp64 inputs these compute in fp64 (fp16/bf16/fp32 inputs compute in fp32 as in fla), so finite
differences check the hand-written backward passes against the forward. ``fused_recurrent`` has no
backward in fla (it raises), so it has nothing to check.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.modules.token_shift import token_shift
from myfla.ops.generalized_delta_rule import chunk_dplr_delta_rule
from myfla.ops.rwkv7.fused_addcmul import Rwkv7FusedAddcmul
from myfla.ops.rwkv7.fused_k_update import KUpdateFunction
from myfla.ops.rwkv7.gate_output_correction import GateOutputCorrection

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

F64 = torch.float64


def _dplr_inputs(T, H, K, V, N, normalizer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, K, generator=gen, dtype=F64)
    k = torch.randn(1, T, H, K, generator=gen, dtype=F64)
    v = torch.randn(1, T, H, V, generator=gen, dtype=F64)
    kk = F.normalize(torch.randn(1, T, H, K, generator=gen, dtype=F64), dim=-1)
    a, b = -kk, kk * torch.rand(1, T, H, K, generator=gen, dtype=F64)
    gk = F.logsigmoid(torch.randn(1, T, H, K, generator=gen, dtype=F64)) / normalizer
    h0 = torch.randn(N, H, K, V, generator=gen, dtype=F64)
    return [x.requires_grad_() for x in (q, k, v, a, b, gk, h0)]


@pytest.mark.parametrize(
    "T, H, K, V, cu_seqlens, normalizer",
    [
        (17, 2, 8, 8, None, 1.0),
        (70, 1, 8, 4, None, 1.0),
        (70, 1, 4, 8, None, 0.05),            # strong decay: bisected intra-chunk blocks
        (70, 2, 4, 4, [0, 1, 30, 70], 1.0),
    ],
)
def test_chunk_dplr_gradcheck_fp64(T, H, K, V, cu_seqlens, normalizer):
    cu = torch.tensor(cu_seqlens) if cu_seqlens is not None else None
    N = len(cu_seqlens) - 1 if cu_seqlens is not None else 1
    inputs = _dplr_inputs(T, H, K, V, N, normalizer)

    def fn(q, k, v, a, b, gk, h0):
        return chunk_dplr_delta_rule(q, k, v, a, b, gk, scale=0.5, initial_state=h0, output_final_state=True,
                                     cu_seqlens=cu)

    o, ht = fn(*inputs)
    assert o.dtype == F64 and ht.dtype == F64
    # fast mode compares random projections of the Jacobian (a full numerical Jacobian costs minutes)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("use_g", [True, False])
def test_fused_addcmul_gradcheck_fp64(use_g):
    D = 6
    h = torch.randn(2, 4, D, dtype=F64, requires_grad=True)
    delta = torch.randn(2, 4, D, dtype=F64, requires_grad=True)
    mus = [torch.randn(1, 1, D, dtype=F64, requires_grad=True) for _ in range(6)]
    if not use_g:
        mus[5] = None

    def fn(h, delta, *ms):
        out = Rwkv7FusedAddcmul.apply(h, delta, *ms, *([None] if not use_g else []))
        return tuple(o for o in out if o is not None)

    assert torch.autograd.gradcheck(fn, [h, delta] + [m for m in mus if m is not None], eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("ka_shape", [(5,), (1, 1, 5)])
def test_k_update_gradcheck_fp64(ka_shape):
    k = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    a = torch.rand(2, 3, 5, dtype=F64, requires_grad=True)
    ka = torch.randn(*ka_shape, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k, a, ka: KUpdateFunction.apply(k, a, ka), [k, a, ka], eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("V", [4, 6])
def test_gate_output_correction_gradcheck_fp64(V):
    B, T, H, K = 2, 3, 2, 4
    xs = [torch.randn(B, T, H * V, dtype=F64), torch.randn(B, T, H, K, dtype=F64), torch.randn(B, T, H, K, dtype=F64),
          torch.randn(H, K, dtype=F64), torch.randn(B, T, H, V, dtype=F64), torch.randn(B, T, H * V, dtype=F64)]
    xs = [x.requires_grad_() for x in xs]
    assert torch.autograd.gradcheck(GateOutputCorrection.apply, xs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("cu_seqlens", [None, [0, 1, 4, 4, 9]])
@pytest.mark.parametrize("with_cache", [False, True])
def test_token_shift_gradcheck_fp64(cu_seqlens, with_cache):
    cu = torch.tensor(cu_seqlens) if cu_seqlens is not None else None
    x = torch.randn(1 if cu is not None else 2, 9, 5, dtype=F64, requires_grad=True)
    N = len(cu_seqlens) - 1 if cu_seqlens is not None else 2
    cache = torch.randn(N, 5, dtype=F64, requires_grad=True)
    if with_cache:
        fn = lambda x, c: token_shift(x, cu, cache=c, output_cache=True)  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x, cache], eps=1e-6, atol=1e-8)
    else:
        fn = lambda x: token_shift(x, cu, output_cache=True)  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x], eps=1e-6, atol=1e-8)
