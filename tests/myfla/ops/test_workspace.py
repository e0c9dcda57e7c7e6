"""The CPU buffer pool of the chunked ops must never hand out memory that a live tensor still uses."""

import pytest
import torch

from myfla.ops.utils import workspace
from myfla.ops.utils.workspace import new_empty

SHAPE = (64, 1024)          # 256 KiB of fp32: pooled


@pytest.fixture(autouse=True)
def fresh_pool():
    workspace.release()
    yield
    workspace.release()


def test_pool_can_report_storage_use_counts():
    # without use counts the pool silently degrades to torch.empty; this torch build must support it
    assert workspace._UNUSED is not None


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


def test_dtype_and_size_must_match():
    with torch.no_grad():
        a = new_empty(SHAPE, torch.float32, torch.device('cpu'))
        ptr = a.data_ptr()
        del a
        b = new_empty(SHAPE, torch.float64, torch.device('cpu'))
        c = new_empty((SHAPE[0] + 1, SHAPE[1]), torch.float32, torch.device('cpu'))
    assert b.dtype == torch.float64 and b.data_ptr() != ptr and c.data_ptr() != ptr


def test_pool_is_bounded(monkeypatch):
    monkeypatch.setattr(workspace, 'MAX_BYTES', 3 * 256 * 1024)
    with torch.no_grad():
        held = [new_empty(SHAPE, torch.float32, torch.device('cpu')) for _ in range(5)]
    assert workspace._pool.nbytes <= 3 * 256 * 1024
    assert len(workspace._pool.buffers) == 3
    for t in held:                          # dropped buffers stay valid for their users
        t.fill_(1.0)
