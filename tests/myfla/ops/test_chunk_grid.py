"""Chunk grids of the slab-wise passes (myfla.ops.utils.chunk_grid) and the state loop's buffers and
thread cap (myfla.ops.utils.loop_graph): layouts, views versus copies, round trips."""

from __future__ import annotations

import pytest
import torch

import myfla.ops.utils.chunk_layout as chunk_layout
from myfla.ops.common.chunk_delta_h import grid_cache
from myfla.ops.utils import loop_graph
from myfla.ops.utils.chunk_grid import from_grid, grid_empty, slab, slab_out, store, to_grid
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
    # a slab's last op may write straight into the grid instead (slab_out): same memory, no store
    direct = grid_empty(xc, 5)
    for sl in chunk_slabs(xc):
        view = slab_out(direct, sl)
        assert view.data_ptr() == direct[:, :, sl].movedim(2, 0).data_ptr()
        torch.mul(slab(xc, sl), 2, out=view)
    assert torch.equal(from_grid(layout, direct), 2 * x)


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
