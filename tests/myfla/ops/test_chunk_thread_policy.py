"""The chunked GDN and KDA ops run small calls on one intra-op thread (myfla/ops/utils/threads.py):
forward and backward, restoring the caller's thread count, with the same numbers as a run at one
thread; large calls keep the caller's threads."""
import pytest
import torch
import torch.nn.functional as F

import myfla.ops.gated_delta_rule.chunk as gdn_chunk
import myfla.ops.kda.chunk as kda_chunk
from myfla.ops.utils import threads


def _inputs(B, T, H, K, V, kda):
    g = F.logsigmoid(torch.randn(B, T, H, K if kda else 1))
    return [torch.randn(B, T, H, K, requires_grad=True), F.normalize(torch.randn(B, T, H, K), dim=-1).requires_grad_(),
            torch.randn(B, T, H, V, requires_grad=True), (g if kda else g[..., 0]).requires_grad_(),
            torch.rand(B, T, H).sigmoid().requires_grad_()]


def _run(kda, tensors):
    op = kda_chunk.chunk_kda if kda else gdn_chunk.chunk_gated_delta_rule
    o, ht = op(*tensors, output_final_state=True)
    (o.square().sum() + ht.sum()).backward()
    return [o.detach(), ht.detach()] + [t.grad for t in tensors]


@pytest.mark.parametrize("kda", [True, False], ids=["kda", "gdn"])
def test_small_calls_run_on_one_thread_and_restore_the_count(kda, monkeypatch):
    module = kda_chunk if kda else gdn_chunk
    seen = []
    for name in (["_chunk_kda_fwd", "_chunk_kda_bwd"] if kda else
                 ["_chunk_gated_delta_rule_fwd", "_chunk_gated_delta_rule_bwd"]):
        original = getattr(module, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(torch.get_num_threads())
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        _run(kda, _inputs(2, 300, 2, 32, 32, kda))
        assert seen == [1, 1]                                    # forward, backward
        assert torch.get_num_threads() == 2                      # restored
        seen.clear()
        previous = threads.set_small_work(1)                     # every call is "large" now
        try:
            _run(kda, _inputs(1, 70, 1, 16, 16, kda))
        finally:
            threads.set_small_work(previous)
        assert seen == [2, 2]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kda", [True, False], ids=["kda", "gdn"])
def test_the_policy_does_not_change_the_numbers(kda):
    torch.manual_seed(1)
    tensors = _inputs(1, 130, 2, 32, 32, kda)
    with_policy = _run(kda, tensors)
    for t in tensors:
        t.grad = None
    previous = threads.set_small_work(0)                         # policy off
    try:
        without = _run(kda, tensors)
    finally:
        threads.set_small_work(previous)
    for a, b in zip(with_policy, without):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_chunk_work_counts_the_per_chunk_states():
    k, v = torch.empty(1, 8192, 4, 128), torch.empty(1, 8192, 4, 128)
    assert threads.chunk_work(k, v) == 8192 * 4 * 128 * 2
    k, v = torch.empty(2, 300, 4, 64), torch.empty(2, 300, 4, 64)
    assert threads.chunk_work(k, v) < threads.SMALL_WORK


def _spy(monkeypatch, module, name, seen):
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)


def test_rwkv7_paths_run_small_calls_on_one_thread(monkeypatch):
    """The DPLR / RWKV-7 chunk op (forward and backward), its token recurrence and the RWKV7Attention
    layer's decoding calls follow the same policy, restoring the caller's thread count."""
    import myfla.layers.rwkv7 as rwkv7_layer
    import myfla.ops.generalized_delta_rule.dplr.chunk as dplr_chunk
    import myfla.ops.generalized_delta_rule.dplr.fused_recurrent as dplr_recurrent
    from myfla.ops.rwkv7 import chunk_rwkv7, fused_mul_recurrent_rwkv7

    seen = []
    _spy(monkeypatch, dplr_chunk, "_chunk_dplr_fwd", seen)
    _spy(monkeypatch, dplr_chunk, "dplr_bwd_grid", seen)
    _spy(monkeypatch, dplr_recurrent, "_time_major", seen)
    _spy(monkeypatch, rwkv7_layer, "fused_mul_recurrent_rwkv7", seen)
    torch.manual_seed(0)
    B, T, H, K = 1, 300, 2, 32
    r, k, v = (torch.randn(B, T, H, K, requires_grad=True) for _ in range(3))
    w = (-0.6 * torch.rand(B, T, H, K)).requires_grad_()
    kk = F.normalize(torch.randn(B, T, H, K), dim=-1)
    a, b = (-kk).requires_grad_(), (kk * 0.5).requires_grad_()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        o, ht = chunk_rwkv7(r, w, k, v, a, b, scale=1.0, output_final_state=True)
        (o.sum() + ht.sum()).backward()
        assert seen == [1, 1] and torch.get_num_threads() == 2              # forward, backward
        seen.clear()
        with torch.no_grad():
            fused_mul_recurrent_rwkv7(r[:, :3], w[:, :3], k[:, :3], v[:, :3], kk[:, :3], torch.rand(B, 3, H, K),
                                      scale=1.0, output_final_state=True)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        layer = rwkv7_layer.RWKV7Attention(hidden_size=64, head_dim=32, layer_idx=0, num_hidden_layers=2).eval()
        with torch.no_grad():
            layer(torch.randn(2, 1, 64))
        assert seen[0] == 1 and torch.get_num_threads() == 2
        seen.clear()
        previous = threads.set_small_work(1)                                # every call is "large" now
        try:
            o, ht = chunk_rwkv7(r, w, k, v, a, b, scale=1.0, output_final_state=True)
            (o.sum() + ht.sum()).backward()
        finally:
            threads.set_small_work(previous)
        assert seen == [2, 2]
    finally:
        torch.set_num_threads(before)
