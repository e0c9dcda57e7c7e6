"""Inter-chunk state recurrence of the DPLR delta rule, as
``fla.ops.generalized_delta_rule.dplr.chunk_h_fwd``.

Per sequence and head, chunk by chunk (``h`` the ``[K, V]`` state entering the chunk):

    v_new = u + w @ h
    h     = exp(g_last)[:, None] * h + kg^T @ v + bg^T @ v_new

The state-independent products ``kg^T v`` are formed for all chunks at once; the Python loop over
chunks runs only the three ``[N*H]``-batched ops that need the carried state.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import chunks_from_grid, from_grid, grid_layout, to_grid
from myfla.ops.utils.loop_graph import run_loop_into
from myfla.ops.utils.workspace import new_empty
from myfla.utils import accumulation_dtype, is_amd

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/chunk_h_fwd.py:L14-L14 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def fwd_h_into(kg, v, w, bg, g_last, states: torch.Tensor, v_new: torch.Tensor, rnd=None):
    """Port-only core on ``NC`` chunks of the grid, in place: ``kg, bg, w`` ``[NC, NH, BT, K]``, ``v``
    ``[NC, NH, BT, V]``, ``g_last`` ``[NC, NH, K]``; ``states`` ``[NC + 1, NH, K, V]`` (contiguous) holds
    the state entering the first chunk in ``states[0]`` and receives the state entering every later
    chunk (``states[NC]`` the last one); ``v_new`` ``[NC, NH, BT, V]`` (contiguous) holds ``u`` and
    receives ``v_new = u + w h``. ``rnd`` rounds where fla's kernel does (the state fed to ``w @ h``
    and the stored ``v_new``). The state-independent ``kg^T v`` go straight into ``states[1:]``, so
    every chunk is three in-place ops on contiguous buffers (no copies)."""
    decay = torch.exp(g_last).unsqueeze(-1)                               # [NC, NH, K, 1]
    with torch.no_grad():
        torch.matmul(kg.transpose(-1, -2), v, out=states[1:])             # kg^T v
        hs, vs, ws, ds = states.unbind(0), v_new.unbind(0), w.unbind(0), decay.unbind(0)
        bgT = bg.transpose(-1, -2).unbind(0)
        for c in range(len(vs)):
            h = hs[c]
            vn = vs[c].baddbmm_(ws[c], rnd(h) if rnd is not None else h)
            hs[c + 1].addcmul_(h, ds[c]).baddbmm_(bgT[c], vn)
            if rnd is not None:
                vn.copy_(rnd(vn))
    return states, v_new


def _fwd_h_steps(inputs, outs, rnd=None):
    """``fwd_h_into`` as a ``run_loop`` body: fills ``outs`` (``states``, ``v_new``) from ``inputs``."""
    states, v_new = outs['states'], outs['v_new']
    states[0].copy_(inputs['h0'])
    v_new.copy_(inputs['u'])
    fwd_h_into(inputs['kg'], inputs['v'], inputs['w'], inputs['bg'], inputs['g_last'], states, v_new, rnd)


def fwd_h_loop(kg, v, w, bg, g_last, states: torch.Tensor, v_new: torch.Tensor, rnd=None):
    """``fwd_h_into`` with the same arguments and results, for any device: on CUDA tensors the chunk
    loop goes through ``run_loop`` (replayed as one CUDA graph from a shape's second call on, so the
    launches do not grow with the number of chunks) and its results are copied into ``states`` and
    ``v_new``; elsewhere it runs in place as it is."""
    if states.device.type != 'cuda':
        return fwd_h_into(kg, v, w, bg, g_last, states, v_new, rnd)
    run_loop_into(f"dplr_fwd_h:{kg.dtype}:{getattr(rnd, 'dtype', None)}", functools.partial(_fwd_h_steps, rnd=rnd),
                  {'kg': kg, 'v': v, 'w': w, 'bg': bg, 'g_last': g_last, 'h0': states[0], 'u': v_new},
                  {'states': states, 'v_new': v_new}, states.device)
    return states, v_new


def fwd_h_grid(kg, v, w, u, bg, g_last, h0: Optional[torch.Tensor], rnd=None):
    """Port-only core on the chunk grid: ``kg, bg, w`` ``[NC, NH, BT, K]``, ``v, u`` ``[NC, NH, BT, V]``,
    ``g_last`` ``[NC, NH, K]``, ``h0`` ``[NH, K, V]`` or None. Returns ``(states, v_new)``:
    ``states[c]`` ``[NC + 1, NH, K, V]`` is the state entering chunk ``c`` (``states[NC]`` the final
    one), all in the compute dtype (see ``fwd_h_into``)."""
    NC, NH, BT, K = kg.shape
    V = v.shape[-1]
    states = new_empty((NC + 1, NH, K, V), kg.dtype, kg.device)
    if h0 is not None:
        states[0].copy_(h0.reshape(NH, K, V))
    else:
        states[0].zero_()
    v_new = new_empty((NC, NH, BT, V), kg.dtype, kg.device).copy_(u)
    return fwd_h_loop(kg, v, w, bg, g_last, states, v_new, rnd)


def chunk_dplr_fwd_h(
    kg: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    bg: torch.Tensor,
    gk: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(h, v_new, final_state)``: chunk-start states ``[B, NT, H, K, V]`` (``kg.dtype``), the
    pseudo-values ``v_new = u + w h`` (``u.dtype``) and the fp32 final state ``[N, H, K, V]`` (None
    unless ``output_final_state``). ``gk`` is the chunk-local inclusive cumulative gate.

    Source: fla/ops/generalized_delta_rule/dplr/chunk_h_fwd.py:L110-L176 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_h_fwd.py:L17-L107 (fla 0.4.0)
    """
    B, T, H, K, V = *kg.shape, u.shape[-1]
    BT = chunk_size
    BK = max(1 << max(K - 1, 0).bit_length(), 16)
    assert BK <= 256, "current kernel does not support head dimension larger than 256."
    layout = grid_layout(kg, BT, cu_seqlens)
    N = layout.N
    cdt = accumulation_dtype(kg, v, w, u, bg, gk)
    if layout.NC == 0:
        final = None
        if output_final_state:
            final = (initial_state.to(cdt).clone() if initial_state is not None
                     else kg.new_zeros(N, H, K, V, dtype=cdt))
        return kg.new_empty(B, 0, H, K, V), torch.empty_like(u), final
    kg_c, v_c, w_c, u_c, bg_c = (to_grid(layout, x, dtype=cdt) for x in (kg, v, w, u, bg))
    g_last = to_grid(layout, gk, fill='last', dtype=cdt)[..., -1, :]
    h0 = initial_state.to(cdt) if initial_state is not None else None
    states, v_new = fwd_h_grid(kg_c, v_c, w_c, u_c, bg_c, g_last, h0)
    h = chunks_from_grid(layout, states[:-1].to(kg.dtype), H)
    final_state = states[-1].reshape(N, H, K, V).clone() if output_final_state else None
    return h, from_grid(layout, v_new, H, u.dtype), final_state
