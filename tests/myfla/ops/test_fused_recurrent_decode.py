"""The one-token (decoding) step of the fused_recurrent ops, and the intra-op thread policy.

Oracle: fla 0.4.0 ``fla/ops/kda/naive.py::naive_recurrent_kda`` in fp64 (loaded by file path), with a
scalar gate expanded over K for GatedDeltaNet, and fla's kernel math written out per token for
``gv`` / per-channel beta (``ref_recurrent_gv_vector_beta`` of test_gated_delta_rule).
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
from myfla.ops.gated_delta_rule import fused_recurrent as fr_module
from myfla.ops.kda import fused_recurrent_kda
from myfla.ops.utils import threads
from portaudit.numerics.upstream_code import load_module
from tests.myfla.ops.test_gated_delta_rule import as_fp64, ref_recurrent_gv_vector_beta
from tests.numerics import assert_rms

D = torch.float64


@pytest.fixture(scope="module")
def kda_ref(fla040_root):
    return as_fp64(load_module(fla040_root, "fla/ops/kda/naive.py")).naive_recurrent_kda


def step_inputs(B, T, H, HV, K, V, gate="g", h0=True):
    q = torch.randn(B, T, H, K, dtype=D)
    k = torch.randn(B, T, H, K, dtype=D)
    v = torch.randn(B, T, HV, V, dtype=D)
    if gate == "g":
        g = F.logsigmoid(torch.randn(B, T, HV, dtype=D))
    else:
        g = F.logsigmoid(torch.randn(B, T, HV, K, dtype=D))
    beta = torch.rand(B, T, HV, dtype=D)
    state = torch.randn(B, HV, K, V, dtype=D) * 0.1 if h0 else None
    return q, k, v, g, beta, state


def l2(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def oracle(kda_ref, q, k, v, g, beta, h0, rep, K):
    """fp64 naive recurrence on explicitly repeated heads, l2-normalised q/k (the layers' setting)."""
    qr, kr = (l2(x).repeat_interleave(rep, 2) for x in (q, k))
    gk = g if g.dim() == 4 else g.unsqueeze(-1).expand(*g.shape, K)
    return kda_ref(qr, kr, v, gk, beta, initial_state=h0, output_final_state=True)


@pytest.mark.parametrize("B,H,HV,K,V,h0", [
    (1, 4, 4, 64, 64, True),
    (3, 2, 4, 32, 48, True),       # GVA, batch > 1, K != V
    (2, 4, 8, 100, 64, False),     # GVA, no initial state, K not a power of two
])
@pytest.mark.parametrize("op", ["gdn", "kda"])
def test_one_token_step_matches_naive(kda_ref, op, B, H, HV, K, V, h0):
    q, k, v, g, beta, state = step_inputs(B, 1, H, HV, K, V, gate="g" if op == "gdn" else "gk", h0=h0)
    o_ref, ht_ref = oracle(kda_ref, q, k, v, g, beta, state, HV // H, K)
    f = (lambda x: x.float() if x is not None else None)
    kw = dict(beta=f(beta), initial_state=f(state), output_final_state=True, use_qk_l2norm_in_kernel=True)
    if op == "gdn":
        o, ht = fused_recurrent_gated_delta_rule(f(q), f(k), f(v), g=f(g), **kw)
    else:
        o, ht = fused_recurrent_kda(f(q), f(k), f(v), f(g), **kw)
    assert o.shape == (B, 1, HV, V) and o.dtype == torch.float32 and o.is_contiguous()
    assert ht.shape == (B, HV, K, V) and ht.dtype == torch.float32
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)


@pytest.mark.parametrize("l2norm,scale", [(True, None), (False, None), (True, 0.3), (False, 1.7)])
@pytest.mark.parametrize("op", ["gdn", "kda"])
def test_decode_step_scale_norm(kda_ref, op, l2norm, scale):
    """The decoding step folds the output scale into q's L2 norm (or multiplies q by it without the
    norm): against fla's naive recurrence in fp64, from fp32 and fp64 inputs."""
    B, H, HV, K, V = 5, 1, 2, 16, 24
    q, k, v, g, beta, h0 = step_inputs(B, 1, H, HV, K, V, gate="g" if op == "gdn" else "gk")
    qr, kr = ((l2(x) if l2norm else x).repeat_interleave(HV // H, 2) for x in (q, k))
    gk = g if g.dim() == 4 else g.unsqueeze(-1).expand(*g.shape, K)
    o_ref, ht_ref = kda_ref(qr, kr, v, gk, beta, scale=scale, initial_state=h0, output_final_state=True)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        f = (lambda x: x.to(dtype))
        kw = dict(beta=f(beta), scale=scale, initial_state=f(h0), output_final_state=True,
                  use_qk_l2norm_in_kernel=l2norm)
        if op == "gdn":
            o, ht = fused_recurrent_gated_delta_rule(f(q), f(k), f(v), g=f(g), **kw)
        else:
            o, ht = fused_recurrent_kda(f(q), f(k), f(v), f(g), **kw)
        assert o.dtype == dtype and ht.dtype == torch.float32
        assert_rms("o", o_ref, o, tol)
        assert_rms("ht", ht_ref, ht, 1e-6)        # the final state is fp32 (fla's contract)


def test_decode_step_of_packed_sequences_equals_batch():
    """One token for each of N packed sequences (B = 1, T = N, cu_seqlens) is the batched step."""
    N, H, HV, K, V = 3, 2, 4, 16, 16
    q, k, v, g, beta, h0 = (x.float() for x in step_inputs(N, 1, H, HV, K, V, gate="gk"))
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, ht = fused_recurrent_kda(q, k, v, g, beta=beta, **kw)
    flat = [x.transpose(0, 1) for x in (q, k, v, g, beta)]
    o_p, ht_p = fused_recurrent_kda(*flat[:4], beta=flat[4], cu_seqlens=torch.tensor([0, 1, 2, 3]), **kw)
    torch.testing.assert_close(o_p, o.transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(ht_p, ht, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["vector_beta", "gv"])
def test_one_token_step_gv_and_vector_beta(variant):
    B, H, K, V = 2, 2, 32, 32
    q, k, v, g, beta, h0 = step_inputs(B, 1, H, H, K, V)
    k = F.normalize(k, dim=-1)
    gv = None
    if variant == "vector_beta":
        beta = torch.rand(B, 1, H, V, dtype=D)
    else:
        gv = F.logsigmoid(torch.randn(B, 1, H, V, dtype=D))
    o_ref, ht_ref = ref_recurrent_gv_vector_beta(q, k, v, g, gv, beta, K ** -0.5, h0)
    f = (lambda x: x.float() if x is not None else None)
    o, ht = fused_recurrent_gated_delta_rule(f(q), f(k), f(v), g=f(g), gv=f(gv), beta=f(beta),
                                             initial_state=f(h0), output_final_state=True)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)


def test_g_and_gk_together_decay_both():
    """fla's kernel applies exp(g) and exp(gk) one after the other; the port multiplies them once."""
    B, T, H, K, V = 1, 3, 2, 16, 16
    q, k, v, g, beta, h0 = step_inputs(B, T, H, H, K, V)
    gk = F.logsigmoid(torch.randn(B, T, H, K, dtype=D))
    o, ht = fused_recurrent_gated_delta_rule(q, k, v, g=g, gk=gk, beta=beta, initial_state=h0,
                                             output_final_state=True, use_qk_l2norm_in_kernel=True)
    o2, ht2 = fused_recurrent_gated_delta_rule(q, k, v, gk=gk + g.unsqueeze(-1), beta=beta, initial_state=h0,
                                               output_final_state=True, use_qk_l2norm_in_kernel=True)
    torch.testing.assert_close(o, o2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ht, ht2, rtol=1e-6, atol=1e-6)      # the final state is fp32


def test_decode_chain_equals_full_run():
    """T one-token calls, each resuming from the last final state, equal one call over T tokens."""
    B, T, H, HV, K, V = 2, 9, 2, 4, 32, 32
    q, k, v, g, beta, h0 = (x.float() for x in step_inputs(B, T, H, HV, K, V, gate="gk"))
    o_full, ht_full = fused_recurrent_kda(q, k, v, g, beta=beta, initial_state=h0, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True)
    state, outs = h0, []
    for t in range(T):
        o, state = fused_recurrent_kda(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], g[:, t:t + 1],
                                       beta=beta[:, t:t + 1], initial_state=state, output_final_state=True,
                                       use_qk_l2norm_in_kernel=True)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), o_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, ht_full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T", [1, 5])
def test_initial_state_is_read_only_and_final_state_is_new(T):
    """fla writes the final state to a new tensor; the port computes in it and never writes h0."""
    q, k, v, g, beta, h0 = (x.float() for x in step_inputs(2, T, 2, 2, 16, 16))
    before = h0.clone()
    o, ht = fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True)
    assert torch.equal(h0, before)
    assert ht.data_ptr() != h0.data_ptr() and not torch.equal(ht, h0)
    # without a final state asked for, the output is the same
    o2, none = fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0)
    assert none is None and torch.equal(o, o2) and torch.equal(h0, before)


@pytest.mark.parametrize("grad", [False, True])
def test_strided_inputs_give_the_same_step(grad):
    """The no-autograd path takes any strides (the autograd path gets contiguous copies from
    input_guard); both give the contiguous inputs' result."""
    B, H, K, V = 2, 4, 16, 16
    q, k, v, g, beta, h0 = (x.float() for x in step_inputs(B, 1, H, H, K, V))
    # the same values behind transposed / sliced storage
    qs = q.transpose(0, 2).contiguous().transpose(0, 2)
    vs = torch.cat([v, v], -1)[..., :V]
    h0s = h0.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not (qs.is_contiguous() or vs.is_contiguous() or h0s.is_contiguous())
    ref = fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True,
                                           use_qk_l2norm_in_kernel=True)
    if grad:
        qs = qs.detach().requires_grad_()
    got = fused_recurrent_gated_delta_rule(qs, k, vs, g=g, beta=beta, initial_state=h0s, output_final_state=True,
                                           use_qk_l2norm_in_kernel=True)
    assert (got[0].grad_fn is not None) == grad
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)


def test_fp64_and_bf16_steps():
    q, k, v, g, beta, h0 = step_inputs(1, 1, 2, 2, 16, 16)
    o64, ht64 = fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True)
    assert o64.dtype == torch.float64 and ht64.dtype == torch.float32     # fla's final state is fp32
    bf = (lambda x: x.to(torch.bfloat16))
    o16, ht16 = fused_recurrent_gated_delta_rule(bf(q), bf(k), bf(v), g=g.float(), beta=bf(beta),
                                                 initial_state=h0.float(), output_final_state=True)
    assert o16.dtype == torch.bfloat16 and ht16.dtype == torch.float32
    assert_rms("o bf16", o64, o16.double(), 2e-2)
    assert_rms("ht bf16", ht64.double(), ht16.double(), 2e-2)


# ---- the thread policy -----------------------------------------------------------------------------------

def threads_seen_by_bmm(monkeypatch, call):
    """Run ``call`` and return the intra-op thread counts the op's batched matmuls ran under."""
    seen = []
    real_bmm = torch.bmm

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_bmm(*args, **kwargs)

    monkeypatch.setattr(fr_module.torch, "bmm", spy)
    call()
    monkeypatch.setattr(fr_module.torch, "bmm", real_bmm)
    return seen


def test_small_step_runs_single_threaded_and_restores(monkeypatch, two_threads):
    q, k, v, g, beta, h0 = (x.float() for x in step_inputs(1, 1, 2, 2, 16, 16))
    seen = threads_seen_by_bmm(monkeypatch, lambda: fused_recurrent_gated_delta_rule(
        q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_batched_step_with_a_large_state_is_small_work(monkeypatch, two_threads):
    """The state counts a quarter of its elements (recurrent_state_work): B=8 with 16 heads of
    128 x 128 (2^21 elements, 8 MB) is still small work by default, as a GEMV of that size, and above
    TINY_WORK: with ``MYFLA_SMALL_WORK_THREADS=one`` it runs on one thread; measured (the default),
    its first call runs on one thread and its second on the caller's threads."""
    B, H, K = 8, 16, 128
    assert B * H * K * K == threads.SMALL_WORK == 2 ** 21
    assert threads.recurrent_state_work(B * H * K * K) >= threads.TINY_WORK
    q, k, v, beta = (torch.randn(B, 1, H, K), torch.randn(B, 1, H, K), torch.randn(B, 1, H, K),
                     torch.rand(B, 1, H))
    g, h0 = F.logsigmoid(torch.randn(B, 1, H)), torch.randn(B, H, K, K) * 0.01

    def step():
        return fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0,
                                                output_final_state=True, use_qk_l2norm_in_kernel=True)
    monkeypatch.setattr(threads, "SMALL_WORK_THREADS", "one")
    assert set(threads_seen_by_bmm(monkeypatch, step)) == {1}
    monkeypatch.setattr(threads, "SMALL_WORK_THREADS", "measure")
    assert set(threads_seen_by_bmm(monkeypatch, step)) == {1}
    assert set(threads_seen_by_bmm(monkeypatch, step)) == {2}
    assert threads.recurrent_state_work(2 ** 23) == 2 ** 21
    assert torch.get_num_threads() == 2


def test_large_step_and_policy_off_keep_threads(monkeypatch, two_threads):
    q, k, v, g, beta, h0 = (x.float() for x in step_inputs(1, 1, 2, 2, 16, 16))
    call = (lambda: fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0))
    # the state (512 elements, counted as a quarter: recurrent_state_work) is no longer small
    previous = threads.set_small_work(threads.recurrent_state_work(2 * 16 * 16))
    try:
        assert set(threads_seen_by_bmm(monkeypatch, call)) == {2}
        threads.set_small_work(0)
        assert set(threads_seen_by_bmm(monkeypatch, call)) == {2}
    finally:
        threads.set_small_work(previous)
    assert torch.get_num_threads() == 2


def test_policy_nesting_devices_and_errors(two_threads):
    with threads.small_work_single_threaded(10, torch.device("cpu")):
        assert torch.get_num_threads() == 1
        with threads.small_work_single_threaded(10):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1              # the inner block does not restore early
    assert torch.get_num_threads() == 2
    with threads.small_work_single_threaded(10, torch.device("cuda")):   # other devices: untouched
        assert torch.get_num_threads() == 2
    with threads.small_work_single_threaded(threads.SMALL_WORK, torch.device("cpu")):
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with threads.small_work_single_threaded(10):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 2                  # restored on the way out of an exception
    with pytest.raises(ValueError, match="must be >= 0"):
        threads.set_small_work(-1)


@pytest.mark.skipif("ATen parallel backend: OpenMP" not in torch.__config__.parallel_info(),
                    reason="the OpenMP team size is per thread; other backends share one pool")
def test_policy_is_per_thread(two_threads):
    """With OpenMP, torch.set_num_threads sets the calling thread's team size: a block in one
    Python thread leaves another thread's parallel regions alone, and each restores its own."""
    inside, release = threading.Event(), threading.Event()
    seen = []

    def worker():
        with threads.small_work_single_threaded(10):
            seen.append(torch.get_num_threads())
            inside.set()
            release.wait(5)
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(5)
    assert torch.get_num_threads() == 2
    with threads.small_work_single_threaded(10):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    release.set()
    t.join(5)
    assert seen == [1, 2] and torch.get_num_threads() == 2


@pytest.mark.parametrize("layer_cls", ["GatedDeltaNet", "KimiDeltaAttention"])
def test_layer_decoding_runs_single_threaded_when_small(monkeypatch, two_threads, layer_cls):
    """A small layer's decoding call (projections, conv step, gate, norm, recurrence) runs on one
    intra-op thread; a prefill longer than 64 tokens, or a layer whose weights are large, keeps the
    caller's threads; the output agrees within fp32 rounding."""
    import myfla.layers as layers
    from myfla.models.utils import Cache

    torch.manual_seed(0)
    layer = getattr(layers, layer_cls)(hidden_size=64, head_dim=16, num_heads=2, layer_idx=0).eval()
    seen = []
    real_linear = F.linear

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_linear(*args, **kwargs)

    monkeypatch.setattr(torch.nn.modules.linear.F, "linear", spy)
    x = torch.randn(2, 70, 64)
    with torch.no_grad():
        cache = Cache()
        layer(x[:, :66], past_key_values=cache, use_cache=True)       # prefill: chunk path, 66 tokens
        assert seen and set(seen) == {2}
        seen.clear()
        o_small, _, _ = layer(x[:, 66:67], past_key_values=cache, use_cache=True)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        seen.clear()
        cache_big = Cache()
        # the weights are no longer small
        previous = threads.set_small_work(threads.largest_parameter(layer) // threads.MEMORY_BOUND_SHARE)
        try:
            layer(x[:, :66], past_key_values=cache_big, use_cache=True)
            o_big, _, _ = layer(hidden_states=x[:, 66:67], past_key_values=cache_big, use_cache=True)
        finally:
            threads.set_small_work(previous)
        assert set(seen) == {2}
    torch.testing.assert_close(o_small, o_big)                        # fp32 rounding (thread splits)
