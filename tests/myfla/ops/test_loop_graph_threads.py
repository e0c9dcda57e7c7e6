"""``run_loop`` (``myfla.ops.utils.loop_graph``) from two threads at once on a GPU: a replay writes the
recorded graph's output buffers, which ``run_loop`` returns for the caller to copy, so two threads
sharing a graph would read each other's results. Graphs are kept per thread (and stream). The
interleaving is forced: thread A gets its outputs, thread B runs a call of the same shapes, and only
then does A read what it got."""

from __future__ import annotations

import threading

import pytest
import torch

from myfla.ops.utils import loop_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _body(inputs, outputs):
    # enough GPU work that a replay is still running while the host goes on
    x = inputs['x']
    for _ in range(20):
        x = torch.tanh(x @ inputs['w'])
    outputs['y'].copy_(x)


def _call(x, w):
    return loop_graph.run_loop('test_threads', _body, {'x': x, 'w': w},
                               {'y': (tuple(x.shape), x.dtype)}, x.device)['y']


def test_threads_do_not_share_graph_buffers():
    loop_graph.release()
    dev = torch.device('cuda')
    w = torch.randn(256, 256, device=dev) / 16
    xs = [torch.randn(256, 256, device=dev) for _ in range(2)]
    expected = [_call(x, w).clone() for x in xs]            # first calls run eagerly
    got = {}
    a_has_outputs, b_done = threading.Event(), threading.Event()

    def thread_a():
        for _ in range(3):                                   # record, then replay
            out = _call(xs[0], w)
        a_has_outputs.set()
        b_done.wait(timeout=60)
        got['a'] = out.clone()

    def thread_b():
        a_has_outputs.wait(timeout=60)
        for _ in range(3):
            got['b'] = _call(xs[1], w).clone()
        b_done.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    assert loop_graph.stats['replayed'] > 0                  # the graphs were used
    assert torch.equal(got['a'], expected[0]), "thread A read thread B's results"
    assert torch.equal(got['b'], expected[1])
    loop_graph.release()
