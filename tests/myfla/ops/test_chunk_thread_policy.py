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


@pytest.fixture(autouse=True)
def no_stall_probe(monkeypatch):
    """These tests count threads; a busy test machine must not make the stall probe change them (the
    probe's own tests switch it on and simulate the machine), and small work runs on one thread
    (``MYFLA_SMALL_WORK_THREADS=one``; the measured choice has its tests in test_small_work_choice.py)."""
    monkeypatch.setattr(threads, "STALL_PROBE", False)
    monkeypatch.setattr(threads, "SMALL_WORK_THREADS", "one")
    monkeypatch.setattr(threads, "machine_loaded", lambda: True)


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


def _with_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("stalling_above,expected", [(2, 2), (0, 1), (8, 8)])
def test_stalled_threads_are_halved_until_the_probe_passes(monkeypatch, stalling_above, expected):
    monkeypatch.setattr(threads, "STALL_PROBE", True)
    probed = []

    def stalls(n):
        probed.append(n)
        torch.set_num_threads(n)
        return n > stalling_above
    monkeypatch.setattr(threads, "_stalls", stalls)

    def run():
        with threads.threads_unstalled(torch.device("cpu")):
            inside = torch.get_num_threads()
            with threads.threads_unstalled(torch.device("cpu")):            # nested: no second probe
                nested = torch.get_num_threads()
        return inside, nested, torch.get_num_threads()
    assert _with_threads(8, run) == (expected, expected, 8)
    assert probed == [n for n in (8, 4, 2) if n >= expected]


def test_the_stall_probe_leaves_other_devices_and_the_switch_off(monkeypatch):
    monkeypatch.setattr(threads, "_stalls", lambda n: True)
    monkeypatch.setattr(threads, "STALL_PROBE", True)
    with_cuda = _with_threads(4, lambda: _inside(threads.threads_unstalled(torch.device("cuda"))))
    monkeypatch.setattr(threads, "STALL_PROBE", False)
    switched_off = _with_threads(4, lambda: _inside(threads.threads_unstalled(torch.device("cpu"))))
    assert with_cuda == switched_off == 4


def _inside(block):
    with block:
        return torch.get_num_threads()


def test_the_real_probe_times_a_parallel_op_and_restores_nothing_itself():
    """``_stalls`` and ``machine_loaded`` run on the real machine: whatever they answer, the probe
    leaves the count it probed."""
    answer = _with_threads(2, lambda: (threads._stalls(2), torch.get_num_threads()))
    assert answer[1] == 2 and isinstance(answer[0], bool)
    assert isinstance(threads.machine_loaded(), bool)


def test_an_idle_machine_is_not_probed(monkeypatch):
    monkeypatch.setattr(threads, "STALL_PROBE", True)
    monkeypatch.setattr(threads, "machine_loaded", lambda: False)
    monkeypatch.setattr(threads, "_stalls", lambda n: pytest.fail("probed an idle machine"))
    assert _with_threads(4, lambda: _inside(threads.threads_unstalled(torch.device("cpu")))) == 4


@pytest.mark.parametrize("op", ["gdn", "kda", "rwkv7"])
def test_large_chunk_calls_probe_for_stalls(monkeypatch, op):
    """Large calls of the chunked ops (forward and backward) run the probe; small ones do not."""
    monkeypatch.setattr(threads, "STALL_PROBE", True)
    probed = []
    monkeypatch.setattr(threads, "_stalls", lambda n: probed.append(n) or False)
    torch.manual_seed(0)
    if op == "rwkv7":
        from myfla.ops.rwkv7 import chunk_rwkv7
        B, T, H, K = 1, 70, 1, 16
        r, k, v = (torch.randn(B, T, H, K, requires_grad=True) for _ in range(3))
        w = (-0.6 * torch.rand(B, T, H, K)).requires_grad_()
        kk = F.normalize(torch.randn(B, T, H, K), dim=-1)
        a, b = (-kk).requires_grad_(), (kk * 0.5).requires_grad_()

        def call():
            o, ht = chunk_rwkv7(r, w, k, v, a, b, scale=1.0, output_final_state=True)
            (o.sum() + ht.sum()).backward()
    else:
        tensors = _inputs(1, 70, 1, 16, 16, op == "kda")

        def call():
            _run(op == "kda", tensors)
    _with_threads(2, call)
    assert probed == []                                                  # small work: one thread, no probe
    previous = threads.set_small_work(1)
    try:
        _with_threads(2, call)
    finally:
        threads.set_small_work(previous)
    assert probed == [2, 2]                                              # forward, backward
