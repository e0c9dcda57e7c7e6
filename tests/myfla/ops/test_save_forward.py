"""The chunked ops' backward reads the forward's intermediates within a byte budget (MYFLA_SAVE_MB,
``myfla.ops.utils.save_budget``) and recomputes them as fla does beyond it: both paths must give the
same gradients bit for bit (one thread: the same functions on the same inputs), the budget must be
honoured and accounted honestly, and kept tensors must never be handed out again by the workspace
pool while the graph holds them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import myfla.ops.gated_delta_rule.chunk as gdn_chunk
import myfla.ops.kda.chunk as kda_chunk
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
from myfla.ops.kda import chunk_kda
from myfla.ops.utils import save_budget, workspace

OPS = {'kda': (chunk_kda, kda_chunk), 'gdn': (chunk_gated_delta_rule, gdn_chunk)}
NAMES = ['o', 'ht', 'dq', 'dk', 'dv', 'dg', 'dbeta', 'dh0']


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(op, B, T, H, K, V, HV=None, dtype=torch.float32, seed=0):
    HV = HV or H
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)
    q, k = F.normalize(randn(B, T, H, K), dim=-1), F.normalize(randn(B, T, H, K), dim=-1)
    v, beta = randn(B, T, HV, V), torch.rand(B, T, HV, generator=gen).sigmoid()
    g = F.logsigmoid(randn(B, T, HV, K)) / 16 if op == 'kda' else F.logsigmoid(randn(B, T, HV))
    h0 = randn(B, HV, K, V)
    do, dht = randn(B, T, HV, V), randn(B, HV, K, V)
    return [x.to(dtype) for x in (q, k, v, g, beta, h0)], do.to(dtype), dht


def run(op, xs, do, dht, cu_seqlens=None, use_l2=False, h0=True):
    fn = OPS[op][0]
    leaves = [x.clone().requires_grad_() for x in xs]
    if cu_seqlens is not None:
        leaves[5] = leaves[5][:1].expand(len(cu_seqlens) - 1, *leaves[5].shape[1:]).clone().detach().requires_grad_()
        dht = dht[:1].expand_as(leaves[5])
    o, ht = fn(*leaves[:5], initial_state=leaves[5] if h0 else None, output_final_state=True,
               use_qk_l2norm_in_kernel=use_l2, cu_seqlens=cu_seqlens)
    torch.autograd.backward((o, ht), (do, dht))
    return [o, ht] + [x.grad for x in leaves]


class Calls:
    """Counts the calls of ``recompute_w_u_fwd`` and ``chunk_gated_delta_rule_fwd_h`` in an op
    module (the functions the backward skips when it reads the forward's intermediates)."""

    def __init__(self, monkeypatch, module):
        self.count = {'recompute_w_u_fwd': 0, 'chunk_gated_delta_rule_fwd_h': 0}
        for name in self.count:
            monkeypatch.setattr(module, name, self._counted(name, getattr(module, name)))

    def _counted(self, name, fn):
        def counted(*args, **kwargs):
            self.count[name] += 1
            return fn(*args, **kwargs)
        return counted


def assert_equal(saved, recomputed):
    for name, a, b in zip(NAMES, saved, recomputed):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), f"{name}: max |diff| {(a - b).abs().max().item():.3g}"


CASES = [
    # (B, T, H, K, V, HV, cu_seqlens, use_l2, h0)
    pytest.param(2, 200, 2, 32, 48, None, None, False, True, id='padded-batch'),
    pytest.param(1, 256, 2, 64, 32, None, None, True, False, id='whole-chunks-l2'),
    pytest.param(1, 190, 2, 32, 32, 4, None, False, True, id='gva'),
    pytest.param(1, 300, 2, 32, 32, None, [0, 70, 200, 300], False, True, id='varlen'),
]


@pytest.mark.parametrize('op', ['kda', 'gdn'])
@pytest.mark.parametrize('B,T,H,K,V,HV,cu,use_l2,h0', CASES)
def test_saved_equals_recomputed(monkeypatch, op, B, T, H, K, V, HV, cu, use_l2, h0):
    module = OPS[op][1]
    xs, do, dht = make_inputs(op, B, T, H, K, V, HV)
    cu = torch.tensor(cu, dtype=torch.long) if cu is not None else None
    calls = Calls(monkeypatch, module)
    saved = run(op, xs, do, dht, cu, use_l2, h0)
    # the forward ran each once; the backward read them
    assert calls.count == {'recompute_w_u_fwd': 1, 'chunk_gated_delta_rule_fwd_h': 1}
    monkeypatch.setattr(save_budget, 'SAVE_BYTES', 0)
    recomputed = run(op, xs, do, dht, cu, use_l2, h0)
    # budget 0: fla's recompute, once more each in the backward
    assert calls.count == {'recompute_w_u_fwd': 3, 'chunk_gated_delta_rule_fwd_h': 3}
    assert_equal(saved, recomputed)


def test_gdn_time_segments_keep_every_segment(monkeypatch):
    """Tiny time segments (2 chunks each, the last partial): every segment keeps its own
    intermediates (the first ones, where the budget holds only some), and the gradients equal the
    recompute's."""
    monkeypatch.setattr(gdn_chunk, '_MIN_SEGMENT_CHUNKS', 1)
    monkeypatch.setattr(gdn_chunk, '_SEGMENT_BYTES', 128 * 2 * 2 * 32 * 4)
    assert len(gdn_chunk._time_segments(2, 300, 2, 32, None)) == 3
    xs, do, dht = make_inputs('gdn', 2, 300, 2, 32, 32)
    calls = Calls(monkeypatch, gdn_chunk)
    saved = run('gdn', xs, do, dht)
    assert calls.count == {'recompute_w_u_fwd': 3, 'chunk_gated_delta_rule_fwd_h': 3}
    monkeypatch.setattr(save_budget, 'SAVE_BYTES', 0)
    assert_equal(saved, run('gdn', xs, do, dht))
    assert calls.count == {'recompute_w_u_fwd': 9, 'chunk_gated_delta_rule_fwd_h': 9}
    # a budget for the first two segments: the backward recomputes the third only
    k, v = xs[1], xs[2]
    segments = gdn_chunk._time_segments(2, 300, 2, 32, None)
    two = sum(gdn_chunk._kept_bytes(k[:, s:e], v[:, s:e], None) for s, e in segments[:2])
    monkeypatch.setattr(save_budget, 'SAVE_BYTES', two)
    assert_equal(saved, run('gdn', xs, do, dht))
    assert calls.count == {'recompute_w_u_fwd': 13, 'chunk_gated_delta_rule_fwd_h': 13}


@pytest.mark.parametrize('op', ['kda', 'gdn'])
def test_bf16_saved_equals_recomputed(monkeypatch, op):
    xs, do, dht = make_inputs(op, 1, 150, 2, 32, 32, dtype=torch.bfloat16)
    saved = run(op, xs, do, dht)
    monkeypatch.setattr(save_budget, 'SAVE_BYTES', 0)
    assert_equal(saved, run(op, xs, do, dht))


@pytest.mark.parametrize('op', ['kda', 'gdn'])
def test_budget_is_per_call_and_exact(monkeypatch, op):
    """A call whose intermediates exceed the budget by a byte recomputes; one that fits exactly keeps."""
    module = OPS[op][1]
    xs, do, dht = make_inputs(op, 1, 130, 2, 32, 32)
    nbytes = kda_chunk._kept_bytes(xs[0], xs[1], xs[2], None) if op == 'kda' else \
        gdn_chunk._kept_bytes(xs[1], xs[2], None)
    calls = Calls(monkeypatch, module)
    monkeypatch.setattr(save_budget, 'SAVE_BYTES', nbytes - 1)
    run(op, xs, do, dht)
    assert calls.count['recompute_w_u_fwd'] == 2
    monkeypatch.setattr(save_budget, 'SAVE_BYTES', nbytes)
    run(op, xs, do, dht)
    assert calls.count['recompute_w_u_fwd'] == 3


def _storage(t):
    # untyped_storage arrived in torch 2.0 (the runtime floor is 1.13)
    return t.untyped_storage() if hasattr(t, 'untyped_storage') else t.storage()


def _storage_nbytes(t):
    s = _storage(t)
    return s.nbytes() if hasattr(s, 'nbytes') else s.size() * t.element_size()


def _kept(o, n_inputs_saved):
    """The kept intermediates: what the op's autograd node saved beyond its own inputs' tensors."""
    return list(o.grad_fn.saved_tensors[n_inputs_saved:])


@pytest.mark.parametrize('op', ['kda', 'gdn'])
@pytest.mark.parametrize('B,T,cu', [(2, 256, None), (2, 200, None), (1, 300, [0, 70, 200, 300])])
def test_kept_bytes_account_for_every_kept_storage(op, B, T, cu):
    """The budget is charged for the memory the kept tensors hold (each storage whole, once): the
    estimate bounds it, and equals it for whole chunks of fp32 inputs."""
    xs, _, _ = make_inputs(op, B, T, 2, 32, 48)
    cu = torch.tensor(cu, dtype=torch.long) if cu is not None else None
    leaves = [x.clone().requires_grad_() for x in xs]
    h0 = leaves[5] if cu is None else leaves[5][:1].expand(3, -1, -1, -1)
    o, _ = OPS[op][0](*leaves[:5], initial_state=h0, output_final_state=True, cu_seqlens=cu)
    # KDA saves 11 tensors of its own, GDN 10 (one segment here: no boundary states)
    kept = _kept(o, 11 if op == 'kda' else 10)
    assert len(kept) == (5 if op == 'kda' else 3)
    storages = {(_storage(t).data_ptr()): _storage_nbytes(t) for t in kept}
    held = sum(storages.values())
    estimate = kda_chunk._kept_bytes(xs[0], xs[1], xs[2], cu) if op == 'kda' else \
        gdn_chunk._kept_bytes(xs[1], xs[2], cu)
    assert held <= estimate
    if T % 64 == 0 and cu is None:
        assert held == estimate


@pytest.mark.parametrize('op', ['kda', 'gdn'])
def test_nothing_is_kept_without_grad(monkeypatch, op):
    """Inputs without grad, or grad disabled: nothing is kept (no autograd node), and KDA's forward
    does not form q's gated product, which only the backward reads."""
    module = OPS[op][1]
    xs, _, _ = make_inputs(op, 1, 128, 2, 32, 32)
    calls = Calls(monkeypatch, module)
    monkeypatch.setattr(module, 'recompute_w_u_fwd', _refuse_q(module.recompute_w_u_fwd))
    o, _ = OPS[op][0](*xs[:5], initial_state=xs[5])
    assert o.grad_fn is None
    leaves = [x.clone().requires_grad_() for x in xs]
    with torch.no_grad():
        o, _ = OPS[op][0](*leaves[:5], initial_state=leaves[5])
    assert o.grad_fn is None
    assert calls.count == {'recompute_w_u_fwd': 2, 'chunk_gated_delta_rule_fwd_h': 2}


def _refuse_q(fn):
    def checked(*args, **kwargs):
        assert kwargs.get('q') is None
        return fn(*args, **kwargs)
    return checked


@pytest.mark.parametrize('op', ['kda', 'gdn'])
def test_retained_graph_backward_twice(op):
    """A second backward through a retained graph reads the same kept tensors: same gradients."""
    xs, do, dht = make_inputs(op, 1, 150, 2, 32, 32)
    leaves = [x.clone().requires_grad_() for x in xs]
    o, ht = OPS[op][0](*leaves[:5], initial_state=leaves[5], output_final_state=True)
    loss = (o * do).sum() + (ht * dht).sum()
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif(not hasattr(torch._C, '_storage_Use_Count'),
                    reason='the workspace pool is off on this torch (no storage use counts)')
@pytest.mark.parametrize('op', ['kda', 'gdn'])
def test_pool_never_hands_out_kept_buffers(op):
    """Between forward and backward, buffers of the kept tensors' sizes drawn from the pool never
    alias them, and the kept values survive other calls of the op."""
    workspace.release()
    xs, do, dht = make_inputs(op, 1, 512, 4, 64, 64)                    # [T, H, 64] fp32: 512 KiB
    leaves = [x.clone().requires_grad_() for x in xs]
    o, ht = OPS[op][0](*leaves[:5], initial_state=leaves[5], output_final_state=True)
    kept = _kept(o, 11 if op == 'kda' else 10)
    snapshot = [t.clone() for t in kept]
    ptrs = {_storage(t).data_ptr() for t in kept}
    assert any(_storage_nbytes(t) >= workspace.MIN_BYTES for t in kept)       # some come from the pool
    with torch.no_grad():
        workspace.begin_pass()
        try:
            drawn = [workspace.new_empty(t.shape, t.dtype, t.device) for t in kept for _ in range(2)]
        finally:
            workspace.end_pass()
        for t in drawn:
            t.fill_(float('nan'))
        assert not ptrs & {_storage(t).data_ptr() for t in drawn}
        del drawn
    OPS[op][0](*[x * 0.5 for x in xs[:5]], initial_state=xs[5])                 # another call, no grad
    for a, b in zip(kept, snapshot):
        assert torch.equal(a, b)
    torch.autograd.backward((o, ht), (do, dht))
    workspace.release()


def test_budget_from_environment(monkeypatch):
    monkeypatch.delenv('MYFLA_TEST_SAVE_MB', raising=False)
    assert save_budget.budget_bytes('MYFLA_TEST_SAVE_MB', 2048) == 2048 * 1024 * 1024
    monkeypatch.setenv('MYFLA_TEST_SAVE_MB', '0.5')
    assert save_budget.budget_bytes('MYFLA_TEST_SAVE_MB', 2048) == 512 * 1024
    monkeypatch.setenv('MYFLA_TEST_SAVE_MB', '0')
    assert save_budget.budget_bytes('MYFLA_TEST_SAVE_MB', 2048) == 0
    assert not save_budget.keeps(1, 0)
    monkeypatch.setenv('MYFLA_TEST_SAVE_MB', 'lots')
    with pytest.raises(ValueError, match=r"MYFLA_TEST_SAVE_MB='lots' is not a number of MB"):
        save_budget.budget_bytes('MYFLA_TEST_SAVE_MB', 2048)


def test_budgets_read_from_the_environment_at_import():
    """MYFLA_SAVE_MB sets the KDA/GDN budget; MYFLA_DPLR_SAVE_MB keeps setting DPLR's, as documented."""
    code = ("import myfla.ops.utils.save_budget as s, myfla.ops.generalized_delta_rule.dplr.chunk as d; "
            "print(s.SAVE_BYTES, d.SAVE_BYTES)")
    env = dict(os.environ, MYFLA_SAVE_MB='5', MYFLA_DPLR_SAVE_MB='3')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True,
                         cwd=str(Path(save_budget.__file__).parents[3]))
    assert out.stdout.split() == [str(5 * 1024 * 1024), str(3 * 1024 * 1024)]


def test_gpus_recompute_unless_the_variable_is_set(monkeypatch):
    """Off the CPU the ops recompute as fla does (GPU memory is what the recompute protects) unless
    the budget's variable is set explicitly; on the CPU the default budget keeps."""
    monkeypatch.delenv("MYFLA_SAVE_MB", raising=False)
    monkeypatch.delenv("MYFLA_DPLR_SAVE_MB", raising=False)
    assert save_budget.keeps(1024, device=torch.device("cpu"))
    assert not save_budget.keeps(1024, device=torch.device("meta"))
    assert not save_budget.keeps(1024, budget=2 ** 30, device="meta", variable="MYFLA_DPLR_SAVE_MB")
    monkeypatch.setenv("MYFLA_SAVE_MB", "2048")
    assert save_budget.keeps(1024, device=torch.device("meta"))
    assert not save_budget.keeps(1024, device="meta", variable="MYFLA_DPLR_SAVE_MB")
    monkeypatch.setenv("MYFLA_DPLR_SAVE_MB", "1")
    assert save_budget.keeps(1024, budget=2 ** 20, device="meta", variable="MYFLA_DPLR_SAVE_MB")
