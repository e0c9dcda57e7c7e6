"""The CPU buffer pool of the chunked ops must never hand out memory that a live tensor still uses."""

import pytest
import torch

from myfla.ops.utils import workspace
from myfla.ops.utils.workspace import new_empty

SHAPE = (64, 1024)          # 256 KiB of fp32: pooled

# torch 1.13 (myfla's floor) cannot report a storage's use count: there the pool is off (every
# buffer comes from torch.empty, the numbers are the same) and only the tests of reuse are skipped.
HAS_USE_COUNTS = hasattr(torch._C, '_storage_Use_Count')
reuses = pytest.mark.skipif(not HAS_USE_COUNTS, reason=f"torch {torch.__version__} has no "
                            "torch._C._storage_Use_Count: the pool is off, buffers are never reused")


@pytest.fixture(autouse=True)
def fresh_pool(monkeypatch):
    """An empty pool on this thread and a process-wide count of this test's pools only (other
    threads of the session, e.g. split_batch's workers, may hold buffers of their own)."""
    workspace.release()
    monkeypatch.setattr(workspace, '_process', {'nbytes': 0})
    yield
    workspace.release()


def test_pool_can_report_storage_use_counts():
    # without use counts the pool degrades to torch.empty; a torch that has them must enable it
    assert (workspace._UNUSED is not None) == HAS_USE_COUNTS


def test_without_use_counts_the_pool_stays_off(monkeypatch):
    monkeypatch.setattr(workspace, '_UNUSED', None)
    with torch.no_grad():
        a = new_empty(SHAPE, torch.float32, torch.device('cpu'))
        del a
        b = new_empty(SHAPE, torch.float32, torch.device('cpu'))
    assert workspace._pool.buffers == [] and b.shape == SHAPE and b.dtype == torch.float32


@reuses
def test_idle_buffer_is_reused_without_grad():
    with torch.no_grad():
        a = new_empty(SHAPE, torch.float32, torch.device('cpu'))
        ptr = a.data_ptr()
        del a
        b = new_empty(SHAPE, torch.float32, torch.device('cpu'))
    assert b.data_ptr() == ptr


@pytest.mark.parametrize('holder', ['tensor', 'view', 'slice', 'transposed'])
def test_buffer_in_use_is_not_reused(holder):
    with torch.no_grad():
        a = new_empty(SHAPE, torch.float32, torch.device('cpu')).fill_(1.0)
    keep = {'tensor': lambda: a, 'view': lambda: a.view(-1), 'slice': lambda: a[3:],
            'transposed': lambda: a.t()}[holder]()
    ptr = a.data_ptr()
    del a
    with torch.no_grad():
        b = new_empty(SHAPE, torch.float32, torch.device('cpu')).fill_(2.0)
    assert b.data_ptr() != ptr
    assert bool((keep == 1.0).all())


def test_autograd_saved_tensor_keeps_buffer():
    x = torch.randn(SHAPE, requires_grad=True)
    with torch.no_grad():
        a = new_empty(SHAPE, torch.float32, torch.device('cpu')).fill_(3.0)
    y = (x * a).sum()                       # autograd saves `a` for the backward
    ptr = a.data_ptr()
    del a
    with torch.no_grad():
        b = new_empty(SHAPE, torch.float32, torch.device('cpu')).fill_(0.0)
    assert b.data_ptr() != ptr
    y.backward()
    assert torch.equal(x.grad, torch.full(SHAPE, 3.0))


def test_grad_mode_and_small_tensors_bypass_the_pool():
    a = new_empty(SHAPE, torch.float32, torch.device('cpu'))        # grad mode on: plain torch.empty
    assert workspace._pool.buffers == []
    with torch.no_grad():
        new_empty((4, 4), torch.float32, torch.device('cpu'))
    assert workspace._pool.buffers == []
    del a


@reuses
def test_inference_buffers_are_kept_apart():
    with torch.inference_mode():
        a = new_empty(SHAPE, torch.float32, torch.device('cpu'))
        assert a.is_inference()
        ptr = a.data_ptr()
        del a
    with torch.no_grad():
        b = new_empty(SHAPE, torch.float32, torch.device('cpu'))
        b.fill_(1.0)                        # would raise if b were an inference tensor
    assert not b.is_inference() and b.data_ptr() != ptr


@reuses
def test_dtype_and_size_must_match():
    with torch.no_grad():
        a = new_empty(SHAPE, torch.float32, torch.device('cpu'))
        ptr = a.data_ptr()
        del a
        b = new_empty(SHAPE, torch.float64, torch.device('cpu'))
        c = new_empty((SHAPE[0] + 1, SHAPE[1]), torch.float32, torch.device('cpu'))
    assert b.dtype == torch.float64 and b.data_ptr() != ptr and c.data_ptr() != ptr


@reuses
def test_pool_is_bounded(monkeypatch):
    monkeypatch.setattr(workspace, 'MAX_BYTES', 3 * 256 * 1024)
    with torch.no_grad():
        held = [new_empty(SHAPE, torch.float32, torch.device('cpu')) for _ in range(5)]
    assert workspace._pool.held.nbytes <= 3 * 256 * 1024
    assert len(workspace._pool.buffers) == 3
    for t in held:                          # dropped buffers stay valid for their users
        t.fill_(1.0)


@reuses
def test_the_pools_of_all_threads_share_the_bound(monkeypatch):
    """A second thread's pool counts against the same bound: with another thread holding two of
    three buffers' worth, this thread keeps one (its newest); when that thread ends, its bytes are
    given back and this thread's pool may fill up again."""
    import threading

    monkeypatch.setattr(workspace, 'MAX_BYTES', 3 * 256 * 1024)
    filled, finish = threading.Event(), threading.Event()

    def other():
        with torch.no_grad():
            held_here = [new_empty((SHAPE[0] + 1, SHAPE[1]), torch.float32, torch.device('cpu')) for _ in range(2)]
        del held_here                                        # kept in the pool, no longer used
        filled.set()
        finish.wait(timeout=60)

    t = threading.Thread(target=other, daemon=True)
    t.start()
    try:
        filled.wait(timeout=60)
        other_bytes = workspace._process['nbytes']
        with torch.no_grad():
            held = [new_empty(SHAPE, torch.float32, torch.device('cpu')) for _ in range(3)]
        assert other_bytes == 2 * (SHAPE[0] + 1) * SHAPE[1] * 4
        assert len(workspace._pool.buffers) == 1             # over the shared bound: only the newest
    finally:
        finish.set()
        t.join()
    import gc
    gc.collect()
    assert workspace._process['nbytes'] == workspace._pool.held.nbytes   # the ended thread's given back
    del held
    with torch.no_grad():
        for _ in range(3):
            new_empty((SHAPE[0] + 2, SHAPE[1]), torch.float32, torch.device('cpu'))
    assert workspace._process['nbytes'] <= 3 * 256 * 1024 + 2 * 256 * 1024


def test_oversized_requests_bypass_the_pool(monkeypatch):
    monkeypatch.setattr(workspace, 'MAX_BYTES', 128 * 1024)
    with torch.no_grad():
        a = new_empty((1024, 64), torch.float32, torch.device('cpu'))    # 256 KiB > bound
    assert workspace._pool.buffers == [] and a.shape == (1024, 64)


@reuses
def test_chunk_ops_give_the_same_results_with_and_without_the_pool(monkeypatch):
    # a second call reuses the first call's buffers; outputs held from the first call stay intact
    from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
    torch.manual_seed(0)
    B, T, H, K = 1, 4096, 2, 64
    q, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H))
    beta = torch.rand(B, T, H)
    with torch.no_grad():
        o1, s1 = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
        kept = o1.clone()
        o2, s2 = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    assert workspace._pool.buffers, "the chunk op did not use the pool"
    assert torch.equal(o1, kept) and torch.equal(o1, o2) and torch.equal(s1, s2)
    monkeypatch.setattr(workspace, '_UNUSED', None)                     # pool off
    with torch.no_grad():
        o3, s3 = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    assert torch.equal(o1, o3) and torch.equal(s1, s3)


def test_pooled_ops_stay_differentiable_when_called_under_autograd():
    # backward helpers take out= buffers only without autograd; with grad they must not raise
    from myfla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu
    from myfla.ops.common.chunk_o import chunk_bwd_dv_local
    from myfla.ops.utils import chunk_local_cumsum
    torch.manual_seed(0)
    B, T, H, K = 1, 128, 2, 32
    q, k, do, w, dv = (torch.randn(B, T, H, K, requires_grad=True) for _ in range(5))
    g = chunk_local_cumsum(torch.nn.functional.logsigmoid(torch.randn(B, T, H)), 64)
    out = chunk_bwd_dv_local(q, k, do, g=g, scale=0.1)
    # the state recurrence runs under no_grad as fla's kernel does; it must still accept such inputs
    chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv, g=g, scale=0.1)
    c = chunk_local_cumsum(torch.randn(B, T, H, K, requires_grad=True), 64, reverse=True)
    assert out.requires_grad and c.requires_grad
    (out.sum() + c.sum()).backward()
    assert q.grad is not None and do.grad is not None


@reuses
def test_buffers_unused_for_keep_passes_are_dropped():
    """The pool keeps the working set of the recent op passes: a buffer of a shape the last
    KEEP_PASSES passes did not ask for is freed at the end of the next pass, one in use stays."""
    other = (32, 1024 * 4)                       # another size: never reused for SHAPE requests
    with torch.no_grad():
        workspace.begin_pass()
        new_empty(other, torch.float32, torch.device('cpu'))
        for n in range(workspace.KEEP_PASSES + 1):         # the pass that used it, then KEEP_PASSES more
            if n:
                workspace.begin_pass()
            a = new_empty(SHAPE, torch.float32, torch.device('cpu'))
            ptr = a.data_ptr()
            del a
            workspace.end_pass()
        sizes = [buf.numel() for buf in workspace._pool.buffers]
        assert sizes == [SHAPE[0] * SHAPE[1]], "the idle buffer outlived KEEP_PASSES passes"
        assert workspace._pool.held.nbytes == SHAPE[0] * SHAPE[1] * 4
        b = new_empty(SHAPE, torch.float32, torch.device('cpu'))
    assert b.data_ptr() == ptr


def test_chunk_op_passes_end_pool_passes():
    from myfla.ops.gated_delta_rule import chunk_gated_delta_rule

    before = workspace._pool.passes
    q, k, v = torch.randn(1, 64, 2, 16), torch.randn(1, 64, 2, 16), torch.randn(1, 64, 2, 16)
    g, beta = torch.randn(1, 64, 2).sigmoid().log(), torch.rand(1, 64, 2)
    with torch.no_grad():
        chunk_gated_delta_rule(q, k, v, g, beta)
    assert workspace._pool.passes == before + 1


@reuses
def test_buffers_handed_out_outside_passes_keep_the_former_bound(monkeypatch):
    """Callers that never end a pass (their buffers cannot age) stay within UNSCOPED_MAX_BYTES,
    least recently used first, while pass buffers may fill MAX_BYTES."""
    size = SHAPE[0] * SHAPE[1] * 4
    monkeypatch.setattr(workspace, 'UNSCOPED_MAX_BYTES', 3 * size)
    monkeypatch.setattr(workspace, 'MAX_BYTES', 10 * size)
    with torch.no_grad():
        workspace.begin_pass()
        inside = [new_empty((SHAPE[0], SHAPE[1] + n), torch.float32, torch.device('cpu')) for n in range(4)]
        workspace.end_pass()
        del inside
        outside = []
        for n in range(4):                           # (72 + n) rows each: two fit in 3 * 64 rows
            outside.append(new_empty((SHAPE[0] + 8 + n, SHAPE[1]), torch.float32, torch.device('cpu')))
            outside.pop()
    kept = sorted(buf.numel() for buf in workspace._pool.buffers)
    expected = sorted([SHAPE[0] * (SHAPE[1] + n) for n in range(4)] + [(SHAPE[0] + 8 + n) * SHAPE[1] for n in (2, 3)])
    assert kept == expected
    assert workspace._pool.unscoped_nbytes == (2 * SHAPE[0] + 21) * SHAPE[1] * 4


def _decode_ops():
    from myfla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    from myfla.ops.kda import fused_recurrent_kda
    from myfla.ops.rwkv7 import fused_recurrent_rwkv7

    def gdn(q, k, v, w, h0):
        return fused_recurrent_gated_delta_rule(q, k, v, g=w.mean(-1), beta=w.mean(-1).exp(), initial_state=h0,
                                                output_final_state=True, use_qk_l2norm_in_kernel=True)

    def kda(q, k, v, w, h0):
        return fused_recurrent_kda(q, k, v, w, beta=w.mean(-1).exp(), initial_state=h0, output_final_state=True,
                                   use_qk_l2norm_in_kernel=True)

    def rwkv7(q, k, v, w, h0):
        kk = torch.nn.functional.normalize(k, dim=-1)
        return fused_recurrent_rwkv7(q, w, k, v, -kk, 0.5 * kk, initial_state=h0, output_final_state=True)
    return {'gdn': gdn, 'kda': kda, 'rwkv7': rwkv7}


@reuses
@pytest.mark.parametrize('op', ['gdn', 'kda', 'rwkv7'])
def test_decoding_steps_reuse_the_dropped_state_and_never_a_held_one(op):
    """A one-token step returns its final state in pool memory: a decoding loop that drops the
    previous step's state as it stores the new one reuses that memory (no fresh allocation to
    page-fault in), and a state still held is never overwritten."""
    fn = _decode_ops()[op]
    torch.manual_seed(0)
    B, H, K = 1, 4, 128                                      # a 256 KiB fp32 state: pooled
    q, k, v = (torch.randn(B, 1, H, K) for _ in range(3))
    w = -torch.rand(B, 1, H, K)
    with torch.no_grad():
        _, s1 = fn(q, k, v, w, torch.randn(B, H, K, K))
        _, s2 = fn(q, k, v, w, s1)                       # reads s1, which is held: new memory
        assert s2.data_ptr() != s1.data_ptr()
        held = s1.clone()
        _, s3 = fn(q, k, v, w, s2)                       # s1 is still held: not reused
        assert torch.equal(s1, held) and s3.data_ptr() not in (s1.data_ptr(), s2.data_ptr())
        ptr1 = s1.data_ptr()
        del s1, held                                     # the cache dropped it
        _, s4 = fn(q, k, v, w, s3)
        pool = {b.data_ptr() for b in workspace._pool.buffers}
        assert {s2.data_ptr(), s3.data_ptr(), s4.data_ptr()} <= pool    # the states live in the pool
        assert s4.data_ptr() == ptr1
        # the same numbers as with every buffer fresh
        workspace.release()
        _, ref = fn(q, k, v, w, s3)
        assert torch.equal(s4, ref)
