"""Backward of the DPLR state recurrence, as ``fla.ops.generalized_delta_rule.dplr.chunk_h_bwd``.

From the last chunk to the first, with ``dh`` the gradient of the state leaving a chunk:

    dv2 = dv + bg @ dh                                  (full gradient of v_new)
    dh  = exp(g_last)[:, None] * dh + qg^T @ do + w^T @ dv2

The state-independent part ``qg^T do + w^T dv`` is formed for all chunks at once; the loop over
chunks runs only the ``[N*H]``-batched ops that need the carried gradient.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import chunks_from_grid, from_grid, grid_layout, to_grid
from myfla.ops.utils.loop_graph import run_loop_into
from myfla.ops.utils.workspace import new_empty
from myfla.utils import accumulation_dtype, is_amd

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/chunk_h_bwd.py:L14-L14 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def bwd_dhu_into(qg, bg, w, g_last, do, dv, dstates: torch.Tensor, dv2: torch.Tensor):
    """Port-only core on ``NC`` chunks of the grid, in place: ``dstates`` ``[NC + 1, NH, K, V]``
    (contiguous) holds the gradient of the state leaving the last chunk in ``dstates[NC]`` and
    receives, walking the chunks backwards, that of the state leaving every earlier chunk
    (``dstates[0]``: the state entering the first); ``dv2`` ``[NC, NH, BT, V]`` (contiguous) receives
    the full gradient of ``v_new``, ``dv + bg dh``. The state-independent ``qg^T do + w^T dv`` go
    straight into ``dstates[:NC]``, so every chunk is three in-place ops."""
    NC, NH, BT, K = qg.shape
    V = do.shape[-1]
    decay = torch.exp(g_last).unsqueeze(-1)                               # [NC, NH, K, 1]
    with torch.no_grad():
        base = dstates[:NC]
        torch.matmul(qg.transpose(-1, -2), do, out=base)
        base.view(NC * NH, K, V).baddbmm_(w.reshape(NC * NH, BT, K).transpose(1, 2), dv.reshape(NC * NH, BT, V))
        ds, xs = dstates.unbind(0), dv2.unbind(0)
        bgs, decays = bg.unbind(0), decay.unbind(0)
        wT = w.transpose(-1, -2).unbind(0)
        for c in range(NC - 1, -1, -1):
            dh = ds[c + 1]
            x = torch.bmm(bgs[c], dh, out=xs[c])                          # bg @ dh
            ds[c].addcmul_(dh, decays[c]).baddbmm_(wT[c], x)
        dv2.add_(dv)                                                    # dv2 = dv + bg @ dh, all chunks at once
    return dstates, dv2


def _bwd_dhu_steps(inputs, outs):
    """``bwd_dhu_into`` as a ``run_loop`` body: fills ``outs`` (``dstates``, ``dv2``) from ``inputs``."""
    dstates = outs['dstates']
    dstates[-1].copy_(inputs['dht'])
    bwd_dhu_into(inputs['qg'], inputs['bg'], inputs['w'], inputs['g_last'], inputs['do'], inputs['dv'], dstates,
                 outs['dv2'])


def bwd_dhu_loop(qg, bg, w, g_last, do, dv, dstates: torch.Tensor, dv2: torch.Tensor):
    """``bwd_dhu_into`` with the same arguments and results, for any device: on CUDA tensors the
    chunk loop goes through ``run_loop`` (one CUDA graph replay from a shape's second call on) and its
    results are copied into ``dstates`` and ``dv2``; elsewhere it runs in place as it is."""
    if dstates.device.type != 'cuda':
        return bwd_dhu_into(qg, bg, w, g_last, do, dv, dstates, dv2)
    run_loop_into(f'dplr_bwd_dhu:{qg.dtype}', _bwd_dhu_steps,
                  {'qg': qg, 'bg': bg, 'w': w, 'g_last': g_last, 'do': do, 'dv': dv, 'dht': dstates[-1]},
                  {'dstates': dstates, 'dv2': dv2}, dstates.device)
    return dstates, dv2


def bwd_dhu_grid(qg, bg, w, g_last, dht: Optional[torch.Tensor], do, dv):
    """Port-only core on the chunk grid. Returns ``(dstates, dv2)``: ``dstates[c + 1]`` ``[NC + 1, NH,
    K, V]`` is the gradient of the state leaving chunk ``c`` and ``dstates[0]`` that of the initial
    state; ``dv2`` the full gradient of ``v_new`` (see ``bwd_dhu_into``)."""
    NC, NH, BT, K = qg.shape
    V = do.shape[-1]
    dstates = new_empty((NC + 1, NH, K, V), qg.dtype, qg.device)
    dv2 = new_empty((NC, NH, BT, V), qg.dtype, qg.device)
    if dht is not None:
        dstates[NC].copy_(dht.reshape(NH, K, V))
    else:
        dstates[NC].zero_()
    return bwd_dhu_loop(qg, bg, w, g_last, do, dv, dstates, dv2)


def chunk_dplr_bwd_dhu(
    qg: torch.Tensor,
    bg: torch.Tensor,
    w: torch.Tensor,
    gk: torch.Tensor,
    h0: torch.Tensor,
    dht: Optional[torch.Tensor],
    do: torch.Tensor,
    dv: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dh0, dv2)``: the gradients of the chunk-end states ``[B, NT, H, K, V]`` (``qg.dtype``),
    of the initial state (fp32; None without ``h0``) and the full gradient of ``v_new``
    (``dv.dtype``; ``dv`` is its intra-chunk part from ``chunk_dplr_bwd_dAu``).

    Source: fla/ops/generalized_delta_rule/dplr/chunk_h_bwd.py:L111-L176 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_h_bwd.py:L17-L108 (fla 0.4.0)
    """
    B, T, H, K, V = *qg.shape, do.shape[-1]
    BT = chunk_size
    BK = max(1 << max(K - 1, 0).bit_length(), 16)
    assert BK <= 256, "current kernel does not support head dimension being larger than 256."
    layout = grid_layout(qg, BT, cu_seqlens)
    N = layout.N
    cdt = accumulation_dtype(qg, bg, w, gk, do, dv)
    if layout.NC == 0:
        dh0 = None
        if h0 is not None:
            dh0 = dht.to(cdt).clone() if dht is not None else torch.zeros_like(h0, dtype=cdt)
        return qg.new_empty(B, 0, H, K, V), dh0, torch.zeros_like(dv)
    qg_c, bg_c, w_c, do_c, dv_c = (to_grid(layout, x, dtype=cdt) for x in (qg, bg, w, do, dv))
    g_last = to_grid(layout, gk, fill='last', dtype=cdt)[..., -1, :]
    dht_c = dht.to(cdt) if dht is not None else None
    dstates, dv2 = bwd_dhu_grid(qg_c, bg_c, w_c, g_last, dht_c, do_c, dv_c)
    dh = chunks_from_grid(layout, dstates[1:].to(qg.dtype), H)
    dh0 = dstates[0].reshape(N, H, K, V).clone() if h0 is not None else None
    return dh, dh0, from_grid(layout, dv2, H, dv.dtype)
