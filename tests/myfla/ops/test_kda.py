"""chunk_kda / fused_recurrent_kda / naive KDA against fla's own naive references (loaded by file
path from the fetched fla 0.4.0 tree and run in fp64), plus the invariants: chunk == recurrent,
varlen == per-sequence, resume == full run, and fla's input checks."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from myfla.ops.kda.naive import naive_chunk_kda, naive_recurrent_kda
from tests.fla_refs import load_module
from tests.numerics import assert_rms

# fp32 outputs/states within 1e-5 of the fp64 oracle, gradients within 1e-4 (common brief)
O_TOL, G_TOL = 1e-5, 1e-4


class _Fp64Torch(types.ModuleType):
    """``torch`` as seen by fla's naive.py, with ``torch.float`` meaning float64: fla's references
    cast every input with ``.to(torch.float)``, which would otherwise make the oracle fp32."""

    def __getattr__(self, name):
        return torch.float64 if name == "float" else getattr(torch, name)


@pytest.fixture(scope="module")
def fla_naive(fla040_root):
    module = load_module(fla040_root, "fla/ops/kda/naive.py", name="_fla040_kda_naive_fp64")
    module.torch = _Fp64Torch("torch")
    return module


def make_inputs(B, T, H, K, V, h0=True, normalizer=1.0, mask_p=0.0, l2_keys=True, N=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    if l2_keys:
        k = F.normalize(k, p=2, dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / normalizer
    if mask_p:
        g = g * (torch.rand(B, T, H, K, generator=gen) > mask_p)
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    s0 = torch.randn(N if N is not None else B, H, K, V, generator=gen) if h0 else None
    return q, k, v, g, beta, s0


def l2(x):
    """fla's in-kernel L2 norm, x / sqrt(sum x^2 + 1e-6)."""
    return x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6)


def oracle(fla_naive, q, k, v, g, beta, h0, scale=None, l2norm=False, do=None, dht=None):
    """fp64 outputs (and gradients of q, k, v, g, beta, h0 when ``do`` is given) of fla's recurrence."""
    leaves = [None if x is None else x.detach().double().requires_grad_() for x in (q, k, v, g, beta, h0)]
    q64, k64 = leaves[0], leaves[1]
    if l2norm:
        q64, k64 = l2(q64), l2(k64)
    o, ht = fla_naive.naive_recurrent_kda(q64, k64, leaves[2], leaves[3], leaves[4], scale=scale,
                                         initial_state=leaves[5], output_final_state=True)
    grads = None
    if do is not None:
        ((o * do.double()).sum() + (ht * dht.double()).sum()).backward()
        grads = [None if x is None else x.grad for x in leaves]
    return o.detach(), ht.detach(), grads


def run_chunk(q, k, v, g, beta, h0, do, dht, **kw):
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in (q, k, v, g, beta, h0)]
    o, ht = chunk_kda(*leaves[:5], initial_state=leaves[5], output_final_state=True, **kw)
    ((o.float() * do).sum() + (ht * dht).sum()).backward()
    for x, leaf in zip((q, k, v, g, beta, h0), leaves):
        if x is not None:
            assert torch.equal(x, leaf.detach()), "chunk_kda modified an input"
    return o, ht, [None if x is None else x.grad for x in leaves]


NAMES = ["dq", "dk", "dv", "dg", "dbeta", "dh0"]

CHUNK_CASES = [
    # B, T, H, K, V, h0, scale, l2norm, normalizer, mask_p
    (1, 1, 1, 32, 32, True, None, False, 1.0, 0.0),
    (2, 17, 4, 64, 32, False, 0.1, False, 1.0, 0.0),
    (1, 63, 1, 100, 64, True, None, True, 1.0, 0.0),
    (1, 64, 4, 32, 48, True, None, False, 0.1, 0.5),
    (2, 65, 1, 128, 32, False, None, True, 10.0, 0.0),
    (1, 200, 4, 32, 64, True, 0.5, False, 1.0, 0.3),
    (2, 128, 1, 32, 32, True, None, False, 1.0, 0.0),    # H = 1, no padding: grid slices are the inputs
]


@pytest.mark.parametrize("B,T,H,K,V,h0,scale,l2norm,normalizer,mask_p", CHUNK_CASES)
def test_chunk_matches_fla_naive_recurrent(fla_naive, B, T, H, K, V, h0, scale, l2norm, normalizer, mask_p):
    q, k, v, g, beta, s0 = make_inputs(B, T, H, K, V, h0=h0, normalizer=normalizer, mask_p=mask_p,
                                       l2_keys=not l2norm)
    do, dht = torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    o_ref, ht_ref, g_ref = oracle(fla_naive, q, k, v, g, beta, s0, scale, l2norm, do, dht)
    o, ht, grads = run_chunk(q, k, v, g, beta, s0, do, dht, scale=scale, use_qk_l2norm_in_kernel=l2norm)
    assert o.dtype == torch.float32 and ht.dtype == torch.float32
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", ht_ref, ht, O_TOL)
    for name, ref, got in zip(NAMES, g_ref, grads):
        if ref is not None:
            assert_rms(name, ref, got, G_TOL)


def test_chunk_long_sequence(fla_naive):
    """T = 1000 (16 chunks, last one partial), forward and gradients."""
    q, k, v, g, beta, s0 = make_inputs(1, 1000, 1, 32, 32)
    do, dht = torch.randn(1, 1000, 1, 32), torch.randn(1, 1, 32, 32)
    o_ref, ht_ref, g_ref = oracle(fla_naive, q, k, v, g, beta, s0, None, False, do, dht)
    o, ht, grads = run_chunk(q, k, v, g, beta, s0, do, dht)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", ht_ref, ht, O_TOL)
    for name, ref, got in zip(NAMES, g_ref, grads):
        assert_rms(name, ref, got, G_TOL)


def test_chunk_bf16(fla_naive):
    """bf16 q, k, v, beta (g, h0 fp32), as fla's test_chunk with half precision inputs; tolerances are
    fla's (o/ht .005, dq/dk/dv/dh0 .008, dg/db .02): bf16 storage of inputs, outputs and gradients
    bounds the achievable error, not the fp32 arithmetic inside."""
    q, k, v, g, beta, s0 = make_inputs(2, 100, 2, 64, 64)
    q, k, v, beta = (x.bfloat16() for x in (q, k, v, beta))
    do, dht = torch.randn(2, 100, 2, 64), torch.randn(2, 2, 64, 64)
    o_ref, ht_ref, g_ref = oracle(fla_naive, q, k, v, g, beta, s0, None, False, do, dht)
    o, ht, grads = run_chunk(q, k, v, g, beta, s0, do, dht)
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
    assert grads[0].dtype == torch.bfloat16 and grads[3].dtype == torch.float32
    assert_rms("o", o_ref, o, 0.005)
    assert_rms("ht", ht_ref, ht, 0.005)
    for name, ref, got, tol in zip(NAMES, g_ref, grads, [0.008, 0.008, 0.008, 0.02, 0.02, 0.008]):
        assert_rms(name, ref, got, tol)


@pytest.mark.parametrize("l2norm", [False, True])
def test_fused_recurrent_matches_fla_naive_and_chunk(fla_naive, l2norm):
    q, k, v, g, beta, s0 = make_inputs(2, 75, 3, 48, 40, l2_keys=not l2norm)
    o_ref, ht_ref, _ = oracle(fla_naive, q, k, v, g, beta, s0, None, l2norm)
    o, ht = fused_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True,
                                use_qk_l2norm_in_kernel=l2norm)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", ht_ref, ht, O_TOL)
    oc, htc = chunk_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True,
                       use_qk_l2norm_in_kernel=l2norm)
    assert_rms("chunk vs fused o", o, oc, O_TOL)
    assert_rms("chunk vs fused ht", ht, htc, O_TOL)


def test_fused_recurrent_gva(fla_naive):
    """q, k with H heads; v, g, beta, state with HV = 2H heads (q, k shared by head groups)."""
    B, T, H, HV, K, V = 1, 30, 2, 4, 32, 16
    q, k, v, g, beta, s0 = make_inputs(B, T, HV, K, V)
    q, k = q[:, :, :H], k[:, :, :H]
    o, ht = fused_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    rep = HV // H
    o_ref, ht_ref, _ = oracle(fla_naive, q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2),
                              v, g, beta, s0)
    assert o.shape == (B, T, HV, V) and ht.shape == (B, HV, K, V)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", ht_ref, ht, O_TOL)


def test_chunk_with_repeated_qk_heads(fla_naive):
    """The layer repeats q, k to HV heads: chunk_kda then takes g, beta with HV heads."""
    B, T, H, HV, K, V = 1, 70, 1, 3, 32, 16
    q, k, v, g, beta, s0 = make_inputs(B, T, HV, K, V)
    q, k = q[:, :, :H].repeat_interleave(HV, 2), k[:, :, :H].repeat_interleave(HV, 2)
    o_ref, ht_ref, _ = oracle(fla_naive, q, k, v, g, beta, s0)
    o, ht = chunk_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", ht_ref, ht, O_TOL)


CU_SEQLENS = [0, 1, 18, 82, 83, 150, 214]


def test_varlen_matches_per_sequence_oracle(fla_naive):
    cu = torch.tensor(CU_SEQLENS, dtype=torch.long)
    N, T = len(CU_SEQLENS) - 1, CU_SEQLENS[-1]
    H, K, V = 2, 32, 24
    q, k, v, g, beta, s0 = make_inputs(1, T, H, K, V, N=N)
    do, dht = torch.randn(1, T, H, V), torch.randn(N, H, K, V)
    o, ht, grads = run_chunk(q, k, v, g, beta, s0, do, dht, cu_seqlens=cu)
    o_f, ht_f = fused_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    for i in range(N):
        s, e = CU_SEQLENS[i], CU_SEQLENS[i + 1]
        sl = [x[:, s:e] for x in (q, k, v, g, beta)]
        o_ref, ht_ref, g_ref = oracle(fla_naive, *sl, s0[i:i + 1], None, False, do[:, s:e], dht[i:i + 1])
        assert_rms(f"o[{i}]", o_ref, o[:, s:e], O_TOL)
        assert_rms(f"ht[{i}]", ht_ref, ht[i:i + 1], O_TOL)
        assert_rms(f"fused o[{i}]", o_ref, o_f[:, s:e], O_TOL)
        assert_rms(f"fused ht[{i}]", ht_ref, ht_f[i:i + 1], O_TOL)
        for name, ref, got in zip(NAMES[:5], g_ref[:5], grads[:5]):
            assert_rms(f"{name}[{i}]", ref, got[:, s:e], G_TOL)
        assert_rms(f"dh0[{i}]", g_ref[5], grads[5][i:i + 1], G_TOL)


SPLITS = [1, 2, 17, 63, 64, 65, 100, 127, 128, 129, 199]


@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
def test_resume_equals_full_run(fla_naive, op):
    """Prefix with output_final_state, then the rest from that state == one full run (cache
    continuation), for split points mid-chunk, at chunk borders and of length 1."""
    fn = chunk_kda if op == "chunk" else fused_recurrent_kda
    B, T, H, K, V = 2, 200, 2, 32, 32
    q, k, v, g, beta, s0 = make_inputs(B, T, H, K, V)
    o_full, ht_full = fn(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    o_ref, ht_ref, _ = oracle(fla_naive, q, k, v, g, beta, s0)
    assert_rms("full o", o_ref, o_full, O_TOL)
    for split in SPLITS:
        o1, h1 = fn(*(x[:, :split] for x in (q, k, v, g, beta)), initial_state=s0, output_final_state=True)
        o2, h2 = fn(*(x[:, split:] for x in (q, k, v, g, beta)), initial_state=h1, output_final_state=True)
        o = torch.cat([o1, o2], 1)
        assert_rms(f"o split {split}", o_full, o, O_TOL)
        assert_rms(f"ht split {split}", ht_full, h2, O_TOL)
        assert_rms(f"o split {split} vs oracle", o_ref, o, O_TOL)
    # token by token for a few steps, then the rest in one call
    state, outs = s0, []
    for t in range(5):
        o_t, state = fn(*(x[:, t:t + 1] for x in (q, k, v, g, beta)), initial_state=state,
                        output_final_state=True)
        outs.append(o_t)
    o_rest, h_rest = fn(*(x[:, 5:] for x in (q, k, v, g, beta)), initial_state=state, output_final_state=True)
    assert_rms("stepwise o", o_full, torch.cat(outs + [o_rest], 1), O_TOL)
    assert_rms("stepwise ht", ht_full, h_rest, O_TOL)


def test_no_final_state_and_default_scale():
    q, k, v, g, beta, _ = make_inputs(1, 40, 2, 16, 16, h0=False)
    o, ht = chunk_kda(q, k, v, g, beta)
    assert ht is None
    o2, _ = chunk_kda(q, k, v, g, beta, scale=16 ** -0.5)
    assert torch.equal(o, o2)
    o3, ht3 = fused_recurrent_kda(q, k, v, g, beta)
    assert ht3 is None
    assert_rms("fused", o, o3, O_TOL)


@pytest.mark.parametrize("fn", [chunk_kda, fused_recurrent_kda])
def test_input_checks(fn):
    q, k, v, g, beta, s0 = make_inputs(2, 8, 1, 16, 16)
    cu = torch.tensor([0, 3, 8], dtype=torch.long)
    with pytest.raises(ValueError) as e:
        fn(q, k, v, g, beta, cu_seqlens=cu)
    assert str(e.value) == ("The batch size is expected to be 1 rather than 2 when using `cu_seqlens`."
                            "Please flatten variable-length inputs before processing.")
    q1, k1, v1, g1, b1, _ = make_inputs(1, 8, 1, 16, 16)
    with pytest.raises(ValueError) as e:
        fn(q1, k1, v1, g1, b1, initial_state=torch.zeros(3, 1, 16, 16), cu_seqlens=cu)
    assert str(e.value) == ("The number of initial states is expected to be equal to the number of input "
                            "sequences, i.e., 2 rather than 3.")


def test_port_naive_matches_fla_naive(fla_naive):
    q, k, v, g, beta, s0 = make_inputs(2, 128, 2, 32, 48)
    o_ref, ht_ref, _ = oracle(fla_naive, q, k, v, g, beta, s0)
    o, ht = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert_rms("naive_recurrent o", o_ref, o, O_TOL)
    assert_rms("naive_recurrent ht", ht_ref, ht, O_TOL)
    o, ht = naive_chunk_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert_rms("naive_chunk o", o_ref, o, O_TOL)
    assert_rms("naive_chunk ht", ht_ref, ht, O_TOL)
    o64, ht64 = fla_naive.naive_chunk_kda(*(x.double() for x in (q, k, v, g, beta)),
                                          initial_state=s0.double(), output_final_state=True)
    assert_rms("fla naive_chunk o", o_ref, o64, 1e-10)
