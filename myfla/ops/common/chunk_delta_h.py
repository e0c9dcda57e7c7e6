"""Inter-chunk state recurrence of the (gated) delta rule, as ``fla.ops.common.chunk_delta_h``.

Forward, per sequence and head, chunk by chunk (``h`` is the ``[K, V]`` state entering a chunk):

    v_new = u - w @ h
    h     = diag(exp(gk_last)) * exp(g_last) * h + (k * exp(g_last - g))^T @ v_new

Backward runs the transposed recurrence from the last chunk to the first. Everything that does not
depend on the state (gate factors, ``q^T do``) is computed for all chunks of all heads at once; the
Python loop over chunks does only the ``[N*H]``-batched matmuls that need the carried state.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Optional, Tuple

import torch

from myfla.ops.utils.chunk_layout import ChunkLayout, get_chunk_layout
from myfla.ops.utils.dot import dot, dot_add, operand, operand_dtype
from myfla.ops.utils.loop_graph import owned, run_loop
from myfla.ops.utils.workspace import begin_pass, end_pass, new_empty
from myfla.utils import accumulation_dtype, is_nvidia_hopper

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/common/chunk_delta_h.py:L14-L14 (fla 0.4.0)
NUM_WARPS = [2, 4] if is_nvidia_hopper else [2, 4, 8, 16]


# ---- layout helpers shared by the chunked ops (port-only) ------------------------------------
# Within one forward or backward pass fla's functions hand each other [B, T, H, ...] tensors; the
# torch port works on a chunk grid. Inside a ``grid_cache()`` scope, conversions are memoised by
# tensor identity and version, and a grid result converted to token layout remembers its grid, so
# a tensor crosses layouts once per pass instead of once per function. Only layouts without padding
# are memoised (there zero- and last-fill agree and every grid slot is a real token).
# The memo is per thread: a pass's conversions belong to the thread that runs it, and two threads
# running ops at once (``nn.DataParallel`` replicas, a server's request threads) keep their own.
_scope = threading.local()


def _memo_dict() -> Optional[dict]:
    """This thread's memo, None outside a ``grid_cache()`` scope."""
    return getattr(_scope, 'memo', None)


@contextlib.contextmanager
def grid_cache():
    """Scope in which layout conversions (and ``memo`` values) are reused; nested scopes share it."""
    if _memo_dict() is not None:
        yield
        return
    _scope.memo = {}
    begin_pass()
    try:
        yield
    finally:
        _scope.memo = None
        end_pass()


def _version(t: torch.Tensor) -> Optional[int]:
    """``t``'s version counter (memo entries of a tensor written in place since do not match), None
    for an inference tensor: torch counts no versions of those ("Inference tensors do not track version
    counter"; every GDN / KDA call under ``torch.inference_mode()`` failed so). A pass writes neither its
    inputs nor what it memoises in place, so there the identity alone is the key."""
    return None if t.is_inference() else t._version


def _memo_key(grid_memo: Optional[dict], layout: ChunkLayout, x: torch.Tensor, dtype) -> Optional[tuple]:
    """The memo key of ``x``'s grid, None where nothing is memoised (outside a scope, padded layouts)."""
    if grid_memo is None or layout.varlen or layout.pad:
        return None
    return ('grid', id(layout), id(x), _version(x), x.dtype if dtype is None else dtype)


def shared_grid(layout: ChunkLayout, x: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The ``[NC, N*H, BT, *rest]`` grid of ``x`` in ``dtype`` already built (or produced) in this
    pass, or None. ``myfla.ops.utils.chunk_grid`` keeps chunk-major grids in the same memory order
    and shares them both ways through this memo (``share_grid``)."""
    grid_memo = _memo_dict()
    key = _memo_key(grid_memo, layout, x, dtype)
    hit = grid_memo.get(key) if key is not None else None
    return hit[1] if hit is not None else None


def share_grid(layout: ChunkLayout, x: torch.Tensor, xc: torch.Tensor) -> None:
    """Record ``xc`` (``[NC, N*H, BT, *rest]``, contiguous) as the grid of ``x`` for this pass."""
    grid_memo = _memo_dict()
    key = _memo_key(grid_memo, layout, x, xc.dtype)
    if key is not None and key not in grid_memo:
        grid_memo[key] = (x, xc, layout)


def memo(key: tuple, tensors: tuple, fn):
    """``fn()`` memoised inside a ``grid_cache()`` scope under ``key`` and the identity/version of
    ``tensors`` (kept alive with the entry so that ids stay unique)."""
    grid_memo = _memo_dict()
    if grid_memo is None:
        return fn()
    full = key + tuple(None if t is None else (id(t), _version(t) if isinstance(t, torch.Tensor) else None)
                       for t in tensors)
    hit = grid_memo.get(full)
    if hit is None:
        hit = (tensors, fn())
        grid_memo[full] = hit
    return hit[1]


def to_grid(layout: ChunkLayout, x: torch.Tensor, fill: str = 'zero',
            dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``[B, T, H, *rest]`` token layout -> ``[NC, N*H, BT, *rest]`` chunk grid (contiguous, so the
    per-chunk slices of ``unbind(0)`` feed batched matmuls directly)."""
    grid_memo = _memo_dict()
    key = _memo_key(grid_memo, layout, x, dtype)
    if key is not None and key in grid_memo:
        return grid_memo[key][1]
    xc = layout.pack(x, fill=fill)                                  # [N, NC, BT, H, *rest]
    N, NC, BT, H = xc.shape[:4]
    rest = xc.shape[4:]
    perm = (1, 0, 3, 2) + tuple(range(4, xc.dim()))
    # contiguous: for B == 1 the reshape is a strided view, and every matmul would copy it again;
    # the dtype conversion happens in the same copy
    out = new_empty((NC, N * H, BT, *rest), dtype or x.dtype, xc.device)
    out.view(NC, N, H, BT, *rest).copy_(xc.permute(perm))
    xc = out
    if key is not None:
        grid_memo[key] = (x, xc, layout)       # keep x and layout alive so their ids stay unique
    return xc


def from_grid(layout: ChunkLayout, xc: torch.Tensor, H: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``[NC, N*H, BT, *rest]`` chunk grid -> contiguous ``[B, T, H, *rest]`` token layout in ``dtype``
    (default: the grid's)."""
    grid_memo = _memo_dict()
    NC, NH, BT = xc.shape[:3]
    rest = xc.shape[3:]
    x = xc.reshape(NC, NH // H, H, BT, *rest)
    perm = (1, 0, 3, 2) + tuple(range(4, x.dim()))
    x = x.permute(perm)                                             # [N, NC, BT, H, *rest]
    if layout.varlen:
        x = layout.unpack(x)
        x = x.to(dtype) if dtype is not None else x
        x = x.contiguous()
    else:
        out = new_empty((layout.B, NC * BT, H, *rest), dtype or xc.dtype, xc.device)
        out.view(layout.B, NC, BT, H, *rest).copy_(x)
        x = out[:, :layout.T]
        if layout.pad and layout.B > 1:
            x = x.contiguous()
    key = _memo_key(grid_memo, layout, x, xc.dtype) if x.dtype == xc.dtype else None
    if key is not None:
        grid_memo[key] = (x, xc, layout)
    return x


def chunks_to_grid(layout: ChunkLayout, h: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """fla's per-chunk layout ``[B, NT, H, *rest]`` -> ``[NC, N*H, *rest]``."""
    grid_memo = _memo_dict()
    key = _memo_key(grid_memo, layout, h, dtype)
    if key is not None and ('chunks',) + key in grid_memo:
        return grid_memo[('chunks',) + key][1]
    hd = h.to(dtype) if dtype is not None else h
    hc = layout.pack_chunks(hd)                                     # [N, NC, H, *rest]
    N, NC, H = hc.shape[:3]
    hc = hc.transpose(0, 1).reshape(NC, N * H, *hc.shape[3:]).contiguous()
    if key is not None:
        grid_memo[('chunks',) + key] = (h, hc, layout)
    return hc


def chunks_from_grid(layout: ChunkLayout, hc: torch.Tensor, H: int) -> torch.Tensor:
    """``[NC, N*H, *rest]`` -> fla's per-chunk layout ``[B, NT, H, *rest]``.

    Inside a ``grid_cache()`` scope (an op's own forward or backward pass, whose per-chunk states
    are read only by its other functions) the result is a strided view of ``hc`` when no varlen
    gather is needed: its readers take chunk-major grids, which that view already is, so neither
    the reorder here nor the one back costs a copy. Outside a scope it is contiguous, as fla's.
    """
    grid_memo = _memo_dict()
    NC, NH = hc.shape[:2]
    h = hc.reshape(NC, NH // H, H, *hc.shape[2:]).transpose(0, 1)
    h = layout.unpack_chunks(h)
    if grid_memo is None:
        h = h.contiguous()
    key = _memo_key(grid_memo, layout, h, hc.dtype)
    if key is not None:
        grid_memo[('chunks',) + key] = (h, hc, layout)
    return h


def gate_ratio(layout: ChunkLayout, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``exp(g_i - g_j)`` for every pair of slots of every chunk, ``[NC, N*H, BT, BT]`` (unmasked;
    bounded below the diagonal, where the chunk-local cumulative gate decreases)."""
    def build():
        g_c = to_grid(layout, g, fill='last', dtype=dtype)
        return torch.exp(g_c.unsqueeze(-1) - g_c.unsqueeze(-2))
    return memo(('gate_ratio', id(layout), dtype), (g, layout), build)



def gate_factors(layout: ChunkLayout, H: int, K: int, g: Optional[torch.Tensor], gk: Optional[torch.Tensor],
                 dtype: torch.dtype):
    """Per-chunk gate factors on the chunk grid.

    Returns ``(g_c, decay, k_scale)``: ``g_c`` the chunk-local cumulative scalar gate
    ``[NC, N*H, BT]`` (or None); ``decay`` the state decay over the whole chunk, ``[NC, N*H, K, 1]``
    (or None without gates); ``k_scale`` the factor ``exp(g_last - g_i)`` of every key ``[NC, N*H, BT, 1]``
    (or None). Padding repeats a chunk's last valid gate, so pads give factor 1 and empty chunks no decay.
    """
    g_c, decay, k_scale = None, None, None
    if g is not None:
        g_c = to_grid(layout, g, fill='last', dtype=dtype)              # [NC, NH, BT]
        g_last = g_c[:, :, -1:]
        k_scale = torch.exp(g_last - g_c).unsqueeze(-1)
        decay = torch.exp(g_last).unsqueeze(-1).expand(*g_last.shape[:2], K, 1)
    if gk is not None:
        gk_c = to_grid(layout, gk, fill='last', dtype=dtype)            # [NC, NH, BT, K]
        gk_decay = torch.exp(gk_c[:, :, -1, :]).unsqueeze(-1)          # [NC, NH, K, 1]
        decay = gk_decay if decay is None else decay * gk_decay
    if decay is not None:
        decay = decay.contiguous()
    return g_c, decay, k_scale


def _prefill(out: torch.Tensor, start: torch.Tensor) -> bool:
    """Whether a state loop first copies ``start`` into its per-chunk output ``out`` (all chunks in one
    copy) and then updates each chunk's slice in place (``c + a @ b`` as ``baddbmm_``), which it does
    on CPU with several intra-op threads: there the out-of-place ``baddbmm`` of a step does not spread
    over the threads (16-core host, ``[4, 64, 128] @ [4, 128, 128]``: 39-42 us at 4-16 threads against
    15-23 us in place), while on one thread both take the same time and the copy would be pure cost.
    The results are the same bit for bit."""
    if out.device.type != 'cpu' or torch.get_num_threads() == 1:
        return False
    out.copy_(start)
    return True


def _fwd_h_steps(x, out, w_dtype: torch.dtype, k_dtype: torch.dtype):
    """The sequential part of ``chunk_gated_delta_rule_fwd_h`` (port-only helper), on the chunk grid.

    ``x`` holds ``h0`` ``[NH, K, V]``, ``u`` ``[NC, NH, BT, V]`` (accumulation dtype), the dot operands
    ``w`` ``[NC, NH, BT, K]`` and ``k`` (see ``operand``), ``k_scale`` ``[NC, NH, BT, 1]`` and ``decay``
    ``[NC, NH, K, 1]`` (or None); fills ``out['states']`` ``[NC + 1, NH, K, V]`` and ``out['v_new']``
    ``[NC, NH, BT, V]``. ``w_dtype``/``k_dtype`` are the dtypes fla rounds the dots' other operands to.
    """
    states, v_news = out['states'], out['v_new']
    states[0].copy_(x['h0'])
    s_out, v_out = states.unbind(0), v_news.unbind(0)
    u = v_out if _prefill(v_news, x['u']) else x['u'].unbind(0)     # then each step updates v_new in place
    w, kT = x['w'].unbind(0), x['k'].transpose(-1, -2).unbind(0)
    k_scale, decay = x['k_scale'], x['decay']
    k_scales = k_scale.unbind(0) if k_scale is not None else None
    decays = decay.unbind(0) if decay is not None else None
    for c in range(len(u)):
        state = s_out[c]
        # v_new = u - w @ h, the state read in w's dtype (fla: tl.dot(b_w, b_h.to(b_w.dtype)))
        v_new = dot_add(u[c], w[c], operand(state, w_dtype), alpha=-1, out=v_out[c])
        # the key factors exp(g_last - g) are applied to the (small, per-chunk) new values, which
        # feed the state update in k's dtype (fla: b_v.to(k.dtype))
        v_upd = v_new * k_scales[c] if k_scales is not None else v_new
        nxt = s_out[c + 1]
        if decays is not None:
            torch.mul(state, decays[c], out=nxt)
        else:
            nxt.copy_(state)
        dot_add(nxt, kT[c], operand(v_upd, k_dtype), out=nxt)


def chunk_gated_delta_rule_fwd_h(
    k: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    gk: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,  # SY: remove this argument and force chunk size 64?
    save_new_value: bool = True,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chunk-start states ``h`` ``[B, NT, H, K, V]`` (``k.dtype``), the new values
    ``v_new = u - w h`` ``[B, T, H, V]`` (``u.dtype``, None unless ``save_new_value``) and the fp32
    final state ``[N, H, K, V]`` (None unless ``output_final_state``).

    ``g`` ``[B, T, H]`` (scalar) and/or ``gk`` ``[B, T, H, K]`` (key-wise) are chunk-local
    cumulative log gates. Keys are used as given: with ``gk`` the caller passes keys already scaled
    by ``exp(gk_last - gk)`` (KDA's ``kg``), as in fla. The dots take ``w``, ``k`` and the rounded
    state / new values in the inputs' dtype with fp32 accumulation; the state stays fp32.

    Source: fla/ops/common/chunk_delta_h.py:L435-L481 (fla 0.4.0)
    Source: fla/ops/common/chunk_delta_h.py:L17-L209 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, u.shape[-1]
    BT = chunk_size
    assert K <= 256, "current kernel does not support head dimension larger than 256."
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    N, NC = layout.N, layout.NC
    cdt = accumulation_dtype(k, w, u)

    _, decay, k_scale = gate_factors(layout, H, K, g, gk, cdt)
    if initial_state is not None:
        h0 = initial_state.reshape(N * H, K, V).to(cdt)
    else:
        h0 = torch.zeros(N * H, K, V, dtype=cdt, device=k.device)
    if NC > 0:
        # Outputs are written straight into preallocated buffers: no autograd graph exists here (the
        # loop runs under no_grad, as fla's kernels do), so slice writes cost nothing extra.
        k_c = to_grid(layout, k, dtype=operand_dtype(k.dtype, k.device))     # [NC, NH, BT, K]
        inputs = {
            'h0': h0.contiguous(),
            'u': to_grid(layout, u, dtype=cdt),                                 # [NC, NH, BT, V]
            'w': to_grid(layout, w, dtype=operand_dtype(w.dtype, w.device)),
            'k': k_c,
            'k_scale': k_scale.contiguous() if k_scale is not None else None,
            'decay': decay,
        }
        if k_scale is not None and k.dtype == cdt:
            # nothing is rounded between the key factors and the dot: scale the keys once, for all
            # chunks, instead of every chunk's new values in the loop
            inputs['k'], inputs['k_scale'] = k_c * k_scale, None
        body = functools.partial(_fwd_h_steps, w_dtype=w.dtype, k_dtype=k.dtype)
        out = run_loop(f'chunk_gated_delta_rule_fwd_h:{w.dtype}:{k.dtype}', body, inputs,
                       {'states': ((NC + 1, N * H, K, V), cdt), 'v_new': ((NC, N * H, BT, V), cdt)}, k.device,
                       recurrences=N * H)
        states, v_news = out['states'], out['v_new']
        h = owned(chunks_from_grid(layout, states[:NC].to(k.dtype), H), states)
        final = states[NC]
    else:
        h, v_news, final = k.new_empty(B, 0, H, K, V), None, h0
    final_state = final.reshape(N, H, K, V).clone() if output_final_state else None   # fp32 (fp64)
    v_new = None
    if save_new_value:
        v_new = from_grid(layout, v_news, H, u.dtype) if NC > 0 else torch.empty_like(u)
    return h, v_new, final_state


def chunk_gated_delta_rule_bwd_dhu(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    do: torch.Tensor,
    dv: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    gk: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    dht: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64,  # SY: remove this argument and force chunk size 64?
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the state recurrence.

    Returns ``dh`` ``[B, NT, H, K, V]`` (``q.dtype``; the gradient reaching the state at the end of
    every chunk), ``dh0`` (fp32, None without ``h0``) and ``dv2 = dv + (k * exp(g_last - g)) @ dh``
    (``dv.dtype``), the full gradient of ``v_new``. Per chunk, going backwards:

        dv2 = dv + k_scaled @ dh
        dh  = decay * dh + scale * (q * exp(g))^T @ do - w^T @ dv2

    Source: fla/ops/common/chunk_delta_h.py:L484-L535 (fla 0.4.0)
    Source: fla/ops/common/chunk_delta_h.py:L212-L432 (fla 0.4.0)
    """
    B, T, H, K, V = *q.shape, do.shape[-1]
    BT = 64
    assert K <= 256, "current kernel does not support head dimension being larger than 256."
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=q.device)
    N, NC = layout.N, layout.NC
    cdt = accumulation_dtype(q, k, w, do, dv)

    g_c, decay, k_scale = gate_factors(layout, H, K, g, gk, cdt)
    if dht is not None:
        dh_last = dht.reshape(N * H, K, V).to(cdt)
    else:
        dh_last = torch.zeros(N * H, K, V, dtype=cdt, device=q.device)
    if NC > 0:
        # the state-independent part of every chunk's dh update, for all chunks at once. With a scalar
        # gate fla's kernel multiplies q by exp(g) in fp32 and so takes an fp32 dot with do; otherwise
        # q and do meet in q's dtype
        if g_c is not None:
            q_c = to_grid(layout, q, dtype=cdt) * torch.exp(g_c).unsqueeze(-1)
            do_c = to_grid(layout, do, dtype=cdt)
        else:
            q_c = to_grid(layout, q, dtype=operand_dtype(q.dtype, q.device))
            do_c = operand(to_grid(layout, do, dtype=operand_dtype(do.dtype, do.device)), q.dtype)
        qdo = dot(q_c.transpose(-1, -2), do_c)                              # [NC, NH, K, V]
        if scale is not None:
            qdo.mul_(scale)
        inputs = {
            'dht': dh_last.contiguous(),
            'qdo': qdo,
            'dv': to_grid(layout, dv, dtype=cdt),                               # [NC, NH, BT, V]
            'k': to_grid(layout, k, dtype=operand_dtype(k.dtype, k.device)),   # [NC, NH, BT, K]
            'w': to_grid(layout, w, dtype=operand_dtype(w.dtype, w.device)),
            'k_scale': k_scale.contiguous() if k_scale is not None else None,
            'decay': decay,
        }
        if k_scale is not None and k.dtype == cdt:
            # no rounding of dh in k's dtype: exp(g_last - g) * (k @ dh) = (k * exp(g_last - g)) @ dh
            inputs['k'], inputs['k_scale'] = inputs['k'] * k_scale, None
        body = functools.partial(_bwd_dhu_steps, k_dtype=k.dtype, w_dtype=w.dtype)
        out = run_loop(f'chunk_gated_delta_rule_bwd_dhu:{k.dtype}:{w.dtype}', body, inputs,
                       {'dh': ((NC + 1, N * H, K, V), cdt), 'dv2': ((NC, N * H, BT, V), cdt)}, q.device,
                       recurrences=N * H)
        dhs, dv2s = out['dh'], out['dv2']
        dh = owned(chunks_from_grid(layout, dhs[1:].to(q.dtype), H), dhs)
        dv2 = from_grid(layout, dv2s, H, dv.dtype)
        first = dhs[0]
    else:
        dh, dv2, first = q.new_empty(B, 0, H, K, V), torch.empty_like(dv), dh_last
    dh0 = first.reshape(N, H, K, V).clone() if h0 is not None else None               # fp32 (fp64)
    return dh, dh0, dv2


def _bwd_dhu_steps(x, out, k_dtype: torch.dtype, w_dtype: torch.dtype):
    """The sequential part of ``chunk_gated_delta_rule_bwd_dhu`` (port-only helper), chunks in reverse.

    ``x`` holds ``dht`` ``[NH, K, V]``, ``qdo`` ``[NC, NH, K, V]`` (``scale * q^T do`` with gates),
    ``dv`` ``[NC, NH, BT, V]``, the dot operands ``k`` and ``w`` ``[NC, NH, BT, K]``, ``k_scale`` and
    ``decay`` (or None); fills ``out['dh']`` ``[NC + 1, NH, K, V]`` (``dh[c]``: gradient of the state
    entering chunk ``c``) and ``out['dv2']`` ``[NC, NH, BT, V]``.
    """
    dhs, dv2s = out['dh'], out['dv2']
    dhs[-1].copy_(x['dht'])
    d_out, dv_out = dhs.unbind(0), dv2s.unbind(0)
    dv = dv_out if _prefill(dv2s, x['dv']) else x['dv'].unbind(0)    # then each step updates dv2 in place
    k, wT, qdo = x['k'].unbind(0), x['w'].transpose(-1, -2).unbind(0), x['qdo'].unbind(0)
    k_scale, decay = x['k_scale'], x['decay']
    k_scales = k_scale.unbind(0) if k_scale is not None else None
    decays = decay.unbind(0) if decay is not None else None
    for c in range(len(k) - 1, -1, -1):
        grad = d_out[c + 1]                                             # gradient of the chunk-end state
        grad_k = operand(grad, k_dtype)                                 # fla: b_dh.to(b_k.dtype)
        if k_scales is not None:                                        # dv + exp(g_last - g) * (k @ dh)
            dv2 = torch.addcmul(dv[c], k_scales[c], dot(k[c], grad_k), out=dv_out[c])
        else:
            dv2 = dot_add(dv[c], k[c], grad_k, out=dv_out[c])
        nxt = d_out[c]
        if decays is not None:
            torch.addcmul(qdo[c], grad, decays[c], out=nxt)
        else:
            torch.add(grad, qdo[c], out=nxt)
        dot_add(nxt, wT[c], operand(dv2, w_dtype), alpha=-1, out=nxt)   # fla: b_dv.to(b_w.dtype)
