"""Chunk grids of the slab-wise passes (myfla.ops.utils.chunk_grid) and the state loop's buffers and
thread cap (myfla.ops.utils.loop_graph): layouts, views versus copies, round trips."""

from __future__ import annotations

import pytest
import torch

import myfla.ops.utils.chunk_layout as chunk_layout
from myfla.ops.common.chunk_delta_h import grid_cache
from myfla.ops.utils import loop_graph
from myfla.ops.utils.chunk_grid import from_grid, grid_empty, slab, store, to_grid
from myfla.ops.utils.chunk_layout import chunk_slabs, get_chunk_layout


@pytest.mark.parametrize("B,T,H,per_slab", [(1, 256, 2, 64), (2, 200, 3, 64), (2, 256, 40, 64)])
def test_grid_round_trip_and_slab_views(monkeypatch, B, T, H, per_slab):
    monkeypatch.setattr(chunk_layout, "SLAB_CHUNK_HEADS", per_slab)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    layout = get_chunk_layout(B, T, 64, None)
    x = torch.randn(B, T, H, 5, dtype=torch.float64)
    xc = to_grid(layout, x)
    assert xc.shape == (B, H, layout.NC, 64, 5)
    out = grid_empty(xc, 5)
    one_chunk_slabs = per_slab // (B * H) <= 1
    for sl in chunk_slabs(xc):
        s = slab(xc, sl)
        assert s.is_contiguous() and s.shape[1:3] == (B, H)
        # chunk-major grids hand out views; token-order grids (one-chunk slabs) copies
        assert (s.data_ptr() == xc[:, :, sl].movedim(2, 0).data_ptr()) != one_chunk_slabs
        store(out, sl, s * 2)
    torch.testing.assert_close(from_grid(layout, out), 2 * x, rtol=0, atol=0)


def test_to_grid_is_built_once_per_pass():
    layout = get_chunk_layout(1, 128, 64, None)
    x = torch.randn(1, 128, 2, 4)
    with grid_cache():
        assert to_grid(layout, x) is to_grid(layout, x)
        a = to_grid(layout, x)
        x.add_(1)                                   # a new version is a new grid
        b = to_grid(layout, x)
        assert b is not a
        torch.testing.assert_close(from_grid(layout, b.clone()), x)
    assert to_grid(layout, x) is not to_grid(layout, x)


def test_owned_copies_only_graph_buffers():
    buf = torch.zeros(4, 3)
    view = buf[1:]
    assert loop_graph.owned(view, buf) is view       # CPU outputs are fresh: kept as they are


def test_loop_thread_cap_restores_the_setting(monkeypatch):
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(loop_graph, "LOOP_THREADS_PER_HEAD", 1)

    def body(inputs, outs):
        seen.append(torch.get_num_threads())
        outs["y"].copy_(inputs["x"])

    torch.set_num_threads(2)
    try:
        out = loop_graph.run_loop("test_cap", body, {"x": torch.ones(2)}, {"y": ((2,), torch.float32)}, "cpu",
                                  recurrences=1)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out["y"], torch.ones(2))


def test_loop_threads_by_heads_and_step_work(monkeypatch):
    monkeypatch.setattr(loop_graph, "LOOP_THREADS_PER_HEAD", 2)
    monkeypatch.setattr(loop_graph, "LOOP_STEP_FLOPS_PER_THREAD", 4_000_000)
    rwkv7_k64 = 4 * 4 * 32 * 64 * 64          # 4 heads, 32-token chunks: 2.1 MFLOP a step
    gdn_small = 4 * 4 * 64 * 128 * 128        # 16.8 MFLOP
    assert loop_graph.loop_threads(4, rwkv7_k64) == 1
    assert loop_graph.loop_threads(4, gdn_small) == 4
    assert loop_graph.loop_threads(64, 16 * gdn_small) == 67
    assert loop_graph.loop_threads(2, 16 * gdn_small) == 4           # the per-head cap binds
    assert loop_graph.loop_threads(4) == 8                            # no step work given
    assert loop_graph.loop_threads(0) == 0                            # nothing known: no limit
    monkeypatch.setattr(loop_graph, "LOOP_STEP_FLOPS_PER_THREAD", 0)
    assert loop_graph.loop_threads(4, rwkv7_k64) == 8
    monkeypatch.setattr(loop_graph, "LOOP_THREADS_PER_HEAD", 0)
    assert loop_graph.loop_threads(4, rwkv7_k64) == 0


def test_small_loop_steps_run_on_one_thread(monkeypatch):
    """GDN's and the DPLR state loops run on the threads ``loop_threads`` gives them and restore the
    caller's setting; the results do not depend on it."""
    from myfla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
    from myfla.ops.generalized_delta_rule.dplr.chunk_h_fwd import fwd_h_grid

    seen = []
    real = loop_graph.cpu_threads

    def spy(limit):
        seen.append(limit)
        return real(limit)

    monkeypatch.setattr(loop_graph, "cpu_threads", spy)
    import myfla.ops.generalized_delta_rule.dplr.chunk_h_fwd as dplr_h
    monkeypatch.setattr(dplr_h, "cpu_threads", spy)
    torch.manual_seed(0)
    k, w = torch.randn(1, 128, 2, 32) * 0.1, torch.randn(1, 128, 2, 32) * 0.1
    u = torch.randn(1, 128, 2, 32)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 128, 2)).cumsum(1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        h, v_new, _ = chunk_gated_delta_rule_fwd_h(k, w, u, g=g)
        kg, bg, ww = (torch.randn(4, 2, 16, 32) * 0.1 for _ in range(3))
        v = torch.randn(4, 2, 16, 32)
        states, _ = fwd_h_grid(kg, v, ww, torch.randn(4, 2, 16, 32), bg, -torch.rand(4, 2, 32), None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]                     # steps of 0.5 and 0.26 MFLOP: one thread
    monkeypatch.setattr(loop_graph, "LOOP_STEP_FLOPS_PER_THREAD", 0)
    monkeypatch.setattr(loop_graph, "LOOP_THREADS_PER_HEAD", 0)
    h2, v_new2, _ = chunk_gated_delta_rule_fwd_h(k, w, u, g=g)
    torch.testing.assert_close(h2, h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_new2, v_new, rtol=1e-6, atol=1e-6)
