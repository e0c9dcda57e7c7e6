"""Invariants of the RWKV-7 closure (layer ``RWKV7Attention``): the DPLR delta rule against fla's
naive DPLR code in float64 (outputs and gradients), chunk == fused_recurrent, varlen == slices,
resume == full at mid-chunk splits, fp64 gradcheck; RWKV-7's ops against fla's references (the
fused recurrent kernel also against the DPLR kernel it specialises); the token shift; and the
layer against fla's own layer code on float64 references (state_dict, outputs, gradients, masks,
prefill + decode).
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from portaudit.numerics.cache import StateCache
from portaudit.numerics.fla040.apis import (
    DPLR_CHUNK,
    DPLR_FUSED,
    RWKV7_ADDCMUL,
    RWKV7_CHUNK,
    RWKV7_FUSED_MUL,
    RWKV7_GATE,
    RWKV7_K_UPDATE,
    RWKV7_LAYER,
    TOKEN_SHIFT,
)
from portaudit.numerics.fla040.invariants import _cpu, _d, _gen
from portaudit.numerics.invariants import Check, Invariant

LAYER = "RWKV7Attention"
W_SCALE = 0.6065306597126334
ARGS = ("q", "k", "v", "a", "b", "gk")


# -- the DPLR delta rule --------------------------------------------------------------------------------

def dplr_inputs(p: Dict[str, Any], gen: torch.Generator) -> Dict[str, torch.Tensor]:
    """RWKV-7's inputs (``w = -exp(-1/2) sigmoid``, ``a = -kk``, ``b = kk * rate``) or, with
    ``fla=True``, fla's DPLR test recipe (``a = normalize(rand)``, ``b = -a``, ``logsigmoid / norm``)."""
    B, T, H, K, V = p["B"], p["T"], p["H"], p["K"], p["V"]
    inp = dict(q=torch.randn(B, T, H, K, generator=gen), k=torch.randn(B, T, H, K, generator=gen),
               v=torch.randn(B, T, H, V, generator=gen))
    if p.get("fla"):
        a = F.normalize(torch.rand(B, T, H, K, generator=gen), dim=-1)
        inp.update(a=a, b=-a, gk=F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / p.get("gate_norm", 1.0))
    else:
        kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
        rate = torch.rand(B, T, H, K, generator=gen)
        inp.update(a=-kk, b=kk * rate, kk=kk, rate=rate,
                   gk=-W_SCALE * torch.randn(B, T, H, K, generator=gen).sigmoid())
    N = len(p["cu"]) - 1 if p.get("cu") else B
    if p.get("cu"):
        inp["cu_seqlens"] = torch.tensor(p["cu"], dtype=torch.long)
    if p.get("h0"):
        inp["h0"] = torch.randn(N, H, K, V, generator=gen) * 0.5
    inp["do"] = torch.randn(B, T, H, V, generator=gen)
    inp["dht"] = torch.randn(N, H, K, V, generator=gen)
    return inp


def run_dplr(fn, inp, device, dtype=torch.float32, grads=False, h0=None, cu=None, scale=None):
    """Call a DPLR op with fla's (q, k, v, a, b, gk) arguments; (o, ht, grads) on the CPU."""
    leaves = {n: inp[n].detach().to(device=device, dtype=dtype).requires_grad_(grads) for n in ARGS}
    h = inp.get("h0") if h0 is None else h0
    if h is not None:
        h = h.detach().to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        h.requires_grad_(grads)
    cu = inp.get("cu_seqlens") if cu is None else cu
    o, ht = fn(q=leaves["q"], k=leaves["k"], v=leaves["v"], a=leaves["a"], b=leaves["b"], gk=leaves["gk"],
               scale=scale, initial_state=h, output_final_state=True, cu_seqlens=_d(cu, device))
    gr = {}
    if grads:
        do, dht = inp["do"].to(device=device, dtype=o.dtype), inp["dht"].to(device=device, dtype=ht.dtype)
        (o * do).sum().add((ht * dht).sum()).backward()
        gr = {"d" + n: _cpu(t.grad) for n, t in leaves.items()}
        if h is not None:
            gr["dh0"] = _cpu(h.grad)
    return _cpu(o), _cpu(ht), gr


def inv_dplr_naive(path, grads):
    """The op == fla's naive DPLR recurrence in float64 (and fp64 autograd through it)."""
    def body(ctx, p):
        inp = dplr_inputs(p, _gen("dplr-naive", path, p))
        o, ht, gr = run_dplr(ctx.api(path), inp, ctx.device, grads=grads, scale=p.get("scale"))
        ro, rht, rgr = run_dplr(ctx.oracle.resolve(path), inp, torch.device("cpu"), dtype=torch.float64,
                                grads=grads, scale=p.get("scale"))
        return [Check("o", ro, o), Check("ht", rht, ht)] + [Check(n, rgr[n], gr.get(n)) for n in rgr]
    return body


def inv_dplr_chunk_vs_fused(ctx, p):
    inp = dplr_inputs(p, _gen("dplr-cvf", p))
    o1, h1, _ = run_dplr(ctx.api(DPLR_CHUNK), inp, ctx.device, scale=p.get("scale"))
    o2, h2, _ = run_dplr(ctx.api(DPLR_FUSED), inp, ctx.device, scale=p.get("scale"))
    return [Check("o", o2, o1), Check("ht", h2, h1)]


def inv_dplr_varlen(path, grads):
    """cu_seqlens == every sequence run on its own (gradients included for the chunk op)."""
    def body(ctx, p):
        fn = ctx.api(path)
        inp = dplr_inputs(p, _gen("dplr-varlen", path, p))
        o, ht, gr = run_dplr(fn, inp, ctx.device, grads=grads)
        outs, states, parts = [], [], {}
        for i, (s, e) in enumerate(zip(p["cu"][:-1], p["cu"][1:])):
            sub = {n: inp[n][:, s:e] for n in ARGS + ("do",)}
            sub["dht"] = inp["dht"][i:i + 1]
            if "h0" in inp:
                sub["h0"] = inp["h0"][i:i + 1]
            o_i, h_i, g_i = run_dplr(fn, sub, ctx.device, grads=grads)
            outs.append(o_i)
            states.append(h_i)
            for n, t in g_i.items():
                parts.setdefault(n, []).append(t)
        checks = [Check("o", torch.cat(outs, 1), o), Check("ht", torch.cat(states, 0), ht)]
        checks += [Check(n, torch.cat(ts, 0 if n == "dh0" else 1), gr.get(n)) for n, ts in parts.items()]
        return checks
    return body


def inv_dplr_resume(path):
    """A prefix with output_final_state, then the rest from that state == one full run."""
    def body(ctx, p):
        fn = ctx.api(path)
        inp = dplr_inputs(p, _gen("dplr-resume", path, p))
        o, ht, _ = run_dplr(fn, inp, ctx.device)
        outs, state, prev = [], inp.get("h0"), 0
        for cut in list(p["splits"]) + [p["T"]]:
            o_i, state, _ = run_dplr(fn, {n: inp[n][:, prev:cut] for n in ARGS}, ctx.device, h0=state)
            outs.append(o_i)
            prev = cut
        return [Check("o", o, torch.cat(outs, 1)), Check("ht", ht, state)]
    return body


def inv_dplr_gradcheck(ctx, p):
    ctx.require_float64(DPLR_CHUNK)
    fn = ctx.api(DPLR_CHUNK)
    inp = dplr_inputs(p, _gen("dplr-gradcheck", p))
    args = [inp[n].double().to(ctx.device).requires_grad_() for n in ARGS + ("h0",)]

    def f(q, k, v, a, b, gk, h0):
        return fn(q=q, k=k, v=v, a=a, b=b, gk=gk, scale=0.5, initial_state=h0, output_final_state=True)
    ok = torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=False)
    return [Check("gradcheck", None, None, "fp64", passed=bool(ok),
                      message="" if ok else "analytic and numeric Jacobians differ")]


# -- RWKV-7's ops -------------------------------------------------------------------------------------

def inv_chunk_rwkv7(ctx, p):
    """chunk_rwkv7(r, w, k, v, a, b) == fla's naive recurrence (fp64), outputs and gradients."""
    inp = dplr_inputs(p, _gen("chunk_rwkv7", p))

    def call(fn, device, dtype):
        xs = {n: inp[n].detach().to(device=device, dtype=dtype).requires_grad_() for n in ARGS + ("h0",)}
        o, ht = fn(r=xs["q"], w=xs["gk"], k=xs["k"], v=xs["v"], a=xs["a"], b=xs["b"], initial_state=xs["h0"])
        (o * inp["do"].to(device=device, dtype=o.dtype)).sum().add((ht * inp["dht"].to(device, ht.dtype)).sum()).backward()
        return o, ht, {"d" + n: _cpu(t.grad) for n, t in xs.items()}
    o, ht, gr = call(ctx.api(RWKV7_CHUNK), ctx.device, torch.float32)
    ro, rht, rgr = call(ctx.oracle.resolve(RWKV7_CHUNK), torch.device("cpu"), torch.float64)
    checks = [Check("o", ro.detach(), _cpu(o)), Check("ht", rht.detach(), _cpu(ht))]
    return checks + [Check(n, rgr[n], gr[n]) for n in rgr]


def inv_fused_mul(ctx, p):
    """fused_mul_recurrent_rwkv7(r, w, k, v, kk, a) == fla's naive recurrence with a = -kk,
    b = kk * a (fp64), and == the DPLR kernel on those vectors (fla's own test)."""
    inp = dplr_inputs(p, _gen("fused_mul", p))
    cu = inp.get("cu_seqlens")

    def call(fn, device, dtype):
        x = {n: inp[n].to(device=device, dtype=dtype) for n in ("q", "gk", "k", "v", "kk", "rate", "h0")}
        with torch.no_grad():
            return fn(r=x["q"], w=x["gk"], k=x["k"], v=x["v"], kk=x["kk"], a=x["rate"], scale=1.0,
                      initial_state=x["h0"], output_final_state=True, cu_seqlens=_d(cu, device))
    o, ht = call(ctx.api(RWKV7_FUSED_MUL), ctx.device, torch.float32)
    ro, rht = call(ctx.oracle.resolve(RWKV7_FUSED_MUL), torch.device("cpu"), torch.float64)
    do, dht, _ = run_dplr(ctx.api(DPLR_FUSED), inp, ctx.device, scale=1.0)
    return [Check("o", ro, _cpu(o)), Check("ht", rht, _cpu(ht)),
            Check("o==dplr", do, _cpu(o)), Check("ht==dplr", dht, _cpu(ht))]


def _ref_and_grads(ctx, path, make, n_out):
    """Outputs and gradients of ``path`` and of fla's reference (fp64) on the same inputs."""
    args, cots = make()
    got_args = [a.detach().clone().to(ctx.device).requires_grad_() if a is not None else None for a in args]
    ref_args = [a.detach().double().requires_grad_() if a is not None else None for a in args]
    outs = ctx.api(path)(*got_args)
    refs = ctx.oracle.resolve(path)(*ref_args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    refs = refs if isinstance(refs, tuple) else (refs,)
    live = [i for i in range(n_out) if refs[i] is not None]
    sum(((outs[i] * cots[i].to(ctx.device)).sum() for i in live)).backward()
    sum(((refs[i] * cots[i].double()).sum() for i in live)).backward()
    checks = [Check(f"y{i}", refs[i].detach(), _cpu(outs[i])) for i in live]
    checks += [Check(f"d{j}", r.grad, _cpu(g.grad)) for j, (g, r) in enumerate(zip(got_args, ref_args))
               if r is not None]
    return checks


def inv_addcmul(ctx, p):
    gen = _gen("addcmul", p)
    B, T, D = p["B"], p["T"], p["D"]

    def make():
        mus = [torch.randn(1, 1, D, generator=gen) for _ in range(6)]
        if not p["use_g"]:
            mus[5] = None
        return [torch.randn(B, T, D, generator=gen), torch.randn(B, T, D, generator=gen)] + mus, \
            [torch.randn(B, T, D, generator=gen) for _ in range(6)]
    return _ref_and_grads(ctx, RWKV7_ADDCMUL, make, 6)


def inv_k_update(ctx, p):
    gen = _gen("k_update", p)
    B, T, D = p["B"], p["T"], p["D"]
    return _ref_and_grads(ctx, RWKV7_K_UPDATE, lambda: (
        [torch.randn(B, T, D, generator=gen), torch.rand(B, T, D, generator=gen),
         torch.randn(*p["ka"], generator=gen)], [torch.randn(B, T, D, generator=gen)]), 1)


def inv_gate(ctx, p):
    gen = _gen("gate", p)
    B, T, H, K, V = p["B"], p["T"], p["H"], p["K"], p["V"]
    return _ref_and_grads(ctx, RWKV7_GATE, lambda: (
        [torch.randn(B, T, H * V, generator=gen), torch.randn(B, T, H, K, generator=gen),
         torch.randn(B, T, H, K, generator=gen), torch.randn(H, K, generator=gen) * 0.5,
         torch.randn(B, T, H, V, generator=gen), torch.randn(B, T, H * V, generator=gen).sigmoid()],
        [torch.randn(B, T, H * V, generator=gen)]), 1)


def inv_token_shift(ctx, p):
    """token_shift (cache in and out, varlen) == fla's token_shift_ref (+ the cache by definition)."""
    gen = _gen("token_shift", p)
    B, T, D = p["B"], p["T"], p["D"]
    cu = torch.tensor(p["cu"], dtype=torch.long) if p.get("cu") else None
    N = len(p["cu"]) - 1 if p.get("cu") else B
    x = torch.randn(B, T, D, generator=gen)
    cache = torch.randn(N, D, generator=gen) if p.get("cache") else None
    dy, dc = torch.randn(B, T, D, generator=gen), torch.randn(N, D, generator=gen)

    def call(fn, device, dtype):
        xs = x.detach().clone().to(device=device, dtype=dtype).requires_grad_()
        cs = cache.detach().clone().to(device=device, dtype=dtype).requires_grad_() if cache is not None else None
        y, new = fn(xs, _d(cu, device), cache=cs, output_cache=True)
        ((y * dy.to(device, y.dtype)).sum() + (new * dc.to(device, new.dtype)).sum()).backward()
        return y, new, xs.grad, (cs.grad if cs is not None else None)
    y, new, dx, dcache = call(ctx.api(TOKEN_SHIFT), ctx.device, torch.float32)
    ry, rnew, rdx, rdcache = call(ctx.oracle.resolve(TOKEN_SHIFT), torch.device("cpu"), torch.float64)
    checks = [Check("y", ry.detach(), _cpu(y)), Check("cache_out", rnew.detach(), _cpu(new)),
              Check("dx", rdx, _cpu(dx))]
    if cache is not None:
        checks.append(Check("dcache", rdcache, _cpu(dcache)))
    return checks


def inv_token_shift_split(ctx, p):
    """Two calls chained through the cache == one call."""
    fn = ctx.api(TOKEN_SHIFT)
    x = torch.randn(p["B"], p["T"], p["D"], generator=_gen("token_shift_split", p)).to(ctx.device)
    with torch.no_grad():
        full, cache = fn(x, output_cache=True)
        y1, c1 = fn(x[:, :p["split"]], output_cache=True)
        y2, c2 = fn(x[:, p["split"]:], cache=c1, output_cache=True)
    return [Check("y", _cpu(full), _cpu(torch.cat([y1, y2], 1))), Check("cache", _cpu(cache),
                                                                                       _cpu(c2))]


GRADCHECK = {
    RWKV7_ADDCMUL: (lambda g: [torch.randn(1, 3, 4, generator=g, dtype=torch.float64) for _ in range(2)] +
                    [torch.randn(1, 1, 4, generator=g, dtype=torch.float64) for _ in range(6)],
                    lambda fn, *a: tuple(o for o in fn(*a) if o is not None)),
    RWKV7_K_UPDATE: (lambda g: [torch.randn(1, 3, 4, generator=g, dtype=torch.float64),
                                torch.rand(1, 3, 4, generator=g, dtype=torch.float64),
                                torch.randn(4, generator=g, dtype=torch.float64)],
                     lambda fn, k, a, ka: (fn(k, a, ka),)),
    RWKV7_GATE: (lambda g: [torch.randn(1, 3, 6, generator=g, dtype=torch.float64),
                            torch.randn(1, 3, 2, 3, generator=g, dtype=torch.float64),
                            torch.randn(1, 3, 2, 3, generator=g, dtype=torch.float64),
                            torch.randn(2, 3, generator=g, dtype=torch.float64),
                            torch.randn(1, 3, 2, 3, generator=g, dtype=torch.float64),
                            torch.randn(1, 3, 6, generator=g, dtype=torch.float64)],
                 lambda fn, *a: (fn(*a),)),
    TOKEN_SHIFT: (lambda g: [torch.randn(2, 5, 3, generator=g, dtype=torch.float64),
                             torch.randn(2, 3, generator=g, dtype=torch.float64)],
                  lambda fn, x, c: fn(x, cache=c, output_cache=True)),
}


def inv_gradcheck_fn(path):
    def body(ctx, p):
        ctx.require_float64(path)
        make, call = GRADCHECK[path]
        fn = ctx.api(path)
        args = [t.to(ctx.device).requires_grad_() for t in make(_gen("gc", path))]
        ok = torch.autograd.gradcheck(lambda *a: call(fn, *a), args, eps=1e-6, atol=1e-5, rtol=1e-4,
                                      raise_exception=False)
        return [Check("gradcheck", None, None, "fp64", passed=bool(ok),
                          message="" if ok else "analytic and numeric Jacobians differ")]
    return body


# -- the layer -----------------------------------------------------------------------------------------

INIT = dict(hidden_size=32, head_dim=16, layer_idx=0, num_hidden_layers=2)


def _init(p):
    init = dict(INIT)
    init.update(p.get("init", {}))
    return init


def _pair(ctx, p):
    """The implementation's layer and fla's layer code on float64 references, same random weights."""
    import warnings
    init = _init(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(zlib.crc32(f"rwkv7-layer|{p}".encode()))
        ref = ctx.oracle.resolve(RWKV7_LAYER)(**init)
        layer = ctx.api(RWKV7_LAYER)(**init)
    gen = _gen("rwkv7-layer-weights", p)
    with torch.no_grad():
        for prm in ref.parameters():
            prm.add_(torch.randn(prm.shape, generator=gen) * (0.1 if prm.dim() > 1 else 0.2))
    missing = layer.load_state_dict(ref.state_dict(), strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise AssertionError(f"state_dict differs from fla's: missing {missing.missing_keys}, "
                             f"unexpected {missing.unexpected_keys}")
    return layer.to(ctx.device).eval(), ref.double().eval()


def _x(p, tag):
    gen = _gen(tag, p)
    x = torch.randn(p["B"], p["T"], INIT["hidden_size"], generator=gen)
    vf = torch.randn(p["B"], p["T"], _init(p).get("value_dim") or INIT["hidden_size"], generator=gen)
    return x, vf


def inv_layer_state_dict(ctx, p):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        ref = ctx.oracle.resolve(RWKV7_LAYER)(**_init(p)).state_dict()
        torch.manual_seed(0)
        got = ctx.api(RWKV7_LAYER)(**_init(p)).state_dict()
    msgs = []
    if list(ref) != list(got):
        msgs.append(f"keys differ: fla {list(ref)}, got {list(got)}")
    msgs += [f"{k}: {tuple(got[k].shape)} != {tuple(ref[k].shape)}" for k in ref
             if k in got and got[k].shape != ref[k].shape]
    if not msgs:   # same seed, same init code: the same values
        msgs += [f"{k}: initial values differ" for k in ref if not torch.equal(ref[k], got[k].cpu())]
    return [Check("state_dict", None, None, passed=not msgs, message="; ".join(msgs))]


def inv_layer_reference(ctx, p):
    """Outputs and v_first == fla's layer code on float64 references (eval: chunk for T >= 64,
    fused_mul_recurrent below)."""
    layer, ref = _pair(ctx, p)
    x, vf = _x(p, "rwkv7-layer-x")
    mask = None
    if p.get("pad"):
        mask = torch.ones(p["B"], p["T"], dtype=torch.long)
        for b, n in enumerate(p["pad"]):
            mask[b, :n] = 0
    with torch.no_grad():
        o, _, _, v = layer(x.to(ctx.device), attention_mask=_d(mask, ctx.device), v_first=vf.to(ctx.device))
        r, _, _, rv = ref(x.double(), attention_mask=mask, v_first=vf.double())
    return [Check("o", r, _cpu(o)), Check("v_first", rv, _cpu(v))]


def inv_layer_masked(ctx, p):
    """Left-padded batch with attention_mask == each sample run unpadded on its own."""
    layer, _ = _pair(ctx, p)
    x, vf = _x(p, "rwkv7-layer-mask")
    mask = torch.ones(p["B"], p["T"], dtype=torch.long)
    for b, n in enumerate(p["pad"]):
        mask[b, :n] = 0
    with torch.no_grad():
        o = _cpu(layer(x.to(ctx.device), attention_mask=mask.to(ctx.device), v_first=vf.to(ctx.device))[0])
        checks = []
        for b, n in enumerate(p["pad"]):
            ob = layer(x[b:b + 1, n:].to(ctx.device), v_first=vf[b:b + 1, n:].to(ctx.device))[0]
            checks.append(Check(f"o[{b}]", _cpu(ob)[0], o[b, n:]))
    return checks


def inv_layer_decode(ctx, p):
    """Prefill with a cache, then token-by-token decode == one full forward."""
    layer, _ = _pair(ctx, p)
    x, vf = (t.to(ctx.device) for t in _x(p, "rwkv7-layer-dec"))
    T0 = p["prefill"]
    with torch.no_grad():
        full = layer(x, v_first=vf)[0]
        cache = StateCache()
        o0, _, cache, _ = layer(x[:, :T0], past_key_values=cache, use_cache=True, v_first=vf[:, :T0])
        steps = [o0]
        for t in range(T0, p["T"]):
            o_t, _, cache, _ = layer(x[:, t:t + 1], past_key_values=cache, use_cache=True, v_first=vf[:, t:t + 1])
            steps.append(o_t)
    return [Check("o", _cpu(full), _cpu(torch.cat(steps, 1)))]


def inv_layer_grads(ctx, p):
    """Training-mode gradients (input, v_first, every parameter) == fp64 autograd of fla's layer code."""
    layer, ref = _pair(ctx, p)
    layer.train()
    ref.train()
    x, vf = _x(p, "rwkv7-layer-grad")
    dy = torch.randn(x.shape, generator=_gen("rwkv7-layer-dy", p))
    xa, va = (t.detach().clone().to(ctx.device).requires_grad_() for t in (x, vf))
    xr, vr = (t.detach().double().requires_grad_() for t in (x, vf))
    o, _, _, v = layer(xa, v_first=va)
    r, _, _, rv = ref(xr, v_first=vr)
    ((o * dy.to(ctx.device)).sum() + v.sum() * 1e-2).backward()
    ((r * dy.double()).sum() + rv.sum() * 1e-2).backward()
    checks = [Check("o", r.detach(), _cpu(o)), Check("dx", xr.grad, _cpu(xa.grad))]
    if _init(p)["layer_idx"] != 0:
        checks.append(Check("dv_first", vr.grad, _cpu(va.grad)))
    got = dict(layer.named_parameters())
    for name, prm in sorted(ref.named_parameters()):
        checks.append(Check("dparam." + name, prm.grad, _cpu(got[name].grad) if name in got else None))
    return checks


# -- the declared matrix ---------------------------------------------------------------------------------

DPLR_CASES = [
    dict(B=1, T=37, H=1, K=16, V=24, h0=False),                  # T < chunk multiple, H = 1, K != V, no h0
    dict(B=2, T=100, H=2, K=32, V=32, h0=True, scale=1.0),       # RWKV-7 inputs over several chunks
    dict(B=1, T=1, H=2, K=16, V=16, h0=True),                    # T = 1
    dict(B=1, T=70, H=2, K=20, V=12, h0=True, fla=True),         # K not a power of two, fla's recipe
    dict(B=1, T=66, H=2, K=16, V=16, h0=True, fla=True, gate_norm=0.05),   # strong decay: split intra blocks
]
DPLR_VARLEN = [dict(B=1, T=100, H=2, K=16, V=16, h0=True, cu=[0, 1, 30, 95, 100]),
               dict(B=1, T=140, H=1, K=20, V=16, h0=False, cu=[0, 70, 71, 140])]
DPLR_RESUME = [dict(B=2, T=150, H=2, K=16, V=16, h0=True, splits=[37, 101]),
               dict(B=1, T=70, H=1, K=16, V=8, h0=False, splits=[32, 33])]


def rwkv7_invariants():
    chunk, fused = "chunk_dplr_delta_rule", "fused_recurrent_dplr_delta_rule"
    invs = [
        Invariant("naive", chunk, [DPLR_CHUNK], DPLR_CASES, inv_dplr_naive(DPLR_CHUNK, False), quick=2, layer=LAYER,
                  doc="forward == fla's dplr_recurrence in float64"),
        Invariant("grad==fp64 naive", chunk, [DPLR_CHUNK], DPLR_CASES, inv_dplr_naive(DPLR_CHUNK, True), quick=1,
                  layer=LAYER, doc="gradients == fp64 autograd through fla's dplr_recurrence"),
        Invariant("chunk==fused_recurrent", chunk, [DPLR_CHUNK, DPLR_FUSED], DPLR_CASES, inv_dplr_chunk_vs_fused,
                  quick=2, layer=LAYER),
        Invariant("varlen==slices", chunk, [DPLR_CHUNK], DPLR_VARLEN, inv_dplr_varlen(DPLR_CHUNK, True), quick=1,
                  layer=LAYER),
        Invariant("resume==full", chunk, [DPLR_CHUNK], DPLR_RESUME, inv_dplr_resume(DPLR_CHUNK), quick=1, layer=LAYER),
        Invariant("gradcheck fp64", chunk, [DPLR_CHUNK], [dict(B=1, T=20, H=1, K=4, V=3, h0=True),
                                                         dict(B=1, T=40, H=1, K=3, V=2, h0=True, fla=True,
                                                              gate_norm=0.05)],
                  inv_dplr_gradcheck, quick=1, layer=LAYER),
        Invariant("naive", fused, [DPLR_FUSED], DPLR_CASES, inv_dplr_naive(DPLR_FUSED, False), quick=2, layer=LAYER),
        Invariant("varlen==slices", fused, [DPLR_FUSED], DPLR_VARLEN, inv_dplr_varlen(DPLR_FUSED, False), quick=1,
                  layer=LAYER),
        Invariant("resume==full", fused, [DPLR_FUSED], DPLR_RESUME, inv_dplr_resume(DPLR_FUSED), quick=1,
                  layer=LAYER),
        Invariant("naive+grads", "chunk_rwkv7", [RWKV7_CHUNK], [dict(B=2, T=70, H=2, K=16, V=16, h0=True)],
                  inv_chunk_rwkv7, quick=1, layer=LAYER),
        Invariant("naive, ==dplr", "fused_mul_recurrent_rwkv7", [RWKV7_FUSED_MUL, DPLR_FUSED],
                  [dict(B=2, T=30, H=2, K=16, V=16, h0=True), dict(B=3, T=1, H=2, K=16, V=16, h0=True),
                   dict(B=1, T=1, H=2, K=8, V=8, h0=True, cu=[0, 0, 1])],
                  inv_fused_mul, quick=3, layer=LAYER),
        Invariant("ref+grads", "fused_addcmul_rwkv7", [RWKV7_ADDCMUL],
                  [dict(B=2, T=7, D=16, use_g=True), dict(B=1, T=5, D=8, use_g=False)], inv_addcmul, quick=2,
                  layer=LAYER),
        Invariant("ref+grads", "fused_k_rwkv7", [RWKV7_K_UPDATE],
                  [dict(B=2, T=7, D=16, ka=[16]), dict(B=1, T=600, D=4, ka=[1, 1, 4])], inv_k_update, quick=2,
                  layer=LAYER),
        Invariant("ref+grads", "gate_output_correction", [RWKV7_GATE],
                  [dict(B=2, T=5, H=2, K=8, V=8), dict(B=1, T=3, H=3, K=4, V=6)], inv_gate, quick=2, layer=LAYER),
        Invariant("ref+grads", "token_shift", [TOKEN_SHIFT],
                  [dict(B=2, T=9, D=8), dict(B=2, T=1, D=8), dict(B=2, T=5, D=8, cache=True),
                   dict(B=1, T=12, D=4, cache=True, cu=[0, 1, 1, 6, 12])], inv_token_shift, quick=4, layer=LAYER),
        Invariant("split==full", "token_shift", [TOKEN_SHIFT], [dict(B=2, T=9, D=8, split=4),
                                                                dict(B=1, T=4, D=8, split=1)],
                  inv_token_shift_split, quick=2, layer=LAYER),
    ]
    for path, group in ((RWKV7_ADDCMUL, "fused_addcmul_rwkv7"), (RWKV7_K_UPDATE, "fused_k_rwkv7"),
                        (RWKV7_GATE, "gate_output_correction"), (TOKEN_SHIFT, "token_shift")):
        invs.append(Invariant("gradcheck fp64", group, [path], [dict()], inv_gradcheck_fn(path), quick=1, layer=LAYER))
    layers = [dict(B=2, T=70), dict(B=1, T=20), dict(B=1, T=66, init=dict(layer_idx=1, fuse_norm=True)),
              dict(B=2, T=30, pad=[0, 7], init=dict(layer_idx=1)),
              dict(B=1, T=20, init=dict(layer_idx=None, value_dim=64))]
    invs += [
        Invariant("state_dict==fla", LAYER, [RWKV7_LAYER],
                  [dict(), dict(init=dict(layer_idx=1, fuse_norm=True)), dict(init=dict(layer_idx=None, value_dim=64))],
                  inv_layer_state_dict, quick=3, layer=LAYER),
        Invariant("==fla layer code (fp64 refs)", LAYER, [RWKV7_LAYER], layers, inv_layer_reference, quick=2,
                  layer=LAYER),
        Invariant("masked==unpadded", LAYER, [RWKV7_LAYER], [dict(B=2, T=70, pad=[0, 9]),
                                                             dict(B=3, T=20, pad=[5, 0, 19], init=dict(layer_idx=1))],
                  inv_layer_masked, quick=1, layer=LAYER),
        Invariant("prefill+decode==full", LAYER, [RWKV7_LAYER],
                  [dict(B=2, T=72, prefill=66), dict(B=1, T=12, prefill=5, init=dict(layer_idx=1))],
                  inv_layer_decode, quick=2, layer=LAYER),
        Invariant("grads==fp64 fla layer code", LAYER, [RWKV7_LAYER],
                  [dict(B=1, T=70), dict(B=1, T=30, init=dict(layer_idx=1, fuse_norm=True))], inv_layer_grads,
                  quick=1, layer=LAYER),
    ]
    return invs


def rwkv7_groups() -> List[str]:
    return sorted({i.group for i in rwkv7_invariants()})
