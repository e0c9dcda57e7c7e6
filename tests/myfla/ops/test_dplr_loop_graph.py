"""The DPLR state loops as ``run_loop`` bodies (``myfla.ops.utils.loop_graph``): on CUDA tensors
``chunk_dplr_delta_rule`` / ``chunk_rwkv7`` run their forward and backward chunk loops through
``run_loop`` (recorded as CUDA graphs from a shape's second call on, one launch per loop afterwards).

On the CPU: the bodies fill every output from their inputs alone (outputs start as NaN) and give
``fwd_h_into`` / ``bwd_dhu_into``'s results bit for bit. On a CUDA device (skipped elsewhere): three
calls of forward+backward (met, recorded, replayed) equal the graphs-off results bit for bit and
fla's naive recurrence in fp64 (loaded by file path), and after recording, the host launches of a
forward+backward are the same at two sequence lengths.
"""

from __future__ import annotations

import pytest
import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_h_bwd import _bwd_dhu_steps, bwd_dhu_into
from myfla.ops.generalized_delta_rule.dplr.chunk_h_fwd import _fwd_h_steps, fwd_h_into
from myfla.ops.utils import loop_graph
from tests.myfla.ops.test_dplr import G_TOL, NAMES, O_TOL, make_inputs, oracle, ref  # noqa: F401  (fixture)
from tests.numerics import assert_rms


def _grid_inputs(NC=5, NH=3, BT=8, K=16, V=12, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return torch.randn(*shape, generator=gen) * s
    return dict(kg=rnd(NC, NH, BT, K, s=0.3), v=rnd(NC, NH, BT, V), w=rnd(NC, NH, BT, K, s=0.3),
                bg=rnd(NC, NH, BT, K, s=0.3), g_last=-torch.rand(NC, NH, K, generator=gen),
                h0=rnd(NH, K, V), u=rnd(NC, NH, BT, V), qg=rnd(NC, NH, BT, K), do=rnd(NC, NH, BT, V),
                dv=rnd(NC, NH, BT, V), dht=rnd(NH, K, V))


def _forward_in_place(x):
    """``(states, v_new)`` of the in-place forward loop ``fwd_h_into`` on ``_grid_inputs``."""
    NC, NH, BT, K = x['kg'].shape
    states = torch.empty(NC + 1, NH, K, x['v'].shape[-1])
    states[0] = x['h0']
    v_new = x['u'].clone()
    fwd_h_into(x['kg'], x['v'], x['w'], x['bg'], x['g_last'], states, v_new)
    return states, v_new


def test_forward_loop_body_fills_its_outputs_from_its_inputs():
    x = _grid_inputs()
    states, v_new = _forward_in_place(x)
    outs = {'states': torch.full_like(states, float('nan')), 'v_new': torch.full_like(v_new, float('nan'))}
    _fwd_h_steps(x, outs)
    assert torch.equal(outs['states'], states) and torch.equal(outs['v_new'], v_new)


def test_run_loop_into_fills_the_callers_buffers():
    """``loop_graph.run_loop_into`` (the path the CUDA wrappers take; on the CPU ``run_loop`` runs the
    body once on fresh outputs): strided inputs, results copied into the caller's buffers, equal to the
    in-place loop bit for bit."""
    x = _grid_inputs()
    states, v_new = _forward_in_place(x)
    wide = {n: torch.cat((t, t), -1)[..., :t.shape[-1]] for n, t in x.items()}       # strided views
    targets = {'states': torch.full_like(states, float('nan')), 'v_new': torch.full_like(v_new, float('nan'))}
    loop_graph.run_loop_into('test_fwd_h', _fwd_h_steps, wide, targets, torch.device('cpu'))
    assert torch.equal(targets['states'], states) and torch.equal(targets['v_new'], v_new)


def test_backward_loop_body_fills_its_outputs_from_its_inputs():
    x = _grid_inputs()
    NC, NH, BT, K = x['qg'].shape
    V = x['do'].shape[-1]
    dstates = torch.empty(NC + 1, NH, K, V)
    dstates[NC] = x['dht']
    dv2 = torch.empty(NC, NH, BT, V)
    bwd_dhu_into(x['qg'], x['bg'], x['w'], x['g_last'], x['do'], x['dv'], dstates, dv2)
    outs = {'dstates': torch.full((NC + 1, NH, K, V), float('nan')), 'dv2': torch.full((NC, NH, BT, V), float('nan'))}
    _bwd_dhu_steps(x, outs)
    assert torch.equal(outs['dstates'], dstates) and torch.equal(outs['dv2'], dv2)



def test_one_token_step_body_equals_the_recurrence():
    """``step_replayed`` on CPU tensors (where ``run_loop`` runs its body once on fresh outputs) gives
    the token loop's result bit for bit, for the DPLR op and for RWKV-7's (vectors formed in the body)."""
    from myfla.ops.generalized_delta_rule.dplr.fused_recurrent import _given_vectors, _recurrence, step_replayed
    from myfla.ops.rwkv7.fused_recurrent import _dplr_vectors
    q, k, v, a, b, gk, h0 = make_inputs(3, 1, 2, 32, 48, rwkv=True)
    o_ref, h_ref = _recurrence(q, k, v, a, b, gk, 0.5, h0, True, False, None)
    o, h = step_replayed('dplr', _given_vectors, q, k, v, {'a': a, 'b': b}, gk, 0.5, h0, True)
    assert torch.equal(o, o_ref) and torch.equal(h, h_ref)
    kk, a_rwkv = -a, torch.rand(a.shape)
    o_ref, h_ref = _recurrence(q, k, v, -kk, kk * a_rwkv, gk, 0.5, h0, True, False, None)
    o, h = step_replayed('rwkv7', _dplr_vectors, q, k, v, {'kk': kk, 'a': a_rwkv}, gk, 0.5, h0, False)
    assert torch.equal(o, o_ref) and h is None

def _fwd_bwd_cuda(xs, do, dht):
    from myfla.ops.generalized_delta_rule import chunk_dplr_delta_rule
    dev = torch.device('cuda')
    leaves = [x.detach().to(dev).requires_grad_() for x in xs]
    o, S = chunk_dplr_delta_rule(*leaves[:6], scale=1.0, initial_state=leaves[6], output_final_state=True)
    ((o * do.to(dev)).sum() + (S * dht.to(dev)).sum()).backward()
    return [t.detach().cpu() for t in (o, S, *(x.grad for x in leaves))]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_loops_match_eager_and_fla_naive(ref):
    xs = make_inputs(2, 200, 2, 32, 32, rwkv=True)
    do, dht = torch.randn(2, 200, 2, 32), torch.randn(2, 2, 32, 32)
    loop_graph.release()
    loop_graph.ENABLED = False
    try:
        eager = _fwd_bwd_cuda(xs, do, dht)
    finally:
        loop_graph.ENABLED = True
    # the first call meets the loops eagerly, the second records them (the backward's recompute of the
    # forward may already record the forward loop in the first), the third only replays
    runs = [_fwd_bwd_cuda(xs, do, dht) for _ in range(2)]
    before = dict(loop_graph.stats)
    runs.append(_fwd_bwd_cuda(xs, do, dht))
    assert loop_graph.stats['recorded'] == before['recorded'] and loop_graph.stats['eager'] == before['eager']
    assert loop_graph.stats['replayed'] - before['replayed'] >= 2      # the forward and the backward loop
    for run in runs:
        for a, b in zip(eager, run):
            assert torch.equal(a, b)
    o_ref, S_ref, g_ref = oracle(ref, xs, 1.0, do, dht)
    o, S, *grads = runs[-1]
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)
    for name, r, g in zip(NAMES, g_ref, grads):
        assert_rms(name, r, g, G_TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_launches_do_not_grow_with_length():
    from torch.profiler import ProfilerActivity, profile
    launches = {}
    for T in (512, 2048):
        xs = make_inputs(1, T, 2, 64, 64, rwkv=True)
        do, dht = torch.randn(1, T, 2, 64), torch.randn(1, 2, 64, 64)
        for _ in range(2):                                            # eager, then recorded
            _fwd_bwd_cuda(xs, do, dht)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _fwd_bwd_cuda(xs, do, dht)
            torch.cuda.synchronize()
        launches[T] = sum(1 for e in prof.events() if e.name in (
            "cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch"))
    assert launches[512] == launches[2048], launches



def _decode_steps(op, xs, steps):
    """``steps`` one-token calls on the GPU, the state carried: ``fused_recurrent_dplr_delta_rule`` on
    ``(q, k, v, a, b, gk, h0)``, or RWKV-7's decoding op ``fused_mul_recurrent_rwkv7`` on ``(r, w, k, v,
    kk, a, h0)``."""
    from myfla.ops.generalized_delta_rule import fused_recurrent_dplr_delta_rule
    from myfla.ops.rwkv7 import fused_mul_recurrent_rwkv7
    dev = torch.device('cuda')
    *xs, h = [x.to(dev) for x in xs]
    fn = fused_recurrent_dplr_delta_rule if op == 'dplr' else fused_mul_recurrent_rwkv7
    outs = []
    for t in range(steps):
        o, h = fn(*(x[:, t:t + 1] for x in xs), scale=1.0, initial_state=h, output_final_state=True)
        outs.append(o)
    return torch.cat(outs, 1).cpu(), h.cpu()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("op", ["dplr", "rwkv7"])
def test_cuda_decode_steps_replay_and_match_fla_naive(ref, op):
    """One-token steps (decoding) replay as a CUDA graph from the second on: the outputs and the carried
    state equal the eager steps bit for bit and fla's naive recurrence over the same tokens in fp64
    (RWKV-7's op forms its DPLR vectors ``-kk``, ``kk * a`` inside the recorded step)."""
    q, k, v, a, b, gk, h0 = make_inputs(3, 6, 2, 32, 48, rwkv=True)
    if op == 'dplr':
        xs = (q, k, v, a, b, gk, h0)
    else:
        kk, a_rwkv = -a, torch.rand(a.shape, generator=torch.Generator().manual_seed(1))
        xs = (q, gk, k, v, kk, a_rwkv, h0)
        a, b = -kk, kk * a_rwkv
    loop_graph.release()
    loop_graph.ENABLED = False
    try:
        o_eager, h_eager = _decode_steps(op, xs, 6)
    finally:
        loop_graph.ENABLED = True
    before = dict(loop_graph.stats)
    o, h = _decode_steps(op, xs, 6)
    assert loop_graph.stats['recorded'] - before['recorded'] == 1
    assert loop_graph.stats['replayed'] - before['replayed'] == 4
    assert torch.equal(o, o_eager) and torch.equal(h, h_eager)
    o_ref, S_ref, _ = oracle(ref, (q, k, v, a, b, gk, h0), 1.0)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, h, O_TOL)
