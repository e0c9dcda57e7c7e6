"""RWKV-7 ops against fla's own references (loaded by file path from fla 0.4.0): chunk_rwkv7 and
fused_mul_recurrent_rwkv7 against the naive DPLR recurrence, fused_addcmul against
torch_addcmul_rwkv7, fused_k_update against k_update_ref, gate_output_correction against
gate_output_correction_ref (forward and backward), and the recorded deviations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.generalized_delta_rule import fused_recurrent_dplr_delta_rule
from myfla.ops.rwkv7 import chunk_rwkv7, fused_mul_recurrent_rwkv7, fused_recurrent_rwkv7
from myfla.ops.rwkv7.fused_addcmul import addcmul_bwd1, fused_addcmul_rwkv7
from myfla.ops.rwkv7.fused_k_update import fused_k_rwkv7
from myfla.ops.rwkv7.gate_output_correction import gate_output_correction
from portaudit.numerics.fla040.reference_rwkv7 import RWKV7Reference
from tests.numerics import assert_rms

O_TOL, G_TOL = 1e-5, 1e-4

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def refs(fla040_root):
    return RWKV7Reference(fla040_root, fp64=True)


def rwkv_inputs(B, T, H, K, V, N=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    w = -0.6065306597126334 * torch.randn(B, T, H, K, generator=gen).sigmoid()
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    a = torch.rand(B, T, H, K, generator=gen)
    h0 = torch.randn(N or B, H, K, V, generator=gen)
    return r, w, k, v, kk, a, h0


def test_chunk_rwkv7_matches_naive(refs):
    r, w, k, v, kk, a, h0 = rwkv_inputs(2, 90, 2, 32, 48)
    leaves = [x.double().requires_grad_() for x in (r, w, k, v, kk, a, h0)]
    o_ref, S_ref = refs.chunk_rwkv7(leaves[0], leaves[1], leaves[2], leaves[3], -leaves[4], leaves[4] * leaves[5],
                                    initial_state=leaves[6])
    do, dS = torch.randn_like(v), torch.randn_like(h0)
    ((o_ref * do.double()).sum() + (S_ref * dS.double()).sum()).backward()
    mine = [x.clone().requires_grad_() for x in (r, w, k, v, kk, a, h0)]
    o, S = chunk_rwkv7(mine[0], mine[1], mine[2], mine[3], -mine[4], mine[4] * mine[5], initial_state=mine[6])
    ((o * do).sum() + (S * dS).sum()).backward()
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)
    for name, x, y in zip(["dr", "dw", "dk", "dv", "dkk", "da", "dh0"], leaves, mine):
        assert_rms(name, x.grad, y.grad, G_TOL)


@pytest.mark.parametrize("T", [1, 33])
def test_fused_mul_recurrent_matches_naive_and_dplr(refs, T):
    """fla's test_fused_mul_recurrent_fwd: the RWKV-7 kernel == the DPLR kernel with a = -kk, b = kk a."""
    r, w, k, v, kk, a, h0 = rwkv_inputs(2, T, 2, 32, 32)
    o_ref, S_ref = refs.fused_mul_recurrent_rwkv7(r.double(), w.double(), k.double(), v.double(), kk.double(),
                                                  a.double(), initial_state=h0.double(), output_final_state=True)
    o, S = fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, initial_state=h0, output_final_state=True)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)
    o2, S2 = fused_recurrent_dplr_delta_rule(r, k, v, -kk, kk * a, w, scale=1.0, initial_state=h0,
                                             output_final_state=True)
    assert_rms("o", o2, o, 1e-6)
    assert_rms("ht", S2, S, 1e-6)
    o3, S3 = fused_recurrent_rwkv7(r, w, k, v, -kk, kk * a, scale=1.0, initial_state=h0)
    assert_rms("o", o2, o3, 1e-7)
    assert_rms("ht", S2, S3, 1e-7)


def test_fused_mul_recurrent_records_no_graph():
    """As fla's Triton kernel: inference only, the outputs carry no autograd history."""
    xs = [x.requires_grad_() for x in rwkv_inputs(1, 4, 1, 16, 16)]
    o, S = fused_mul_recurrent_rwkv7(*xs[:6], initial_state=xs[6], output_final_state=True)
    assert not o.requires_grad and not S.requires_grad


def test_fused_mul_recurrent_decode_with_empty_sequence(refs):
    """Deviation (fla 0.6.0): one packed decode token with an empty sequence among the sequences.
    fla 0.4.0 takes its decode branch whenever T == 1 and reads/writes the empty sequence's slot at the
    neighbour's token; the port runs each sequence as it is (the empty one keeps its state)."""
    r, w, k, v, kk, a, h0 = rwkv_inputs(1, 1, 2, 16, 16, N=2)
    cu = torch.tensor([0, 0, 1])
    o, S = fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    o_ref, S_ref = refs.fused_mul_recurrent_rwkv7(*(x.double() for x in (r, w, k, v, kk, a)),
                                                  initial_state=h0.double(), output_final_state=True,
                                                  cu_seqlens=cu)
    assert torch.equal(S[0], h0[0])
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)


@pytest.mark.parametrize("use_g", [True, False])
@pytest.mark.parametrize("T", [1, 20])
def test_fused_addcmul_matches_torch_reference(refs, use_g, T):
    D = 24
    h = torch.randn(2, T, D, dtype=torch.float64, requires_grad=True)
    xx = torch.randn(2, T, D, dtype=torch.float64, requires_grad=True)
    mus = [torch.randn(1, 1, D, dtype=torch.float64, requires_grad=True) for _ in range(6 if use_g else 5)]
    if not use_g:
        mus.append(None)
    ref_out = refs.torch_addcmul_rwkv7(h, xx, *mus)
    out = fused_addcmul_rwkv7(h, xx, *mus)
    assert (out[5] is None) == (not use_g)
    cot = [torch.randn_like(h) for _ in range(6)]
    live = [i for i in range(6) if out[i] is not None]
    g_ref = torch.autograd.grad([ref_out[i] for i in live], [h, xx] + [m for m in mus if m is not None],
                                [cot[i] for i in live])
    g = torch.autograd.grad([out[i] for i in live], [h, xx] + [m for m in mus if m is not None],
                            [cot[i] for i in live])
    for i in live:
        torch.testing.assert_close(out[i], ref_out[i], rtol=1e-14, atol=1e-14)
    for x, y in zip(g_ref, g):
        torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)


def test_fused_addcmul_keeps_the_callers_hidden_states():
    """Deviation: fla's backward writes the hidden-state gradient into the saved hidden_states (the
    caller's tensor). Another op that saved the same tensor then differentiates against the gradient
    instead of the input: here ``x * x`` would get d/dx = 2 * grad instead of 2 * x. The port keeps
    the input intact, so both gradients are right; addcmul_bwd1 itself still honours inplace=True."""
    D = 8
    x = torch.randn(1, 5, D, requires_grad=True)
    mus = [torch.randn(1, 1, D, requires_grad=True) for _ in range(6)]
    delta = torch.randn(1, 5, D)
    keep = x.detach().clone()
    y = (x * x).sum()                                   # saves x
    outs = fused_addcmul_rwkv7(x, delta, *mus)
    (y + sum(o.sum() for o in outs)).backward()
    assert torch.equal(x.detach(), keep)
    expected = 2 * keep + 6.0                           # d(x*x)/dx + sum of the six mixes' d/dh
    torch.testing.assert_close(x.grad, expected)
    # the helper's inplace contract (fla's): the gradient lands in the given buffer
    buf = torch.randn(1, 5, D)
    grads = [torch.ones(1, 5, D) for _ in range(6)]
    g_h, _ = addcmul_bwd1(*grads, *mus, buf, delta, True, inplace=True)
    assert g_h.data_ptr() == buf.data_ptr() and torch.equal(buf, torch.full_like(buf, 6.0))


@pytest.mark.parametrize("ka_shape", [(1,), (1, 1)])
@pytest.mark.parametrize("T", [1, 600])
def test_fused_k_update_matches_reference(refs, ka_shape, T):
    D = 32
    k = torch.randn(2, T, D, dtype=torch.float64).uniform_(-8, 8).requires_grad_()
    a = torch.randn(2, T, D, dtype=torch.float64).uniform_(-8, 8).requires_grad_()
    ka = torch.randn(*ka_shape, D, dtype=torch.float64).uniform_(-8, 8).requires_grad_()
    ref = refs.k_update_ref(k, a, ka)
    out = fused_k_rwkv7(k, a, ka)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, [k, a, ka], g), torch.autograd.grad(ref, [k, a, ka], g),
                               rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("V", [16, 32])
def test_gate_output_correction_matches_reference(refs, V):
    """Forward and backward against fla's ref (V != K is the recorded deviation: fla's kernel indexes
    ``v`` and ``o`` with the key head size; the port follows the reference's formula)."""
    B, T, H, K = 2, 9, 3, 16
    o = torch.randn(B, T, H * V, dtype=torch.float64, requires_grad=True)
    r = torch.randn(B, T, H, K, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, T, H, K, dtype=torch.float64, requires_grad=True)
    r_k = torch.randn(H, K, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, T, H, V, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, T, H * V, dtype=torch.float64, requires_grad=True)
    xs = [o, r, k, r_k, v, g]
    ref = refs.gate_output_correction_ref(*xs)
    out = gate_output_correction(*xs)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, xs, go)
    g_mine = torch.autograd.grad(out, xs, go)
    for a, b in zip(g_ref, g_mine):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    if V == K:   # fla's hand-written backward reference reshapes with the key head size
        for a, b in zip(refs.gate_output_correction_backward_ref(go, *[x.detach() for x in xs]), g_mine):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_low_precision_dtypes():
    B, T, H, K = 1, 12, 2, 16
    xs32 = [torch.randn(B, T, H * K), torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(H, K),
            torch.randn(B, T, H, K), torch.randn(B, T, H * K)]
    want = gate_output_correction(*xs32)
    got = gate_output_correction(*[x.bfloat16() for x in xs32])
    assert got.dtype == torch.bfloat16
    assert_rms("gate", want, got, 2e-2)
    k, a = torch.randn(B, T, 32), torch.rand(B, T, 32)
    ka = torch.randn(32)
    assert fused_k_rwkv7(k.half(), a.half(), ka.half()).dtype == torch.float16
