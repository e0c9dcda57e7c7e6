"""The one-token step on CUDA tensors, replayed as a CUDA graph from a shape's second call on
(``myfla.ops.utils.loop_graph``). Runs only where torch sees a CUDA device.

Oracle: fla 0.4.0 ``naive_recurrent_kda`` in fp64 on the CPU (loaded by file path), step after step
from the state the graph returned, and the eager step (graphs off) bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
from myfla.ops.kda import fused_recurrent_kda
from myfla.ops.utils import loop_graph
from tests.myfla.ops.test_fused_recurrent_decode import kda_ref, oracle  # noqa: F401  (fixture)
from tests.numerics import assert_rms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(op, B, H, HV, K, V, gen):
    """One token: q/k/v/g/beta in fp64 on the CPU."""
    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    g = F.logsigmoid(rnd(B, 1, HV) if op == "gdn" else rnd(B, 1, HV, K))
    return rnd(B, 1, H, K), rnd(B, 1, H, K), rnd(B, 1, HV, V), g, torch.rand(B, 1, HV, generator=gen,
                                                                               dtype=torch.float64)


def _call(op, q, k, v, g, beta, h0, dev, dtype, strided=False):
    """The op on the GPU; with ``strided``, q/k/v/g/beta are views into wider GPU tensors, as a fused
    projection hands them over."""
    def to(x):
        if strided:
            return torch.cat((x, x), -1).to(dev, dtype)[..., :x.shape[-1]]
        return x.to(dev, dtype)
    kw = dict(beta=to(beta), initial_state=None if h0 is None else h0.to(dev, torch.float32),
              output_final_state=True, use_qk_l2norm_in_kernel=True)
    if op == "gdn":
        return fused_recurrent_gated_delta_rule(to(q), to(k), to(v), g=to(g), **kw)
    return fused_recurrent_kda(to(q), to(k), to(v), to(g), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,H,HV,K,V,strided", [(1, 4, 4, 64, 64, False), (3, 2, 4, 32, 48, True)])
@pytest.mark.parametrize("op", ["gdn", "kda"])
def test_replayed_steps_match_eager_and_naive(kda_ref, op, B, H, HV, K, V, strided, dtype):
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    loop_graph.release()
    before = dict(loop_graph.stats)
    h_graph = h_eager = None
    h_ref = torch.zeros(B, HV, K, V, dtype=torch.float64)
    for step in range(5):
        x = _inputs(op, B, H, HV, K, V, gen)
        o_g, h_graph = _call(op, *x, h_graph, dev, dtype, strided)
        loop_graph.ENABLED = False
        try:
            o_e, h_eager = _call(op, *x, h_eager, dev, dtype, strided)
        finally:
            loop_graph.ENABLED = True
        assert o_g.dtype == dtype and o_g.shape == (B, 1, HV, V) and h_graph.dtype == torch.float32
        torch.testing.assert_close(o_g, o_e, rtol=0, atol=0)
        torch.testing.assert_close(h_graph, h_eager, rtol=0, atol=0)
        xr = [t.to(dtype).double() for t in x]                  # the oracle sees the rounded inputs
        o_ref, h_ref = oracle(kda_ref, *xr, h_ref, HV // H, K)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert_rms("o", o_ref, o_g.cpu(), tol)
        assert_rms("ht", h_ref, h_graph.cpu(), 1e-5)
        h_ref = h_graph.cpu().double()          # the next step starts from the state returned
    # step 0 (no initial state) is a shape of its own, run eagerly; the state-carrying steps are
    # (steps 1-4) eager (first seen), recorded, then replayed twice
    assert loop_graph.stats["recorded"] - before["recorded"] == 1
    assert loop_graph.stats["replayed"] - before["replayed"] == 2
    # what a call returns is its own: a later replay does not overwrite it
    o_keep = o_g.clone()
    _call(op, *_inputs(op, B, H, HV, K, V, gen), h_graph, dev, dtype, strided)
    torch.testing.assert_close(o_g, o_keep, rtol=0, atol=0)


def test_step_inside_the_callers_graph_capture_runs_eagerly(kda_ref):
    """A caller that captures its own CUDA graph around a decoding step (static-cache generation) gets
    the eager ops captured into its graph; myfla records nothing of its own there."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(1)
    B, H, K = 2, 2, 32
    x = [t.to(dev, torch.float32) for t in _inputs("kda", B, H, H, K, K, gen)]
    h0 = torch.randn(B, H, K, K, generator=gen).to(dev) * 0.1
    loop_graph.release()
    for _ in range(2):                           # warm (and would record, were it not captured)
        fused_recurrent_kda(*x[:4], beta=x[4], initial_state=h0, output_final_state=True,
                            use_qk_l2norm_in_kernel=True)
    torch.cuda.synchronize()
    recorded = loop_graph.stats["recorded"]
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            o, ht = fused_recurrent_kda(*x[:4], beta=x[4], initial_state=h0, output_final_state=True,
                                        use_qk_l2norm_in_kernel=True)
    torch.cuda.current_stream().wait_stream(side)
    graph.replay()
    torch.cuda.synchronize()
    assert loop_graph.stats["recorded"] == recorded
    o_ref, h_ref = oracle(kda_ref, *[t.cpu().double() for t in x], h0.cpu().double(), 1, K)
    assert_rms("o", o_ref, o.cpu(), 1e-5)
    assert_rms("ht", h_ref, ht.cpu(), 1e-5)


def test_packed_one_token_sequences_replay_as_the_batch(kda_ref):
    """One token for each of N packed sequences (B = 1, T = N, unit-length cu_seqlens), replayed:
    equal to the batched step, and to fla's naive recurrence."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(2)
    N, H, K = 3, 2, 32
    loop_graph.release()
    cu = torch.arange(N + 1, device=dev)
    h_packed = h_batch = torch.randn(N, H, K, K, generator=gen).to(dev) * 0.1
    for _ in range(4):                          # eager, recorded, replayed x2
        x = [t.to(dev, torch.float32) for t in _inputs("kda", N, H, H, K, K, gen)]
        flat = [t.transpose(0, 1) for t in x]
        o_p, h_next = fused_recurrent_kda(*flat[:4], beta=flat[4], initial_state=h_packed, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
        o_b, h_batch_next = fused_recurrent_kda(*x[:4], beta=x[4], initial_state=h_batch, output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
        torch.testing.assert_close(o_p, o_b.transpose(0, 1), rtol=0, atol=0)
        torch.testing.assert_close(h_next, h_batch_next, rtol=0, atol=0)
        o_ref, h_ref = oracle(kda_ref, *[t.cpu().double() for t in x], h_batch.cpu().double(), 1, K)
        assert_rms("o", o_ref, o_b.cpu(), 1e-5)
        assert_rms("ht", h_ref, h_batch_next.cpu(), 1e-5)
        h_packed, h_batch = h_next, h_batch_next
    assert loop_graph.stats["replayed"] >= 2
