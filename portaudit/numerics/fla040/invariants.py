"""fla 0.4.0's invariants: named, parametrized numeric checks of its API, as registry data.

Each invariant resolves only fla API paths through the implementation under test and compares
its results with an oracle: fla's own pure-torch references from the fetched upstream tree,
run in float64 (``naive_recurrent_kda``, ``kda_gate_ref``, fla's layer code on reference ops),
formulas written from the math (norms, conv, cumsum, solve_tril), or the implementation itself
under a transformation that must not change the result (varlen vs slices, resume vs full,
GVA vs explicit repeat, chunk vs fused_recurrent, prefill + decode vs full forward). The engine
that runs them is :mod:`portaudit.numerics.invariants`. To add one: write a body
``(ctx, case) -> [Check]`` and append an :class:`Invariant` to :func:`declared_invariants`
(docs/numerics-registry.md).
"""

from __future__ import annotations

import random
import zlib
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from portaudit.numerics.cache import StateCache
import portaudit.numerics.fla040.apis as api
from portaudit.numerics.fla040.golden import _make_tril, _run_tril
from portaudit.numerics.fla040.reference import l2n
from portaudit.numerics.golden_cases import GoldenCase
from portaudit.numerics.invariants import Check, Context, Invariant, Skip


def _gen(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32("|".join(map(str, parts)).encode()))


def _d(t: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    return None if t is None else t.to(device)


def _cpu(t):
    return None if t is None else t.detach().cpu()


# -- the delta-rule family -----------------------------------------------------------------------

FAMILIES = {
    "kda": dict(chunk=api.KDA_CHUNK, fused=api.KDA_FUSED),
    "gdn": dict(chunk=api.GDN_CHUNK, fused=api.GDN_FUSED),
}


def delta_inputs(p: Dict[str, Any], family: str, gen: torch.Generator, l2: bool = False) -> Dict[str, torch.Tensor]:
    B, T, H, K, V = p["B"], p["T"], p["H"], p["K"], p["V"]
    HV = p.get("HV", H)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    if not l2:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    inp = dict(q=q, k=k, v=torch.randn(B, T, HV, V, generator=gen))
    gshape = (B, T, HV) if family == "gdn" else (B, T, H, K)
    inp["g"] = F.logsigmoid(torch.randn(*gshape, generator=gen)) / p.get("gate_norm", 1.0)
    inp["beta"] = torch.rand(B, T, HV, generator=gen).sigmoid()
    N = len(p["cu"]) - 1 if p.get("cu") else B
    if p.get("cu"):
        inp["cu_seqlens"] = torch.tensor(p["cu"], dtype=torch.long)
    if p.get("h0"):
        inp["h0"] = torch.randn(N, HV, K, V, generator=gen) * 0.5
    inp["do"] = torch.randn(B, T, HV, V, generator=gen)
    inp["dht"] = torch.randn(N, HV, K, V, generator=gen)
    return inp


def run_delta(fn, inp, device, dtype=torch.float32, grads=False, l2=False, cu=None, h0=None, **extra):
    """Call an fla-style delta-rule op; returns (o, ht, {grad name: grad}) on the CPU."""
    names = ["q", "k", "v", "g", "beta"]
    leaves = {n: inp[n].detach().to(device=device, dtype=dtype if n != "g" or dtype == torch.float64 else
                                    torch.float32).requires_grad_(grads) for n in names}
    h = inp.get("h0") if h0 is None else h0
    if h is not None:
        h = h.detach().to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        h.requires_grad_(grads)
    cu = inp.get("cu_seqlens") if cu is None else cu
    o, ht = fn(q=leaves["q"], k=leaves["k"], v=leaves["v"], g=leaves["g"], beta=leaves["beta"], initial_state=h,
               output_final_state=True, use_qk_l2norm_in_kernel=l2, cu_seqlens=_d(cu, device), **extra)
    gr = {}
    if grads:
        do, dht = inp["do"].to(device=device, dtype=o.dtype), inp["dht"].to(device=device, dtype=ht.dtype)
        (o * do).sum().add((ht * dht).sum()).backward()
        gr = {"d" + n: _cpu(t.grad) for n, t in leaves.items()}
        if h is not None:
            gr["dh0"] = _cpu(h.grad)
    return _cpu(o), _cpu(ht), gr


def _delta_oracle(ctx: Context, family: str, path: str, inp, grads=False, l2=False):
    fn = ctx.oracle.resolve(path)
    return run_delta(fn, inp, torch.device("cpu"), dtype=torch.float64, grads=grads, l2=l2)


def inv_naive(family, which, grads):
    def body(ctx: Context, p):
        path = FAMILIES[family][which]
        l2 = bool(p.get("l2"))
        inp = delta_inputs(p, family, _gen("naive", family, which, p), l2=l2)
        o, ht, gr = run_delta(ctx.api(path), inp, ctx.device, grads=grads, l2=l2)
        ro, rht, rgr = _delta_oracle(ctx, family, path, inp, grads=grads, l2=l2)
        checks = [Check("o", ro, o), Check("ht", rht, ht)]
        checks += [Check(n, rgr[n], gr.get(n)) for n in rgr]
        return checks
    return body


def inv_chunk_vs_fused(family):
    def body(ctx: Context, p):
        inp = delta_inputs(p, family, _gen("cvf", family, p), l2=bool(p.get("l2")))
        o1, h1, _ = run_delta(ctx.api(FAMILIES[family]["chunk"]), inp, ctx.device, l2=bool(p.get("l2")))
        o2, h2, _ = run_delta(ctx.api(FAMILIES[family]["fused"]), inp, ctx.device, l2=bool(p.get("l2")))
        return [Check("o", o2, o1), Check("ht", h2, h1)]
    return body


def inv_varlen(family, which, grads):
    """Packed sequences with cu_seqlens == each sequence run on its own."""
    def body(ctx: Context, p):
        fn = ctx.api(FAMILIES[family][which])
        inp = delta_inputs(p, family, _gen("varlen", family, which, p))
        o, ht, gr = run_delta(fn, inp, ctx.device, grads=grads)
        cu = p["cu"]
        outs, states, sg = [], [], {}
        for i, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
            sub = {n: inp[n][:, s:e] for n in ("q", "k", "v", "g", "beta", "do")}
            sub["h0"] = inp["h0"][i:i + 1] if "h0" in inp else None
            sub["dht"] = inp["dht"][i:i + 1]
            if sub["h0"] is None:
                sub.pop("h0")
            o_i, h_i, g_i = run_delta(fn, sub, ctx.device, grads=grads)
            outs.append(o_i)
            states.append(h_i)
            for n, t in g_i.items():
                sg.setdefault(n, []).append(t)
        checks = [Check("o", torch.cat(outs, 1), o), Check("ht", torch.cat(states, 0), ht)]
        for n, parts in sg.items():
            checks.append(Check(n, torch.cat(parts, 0 if n == "dh0" else 1), gr.get(n)))
        return checks
    return body


def inv_resume(family, which):
    """Prefix with output_final_state, then the rest from that state == one full run."""
    def body(ctx: Context, p):
        fn = ctx.api(FAMILIES[family][which])
        inp = delta_inputs(p, family, _gen("resume", family, which, p))
        o, ht, _ = run_delta(fn, inp, ctx.device)
        outs, state, prev = [], inp.get("h0"), 0
        for cut in list(p["splits"]) + [p["T"]]:
            sub = {n: inp[n][:, prev:cut] for n in ("q", "k", "v", "g", "beta")}
            o_i, state, _ = run_delta(fn, sub, ctx.device, h0=state)
            if state is None:
                raise AssertionError("output_final_state=True returned no state")
            outs.append(o_i)
            prev = cut
        return [Check("o", o, torch.cat(outs, 1)), Check("ht", ht, state)]
    return body


def inv_l2_in_kernel(family):
    """use_qk_l2norm_in_kernel=True == the same op on l2-normalised q, k (outputs and grads)."""
    def body(ctx: Context, p):
        fn = ctx.api(FAMILIES[family]["chunk"])
        inp = delta_inputs(p, family, _gen("l2", family, p), l2=True)
        o1, h1, g1 = run_delta(fn, inp, ctx.device, grads=True, l2=True)
        # The oracle side: normalise explicitly with autograd (fp64), so dq/dk include the
        # l2norm Jacobian; an implementation whose in-kernel norm has no backward fails here.
        q64 = inp["q"].double().requires_grad_()
        k64 = inp["k"].double().requires_grad_()
        sub = dict(inp, q=l2n(q64), k=l2n(k64))
        ref = ctx.oracle.resolve(FAMILIES[family]["chunk"])
        o, ht = ref(q=sub["q"], k=sub["k"], v=inp["v"].double(), g=inp["g"].double(), beta=inp["beta"].double(),
                    initial_state=inp["h0"].double() if "h0" in inp else None, output_final_state=True)
        (o * inp["do"].double()).sum().add((ht * inp["dht"].double()).sum()).backward()
        return [Check("o", o.detach(), o1), Check("ht", ht.detach(), h1),
                Check("dq", q64.grad, g1["dq"]), Check("dk", k64.grad, g1["dk"])]
    return body


def inv_gva():
    """fused_recurrent GDN with HV > H == the same op with q, k repeated to HV heads."""
    def body(ctx: Context, p):
        fn = ctx.api(api.GDN_FUSED)
        inp = delta_inputs(p, "gdn", _gen("gva", p), l2=True)
        o, ht, _ = run_delta(fn, inp, ctx.device, l2=True)
        rep = p["HV"] // p["H"]
        sub = dict(inp, q=inp["q"].repeat_interleave(rep, 2), k=inp["k"].repeat_interleave(rep, 2))
        o2, h2, _ = run_delta(fn, sub, ctx.device, l2=True)
        return [Check("o", o2, o), Check("ht", h2, ht)]
    return body


def inv_gradcheck(family):
    """torch.autograd.gradcheck in float64 through the chunk op's autograd.Function."""
    def body(ctx: Context, p):
        ctx.require_float64(FAMILIES[family]["chunk"])
        fn = ctx.api(FAMILIES[family]["chunk"])
        inp = delta_inputs(p, family, _gen("gradcheck", family, p))
        args = [inp[n].double().to(ctx.device).requires_grad_() for n in ("q", "k", "v", "g", "beta", "h0")]

        def f(q, k, v, g, beta, h0):
            o, ht = fn(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True)
            return o, ht
        ok = torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=False)
        return [Check("gradcheck", None, None, "fp64", passed=bool(ok),
                      message="" if ok else "analytic and numeric Jacobians differ")]
    return body


# -- gate, modules ---------------------------------------------------------------------------------

def inv_gate(ctx: Context, p):
    gen = _gen("gate", p)
    B, T, H, K = p["B"], p["T"], p["H"], p["K"]
    g = torch.randn(B, T, H * K, generator=gen) * p.get("scale", 1.0)
    A = torch.log(torch.empty(H).uniform_(1, 16, generator=gen))
    bias = torch.randn(H * K, generator=gen) * 0.5 if p.get("bias") else None
    dy = torch.randn(B, T, H, K, generator=gen)

    def run(fn, dtype, device):
        leaves = [t.detach().to(device=device, dtype=dtype).requires_grad_() if t is not None else None
                  for t in (g, A, bias)]
        y = fn(leaves[0], leaves[1], K, g_bias=leaves[2])
        (y * dy.to(device=device, dtype=y.dtype)).sum().backward()
        out = {"y": _cpu(y), "dg": _cpu(leaves[0].grad), "dA": _cpu(leaves[1].grad)}
        if bias is not None:
            out["dg_bias"] = _cpu(leaves[2].grad)
        return out
    act = run(ctx.api(api.KDA_GATE), torch.float32, ctx.device)
    ref = run(ctx.oracle.resolve(api.KDA_GATE), torch.float64, torch.device("cpu"))
    return [Check(n, ref[n], act.get(n)) for n in ref]


def _conv_ref_module(ctx, p, weight, bias):
    cls = ctx.oracle.resolve(api.SHORT_CONV)
    m = cls(hidden_size=p["D"], kernel_size=p["W"], bias=bias is not None, activation=p.get("act", "silu")).double()
    sd = {"weight": weight.double()}
    if bias is not None:
        sd["bias"] = bias.double()
    m.load_state_dict(sd)
    return m


def _conv_module(ctx, p, weight, bias):
    cls = ctx.api(api.SHORT_CONV)
    m = cls(hidden_size=p["D"], kernel_size=p["W"], bias=bias is not None, activation=p.get("act", "silu"))
    sd = {"weight": weight}
    if bias is not None:
        sd["bias"] = bias
    m.load_state_dict(sd)
    return m.to(ctx.device)


def _conv_inputs(p, tag):
    gen = _gen("conv", tag, p)
    B, T, D, W = p["B"], p["T"], p["D"], p["W"]
    w = torch.randn(D, 1, W, generator=gen) * 0.5
    b = torch.randn(D, generator=gen) * 0.2 if p.get("bias") else None
    x = torch.randn(B, T, D, generator=gen)
    dy = torch.randn(B, T, D, generator=gen)
    return w, b, x, dy


def inv_conv_naive(ctx: Context, p):
    w, b, x, dy = _conv_inputs(p, "naive")
    cu = torch.tensor(p["cu"], dtype=torch.long) if p.get("cu") else None

    def run(m, dtype, device):
        xx = x.detach().to(device=device, dtype=dtype).requires_grad_()
        y, _ = m(x=xx, cu_seqlens=_d(cu, device))
        (y * dy.to(device=device, dtype=dtype)).sum().backward()
        out = {"y": _cpu(y), "dx": _cpu(xx.grad), "dweight": _cpu(m.weight.grad)}
        if m.bias is not None:
            out["dbias"] = _cpu(m.bias.grad)
        return out
    act = run(_conv_module(ctx, p, w, b), torch.float32, ctx.device)
    ref = run(_conv_ref_module(ctx, p, w, b), torch.float64, torch.device("cpu"))
    return [Check(n, ref[n], act.get(n)) for n in ref]


def inv_causal_conv1d(ctx: Context, p):
    """fla's ``causal_conv1d`` (x ``[B, T, D]``, weight ``[D, W]``): outputs, final state and every
    gradient against the float64 formula."""
    gen = _gen("causal_conv1d", p)
    B, T, D, W = p["B"], p["T"], p["D"], p["W"]
    cu = torch.tensor(p["cu"], dtype=torch.long) if p.get("cu") else None
    N = len(p["cu"]) - 1 if p.get("cu") else B
    x = torch.randn(B, T, D, generator=gen)
    w = torch.randn(D, W, generator=gen) * 0.5
    b = torch.randn(D, generator=gen) * 0.2 if p.get("bias") else None
    r = torch.randn(B, T, D, generator=gen) if p.get("residual") else None
    h0 = torch.randn(N, D, W, generator=gen) if p.get("h0") else None
    dy, dfinal = torch.randn(B, T, D, generator=gen), torch.randn(N, D, W, generator=gen)
    # Only the last W-1 columns of a conv state are ever read again (fla's step and prefill), and
    # fla's causal_conv1d_bwd (convolution.py L321-L330) drops the gradient of column 0: no
    # cotangent there, so the oracle's autograd and fla's backward agree.
    dfinal[..., 0] = 0
    final = bool(p.get("final"))

    def run(fn, dtype, device):
        leaves = {n: t.detach().to(device=device, dtype=dtype).requires_grad_()
                  for n, t in (("x", x), ("weight", w), ("bias", b), ("residual", r), ("h0", h0)) if t is not None}
        y, fin = fn(leaves["x"], weight=leaves["weight"], bias=leaves.get("bias"), residual=leaves.get("residual"),
                    initial_state=leaves.get("h0"), output_final_state=final, activation=p.get("act"),
                    cu_seqlens=_d(cu, device))
        loss = (y * dy.to(device=device, dtype=dtype)).sum()
        if final:
            loss = loss + (fin * dfinal.to(device=device, dtype=dtype)).sum()
        loss.backward()
        out = {"y": _cpu(y), "final_state": _cpu(fin)}
        out.update({"d" + n: _cpu(t.grad) for n, t in leaves.items()})
        return out
    act = run(ctx.api(api.CAUSAL_CONV), torch.float32, ctx.device)
    ref = run(ctx.oracle.resolve(api.CAUSAL_CONV), torch.float64, torch.device("cpu"))
    return [Check(n, ref[n], act.get(n)) for n in ref if ref[n] is not None or act.get(n) is not None]


def inv_conv_varlen(ctx: Context, p):
    w, b, x, _ = _conv_inputs(p, "varlen")
    m = _conv_module(ctx, p, w, b)
    cu = p["cu"]
    with torch.no_grad():
        y, fin = m(x=x.to(ctx.device), cu_seqlens=torch.tensor(cu, device=ctx.device), output_final_state=True)
        parts, finals = [], []
        for s, e in zip(cu[:-1], cu[1:]):
            y_i, f_i = m(x=x[:, s:e].to(ctx.device), output_final_state=True)
            parts.append(_cpu(y_i))
            finals.append(_cpu(f_i))
    return [Check("y", torch.cat(parts, 1), _cpu(y)), Check("final_state", torch.cat(finals, 0), _cpu(fin))]


def inv_conv_step(ctx: Context, p):
    """Prefill with output_final_state, then token-by-token step() == one forward."""
    w, b, x, _ = _conv_inputs(p, "step")
    m = _conv_module(ctx, p, w, b)
    T0 = p["prefill"]
    with torch.no_grad():
        y, _ = m(x=x.to(ctx.device))
        y0, cache = m(x=x[:, :T0].to(ctx.device), output_final_state=True)
        steps = [_cpu(y0)]
        for t in range(T0, p["T"]):
            y_t, cache = m(x=x[:, t:t + 1].to(ctx.device), cache=cache, output_final_state=True)
            steps.append(_cpu(y_t))
    return [Check("y", _cpu(y), torch.cat(steps, 1))]


def inv_norm(ctx: Context, p):
    """The norm against its float64 formula. ``eps="default"`` constructs both without ``eps``, so
    the implementation's default must be fla's; ``x_scale`` makes activations small enough for
    ``eps`` to show (mean square 1e-4: eps 1e-6 instead of 1e-5 changes y by ~4.4%)."""
    gen = _gen("norm", p)
    shape = (p["B"], p["T"], p["D"])
    x, gate, res = (torch.randn(*shape, generator=gen) for _ in range(3))
    x = x * p.get("x_scale", 1.0)
    w = 1 + 0.2 * torch.randn(p["D"], generator=gen)
    dy, dres = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    gated = p["module"] == "gated"
    path = api.RMSNORM_GATED if gated else api.RMSNORM

    def run(cls, dtype, device):
        kw = dict(hidden_size=p["D"])
        if p.get("eps", 1e-5) != "default":
            kw["eps"] = p.get("eps", 1e-5)
        if gated:
            kw["activation"] = p["act"]
        m = cls(**kw)
        m.load_state_dict({"weight": w})
        m = m.to(device=device, dtype=dtype)
        xx = x.detach().to(device=device, dtype=dtype).requires_grad_()
        gg = gate.detach().to(device=device, dtype=dtype).requires_grad_()
        rr = res.detach().to(device=device, dtype=dtype).requires_grad_() if p.get("residual") else None
        args = (xx, gg) if gated else (xx,)
        outp = m(*args, residual=rr, prenorm=bool(p.get("prenorm")))
        y, r_out = outp if p.get("prenorm") else (outp, None)
        loss = (y * dy.to(device=device, dtype=dtype)).sum()
        if r_out is not None:
            loss = loss + (r_out.to(dtype) * dres.to(device=device, dtype=dtype)).sum()
        loss.backward()
        out = {"y": _cpu(y), "dx": _cpu(xx.grad), "dweight": _cpu(m.weight.grad)}
        if gated:
            out["dg"] = _cpu(gg.grad)
        if r_out is not None:
            out["residual_out"] = _cpu(r_out)
        if rr is not None:
            out["dresidual"] = _cpu(rr.grad)
        return out
    act = run(ctx.api(path), torch.float32, ctx.device)
    ref = run(ctx.oracle.resolve(path), torch.float64, torch.device("cpu"))
    return [Check(n, ref[n], act.get(n)) for n in ref]


def inv_l2norm(ctx: Context, p):
    gen = _gen("l2norm", p)
    x = torch.randn(p["N"], p["D"], generator=gen)
    dy = torch.randn(p["N"], p["D"], generator=gen)
    fwd, bwd = ctx.api(api.L2NORM_FWD), ctx.api(api.L2NORM_BWD)
    y, rstd = fwd(x.to(ctx.device))
    dx = bwd(y, rstd, dy.to(ctx.device))
    x64 = x.double().requires_grad_()
    y64 = l2n(x64)
    (y64 * dy.double()).sum().backward()
    rstd64 = torch.rsqrt(x.double().square().sum(-1) + 1e-6)
    return [Check("y", y64.detach(), _cpu(y)), Check("rstd", rstd64, _cpu(rstd)), Check("dx", x64.grad, _cpu(dx))]


def inv_cumsum(ctx: Context, p):
    gen = _gen("cumsum", p)
    shape = (p["B"], p["T"], p["H"]) + ((p["D"],) if p.get("D") else ())
    g = F.logsigmoid(torch.randn(*shape, generator=gen))
    cu = torch.tensor(p["cu"], dtype=torch.long) if p.get("cu") else None
    kw = dict(chunk_size=p["C"], reverse=bool(p.get("reverse")), scale=p.get("scale"))
    y = ctx.api(api.CUMSUM)(g.to(ctx.device), cu_seqlens=_d(cu, ctx.device), **kw)
    ref = ctx.oracle.resolve(api.CUMSUM)(g.double(), cu_seqlens=cu, output_dtype=torch.float64, **kw)
    return [Check("y", ref, _cpu(y))]


def inv_solve_tril(ctx: Context, p):
    case = GoldenCase("inv", api.SOLVE_TRIL, "op", dict(p), _make_tril, _run_tril)
    inp = _make_tril(case, _gen("tril", p), ctx.impl)
    A, cu = inp["A"], inp.get("cu_seqlens")
    got = ctx.api(api.SOLVE_TRIL)(A.to(ctx.device), cu_seqlens=_d(cu, ctx.device))
    ref = ctx.oracle.resolve(api.SOLVE_TRIL)(A.double(), cu_seqlens=cu, output_dtype=torch.float64)
    return [Check("Ai", ref, _cpu(got))]


# -- layers ----------------------------------------------------------------------------------------

def _layer_pair(ctx: Context, p, path):
    """The implementation's layer and fla's layer code on float64 references, same weights."""
    init = dict(hidden_size=32, head_dim=16, num_heads=2, layer_idx=0)
    init.update(p.get("init", {}))
    torch.manual_seed(zlib.crc32(f"layer|{path}|{p}".encode()))
    ref = ctx.oracle.resolve(path)(**init)
    gen = _gen("layer-weights", path, p)
    with torch.no_grad():
        for prm in ref.parameters():
            prm.add_(torch.randn(prm.shape, generator=gen) * (0.02 if prm.dim() > 1 else 0.1))
    layer = ctx.api(path)(**init)
    missing = layer.load_state_dict(ref.state_dict(), strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise AssertionError(f"state_dict differs from fla's: missing {missing.missing_keys}, "
                             f"unexpected {missing.unexpected_keys}")
    return layer.to(ctx.device).eval(), ref.double().eval()


def inv_layer_state_dict(path):
    def body(ctx: Context, p):
        init = dict(hidden_size=32, head_dim=16, num_heads=2, layer_idx=0)
        init.update(p.get("init", {}))
        ref = {k: tuple(v.shape) for k, v in ctx.oracle.resolve(path)(**init).state_dict().items()}
        got = {k: tuple(v.shape) for k, v in ctx.api(path)(**init).state_dict().items()}
        msgs = []
        if set(ref) != set(got):
            msgs.append(f"missing {sorted(set(ref) - set(got))}, unexpected {sorted(set(got) - set(ref))}")
        bad = [k for k in set(ref) & set(got) if ref[k] != got[k]]
        if bad:
            msgs.append("shapes differ: " + ", ".join(f"{k} {got[k]} != {ref[k]}" for k in sorted(bad)))
        return [Check("state_dict", None, None, passed=not msgs, message="; ".join(msgs))]
    return body


def inv_layer_reference(path):
    """The layer == fla's own layer code run on float64 references (same state_dict)."""
    def body(ctx: Context, p):
        layer, ref = _layer_pair(ctx, p, path)
        x = torch.randn(p["B"], p["T"], 32, generator=_gen("layer-x", path, p))
        mask = None
        if p.get("pad"):
            mask = torch.ones(p["B"], p["T"], dtype=torch.long)
            for b, n in enumerate(p["pad"]):
                mask[b, :n] = 0
        with torch.no_grad():
            o, _, _ = layer(hidden_states=x.to(ctx.device), attention_mask=_d(mask, ctx.device))
            r, _, _ = ref(hidden_states=x.double(), attention_mask=mask)
        return [Check("o", r, _cpu(o))]
    return body


def inv_layer_masked(path):
    """Left-padded batch with attention_mask == each sample run unpadded on its own."""
    def body(ctx: Context, p):
        layer, _ = _layer_pair(ctx, p, path)
        B, T = p["B"], p["T"]
        x = torch.randn(B, T, 32, generator=_gen("layer-mask", path, p))
        mask = torch.ones(B, T, dtype=torch.long)
        for b, n in enumerate(p["pad"]):
            mask[b, :n] = 0
        with torch.no_grad():
            o, _, _ = layer(hidden_states=x.to(ctx.device), attention_mask=mask.to(ctx.device))
            o = _cpu(o)
            checks = []
            for b, n in enumerate(p["pad"]):
                ob, _, _ = layer(hidden_states=x[b:b + 1, n:].to(ctx.device))
                checks.append(Check(f"o[{b}]", _cpu(ob)[0], o[b, n:]))
        return checks
    return body


def inv_layer_decode(path):
    """Prefill with a cache, then token-by-token decode == one full forward."""
    def body(ctx: Context, p):
        layer, _ = _layer_pair(ctx, p, path)
        x = torch.randn(p["B"], p["T"], 32, generator=_gen("layer-dec", path, p)).to(ctx.device)
        T0 = p["prefill"]
        with torch.no_grad():
            full, _, _ = layer(hidden_states=x)
            cache = StateCache()
            o0, _, cache = layer(hidden_states=x[:, :T0], past_key_values=cache, use_cache=True)
            steps = [o0]
            for t in range(T0, p["T"]):
                o_t, _, cache = layer(hidden_states=x[:, t:t + 1], past_key_values=cache, use_cache=True)
                steps.append(o_t)
        return [Check("o", _cpu(full), _cpu(torch.cat(steps, 1)))]
    return body


# -- fp64 gradcheck of the autograd.Functions behind fla's wrappers ------------------------------

def _gc_inputs(spec, gen):
    return [torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
            for shape, scale, shift in spec]


GRADCHECK_FUNCTIONS = {
    # API path -> (tensor specs (shape, scale, shift), call(fn, *tensors) -> output tensors)
    "fla.layers.utils.index_first_axis": (
        [((6, 3), 1.0, 0.0)], lambda fn, x: (fn(x, torch.tensor([0, 2, 5], device=x.device)),)),
    "fla.layers.utils.pad_input": (
        [((3, 2), 1.0, 0.0)], lambda fn, h: (fn(h, torch.tensor([1, 2, 4], device=h.device), 2, 3),)),
    "fla.modules.convolution.causal_conv1d": (
        [((1, 7, 4), 1.0, 0.0), ((4, 3), 0.5, 0.0), ((4,), 0.2, 0.0), ((1, 7, 4), 1.0, 0.0)],
        lambda fn, x, w, b, r: fn(x, w, b, residual=r, activation="silu")[:1]),
    "fla.modules.fused_norm_gate.rms_norm_gated": (
        [((5, 8), 1.0, 0.0), ((5, 8), 1.0, 0.0), ((8,), 0.2, 1.0), ((5, 8), 1.0, 0.0)],
        lambda fn, x, g, w, r: fn(x, g, w, None, activation="swish", residual=r, prenorm=True, eps=1e-5)),
    "fla.modules.layernorm.rms_norm": (
        [((5, 8), 1.0, 0.0), ((8,), 0.2, 1.0), ((5, 8), 1.0, 0.0)],
        lambda fn, x, w, r: fn(x, w, None, residual=r, prenorm=True, eps=1e-5)),
    "fla.ops.kda.gate.fused_kda_gate": (
        [((1, 3, 8), 1.0, 0.0), ((2,), 0.5, 1.0), ((8,), 0.5, 0.0)],
        lambda fn, g, A, b: (fn(g, A, 4, g_bias=b),)),
}

def inv_gradcheck_fn(path):
    """torch.autograd.gradcheck in float64 through the wrapper's autograd.Function."""
    def body(ctx: Context, p):
        ctx.require_float64(path)
        spec, call = GRADCHECK_FUNCTIONS[path]
        fn = ctx.api(path)
        args = [t.to(ctx.device).requires_grad_() for t in _gc_inputs(spec, _gen("gc", path))]
        probe = call(fn, *[a.detach() for a in args])
        lower = [o.dtype for o in probe if o.dtype != torch.float64]
        if lower:
            raise Skip(f"returns {lower[0]} for float64 inputs (upstream's dtype contract), so a float64 "
                       f"gradcheck is not meaningful; gradients are compared with fp64 autograd instead")
        ok = torch.autograd.gradcheck(lambda *a: call(fn, *a), args, eps=1e-6, atol=1e-5, rtol=1e-4,
                                      raise_exception=False)
        return [Check("gradcheck", None, None, "fp64", passed=bool(ok),
                      message="" if ok else "analytic and numeric Jacobians differ")]
    return body


def inv_layer_grads(path):
    """Training-mode gradients (input and every parameter) == fp64 autograd of fla's layer code."""
    def body(ctx: Context, p):
        layer, ref = _layer_pair(ctx, p, path)
        layer.train()
        ref.train()
        gen = _gen("layer-grad", path, p)
        x = torch.randn(p["B"], p["T"], 32, generator=gen)
        dy = torch.randn(p["B"], p["T"], 32, generator=gen)
        xa = x.detach().to(ctx.device).requires_grad_()
        xr = x.detach().double().requires_grad_()
        o, _, _ = layer(hidden_states=xa)
        r, _, _ = ref(hidden_states=xr)
        (o * dy.to(ctx.device)).sum().backward()
        (r * dy.double()).sum().backward()
        checks = [Check("o", r.detach(), _cpu(o)), Check("dx", xr.grad, _cpu(xa.grad))]
        got = dict(layer.named_parameters())
        for name, prm in sorted(ref.named_parameters()):
            checks.append(Check("dparam." + name, prm.grad, _cpu(got[name].grad) if name in got else None))
        return checks
    return body


# -- the declared matrix ---------------------------------------------------------------------------

DELTA_CASES = [
    dict(B=1, T=37, H=1, K=16, V=24, h0=False),         # T < 64, H = 1, K != V, no h0
    dict(B=2, T=100, H=2, K=32, V=32, h0=True, gate_norm=16),  # T % 64 != 0, B > 1, slow decay: state matters
    dict(B=1, T=1, H=2, K=16, V=16, h0=True),           # T = 1
    dict(B=1, T=70, H=2, K=20, V=12, h0=True),          # K not a power of two
    dict(B=1, T=66, H=2, K=16, V=16, h0=True, l2=True),  # in-kernel l2norm
]
VARLEN_CASES = [
    dict(B=1, T=100, H=2, K=16, V=16, h0=True, cu=[0, 1, 30, 95, 100]),   # includes a length-1 sequence
    dict(B=1, T=140, H=1, K=20, V=16, h0=False, cu=[0, 70, 71, 140]),
]
RESUME_CASES = [
    dict(B=2, T=150, H=2, K=16, V=16, h0=True, splits=[37, 101], gate_norm=16),   # split points mid-chunk
    dict(B=1, T=70, H=1, K=16, V=8, h0=False, splits=[64, 65]),
]
GRADCHECK_CASES = [dict(B=1, T=6, H=1, K=4, V=3, h0=True)]
GVA_CASES = [dict(B=1, T=40, H=2, HV=4, K=16, V=16, h0=True), dict(B=2, T=9, H=1, HV=3, K=8, V=8, h0=False)]


def declared_invariants() -> List[Invariant]:
    invs: List[Invariant] = []
    for fam, label in (("kda", "chunk_kda"), ("gdn", "chunk_gated_delta_rule")):
        chunk, fused = FAMILIES[fam]["chunk"], FAMILIES[fam]["fused"]
        flabel = fused.rsplit(".", 1)[-1]
        layer = "KimiDeltaAttention" if fam == "kda" else "GatedDeltaNet"
        invs += [
            Invariant("naive", label, [chunk], DELTA_CASES, inv_naive(fam, "chunk", False), quick=2, layer=layer,
                      doc="forward == fla's naive_recurrent_kda in float64", hypothesis=True),
            Invariant("grad==fp64 naive", label, [chunk], DELTA_CASES, inv_naive(fam, "chunk", True), quick=1,
                      layer=layer, doc="gradients == fp64 autograd through fla's naive reference", hypothesis=True),
            Invariant("chunk==fused_recurrent", label, [chunk, fused], DELTA_CASES, inv_chunk_vs_fused(fam),
                      quick=2, layer=layer, hypothesis=True),
            Invariant("varlen==slices", label, [chunk], VARLEN_CASES, inv_varlen(fam, "chunk", True), quick=1,
                      layer=layer),
            Invariant("resume==full", label, [chunk], RESUME_CASES, inv_resume(fam, "chunk"), quick=1, layer=layer),
            Invariant("l2norm_in_kernel==explicit", label, [chunk], [DELTA_CASES[3], DELTA_CASES[1]],
                      inv_l2_in_kernel(fam), quick=1, layer=layer),
            Invariant("gradcheck fp64", label, [chunk], GRADCHECK_CASES, inv_gradcheck(fam), quick=1, layer=layer),
            Invariant("naive", flabel, [fused], DELTA_CASES, inv_naive(fam, "fused", False), quick=2, layer=layer,
                      hypothesis=True),
            Invariant("varlen==slices", flabel, [fused], VARLEN_CASES, inv_varlen(fam, "fused", False), quick=1,
                      layer=layer),
            Invariant("resume==full", flabel, [fused], RESUME_CASES, inv_resume(fam, "fused"), quick=1, layer=layer),
        ]
    invs.append(Invariant("gva==repeat", "fused_recurrent_gated_delta_rule", [api.GDN_FUSED], GVA_CASES, inv_gva(),
                          quick=1, layer="GatedDeltaNet"))
    invs.append(Invariant("ref+grads", "fused_kda_gate", [api.KDA_GATE],
                          [dict(B=2, T=9, H=2, K=16, bias=True), dict(B=1, T=5, H=3, K=12, bias=False),
                           dict(B=1, T=4, H=2, K=8, bias=True, scale=30.0)], inv_gate, quick=3,
                          layer="KimiDeltaAttention"))
    conv = [dict(B=2, T=40, D=32, W=4, bias=True), dict(B=1, T=3, D=16, W=4, act=None)]
    invs += [
        Invariant("naive+grads", "ShortConvolution", [api.SHORT_CONV],
                  conv + [dict(B=1, T=50, D=16, W=3, bias=True, cu=[0, 1, 20, 50])], inv_conv_naive, quick=3),
        Invariant("varlen==slices", "ShortConvolution", [api.SHORT_CONV],
                  [dict(B=1, T=50, D=16, W=4, bias=True, cu=[0, 1, 20, 22, 50])], inv_conv_varlen, quick=1),
        Invariant("prefill+step==forward", "ShortConvolution", [api.SHORT_CONV],
                  [dict(B=2, T=12, D=16, W=4, bias=True, prefill=5), dict(B=1, T=6, D=8, W=4, prefill=2)],
                  inv_conv_step, quick=2),
        Invariant("formula+grads", "causal_conv1d", [api.CAUSAL_CONV],
                  [dict(B=2, T=40, D=32, W=4, bias=True, act="silu"),
                   dict(B=1, T=3, D=16, W=4, act=None),                                  # T < W
                   dict(B=2, T=30, D=16, W=4, residual=True, act="swish"),
                   dict(B=2, T=20, D=16, W=3, h0=True, final=True, act="silu"),          # resume from a state
                   dict(B=1, T=50, D=16, W=4, bias=True, cu=[0, 1, 20, 50], final=True, act="silu")],
                  inv_causal_conv1d, quick=5),
    ]
    norms = [dict(module="gated", act="swish", B=2, T=7, D=32), dict(module="gated", act="sigmoid", B=1, T=5, D=20),
             dict(module="gated", act="silu", B=1, T=5, D=16, residual=True, prenorm=True),
             # fla's default eps (1e-5) on small activations, where eps matters
             dict(module="gated", act="swish", B=2, T=7, D=32, eps="default", x_scale=0.01),
             dict(module="gated", act="sigmoid", B=2, T=7, D=32, eps="default", x_scale=0.01)]
    invs.append(Invariant("formula+grads", "FusedRMSNormGated", [api.RMSNORM_GATED], norms, inv_norm, quick=5))
    invs.append(Invariant("formula+grads", "RMSNorm", [api.RMSNORM],
                          [dict(module="rms", B=2, T=7, D=32), dict(module="rms", B=1, T=5, D=20, residual=True,
                                                                     prenorm=True),
                           dict(module="rms", B=2, T=7, D=32, eps="default", x_scale=0.01)], inv_norm, quick=3,
                          layer="GatedDeltaNet"))
    invs.append(Invariant("formula+grads", "l2norm", [api.L2NORM_FWD, api.L2NORM_BWD],
                          [dict(N=50, D=64), dict(N=7, D=100), dict(N=3, D=1024)], inv_l2norm, quick=3))
    invs.append(Invariant("per-chunk cumsum", "chunk_local_cumsum", [api.CUMSUM],
                          [dict(B=2, T=100, H=2, C=64), dict(B=2, T=70, H=2, D=8, C=16, reverse=True, scale=0.5),
                           dict(B=1, T=90, H=2, D=4, C=32, cu=[0, 1, 33, 90])], inv_cumsum, quick=3))
    invs.append(Invariant("inverse", "solve_tril", [api.SOLVE_TRIL],
                          [dict(B=1, T=50, H=2, K=16, BT=16), dict(B=2, T=70, H=1, K=16, BT=64),
                           dict(B=1, T=90, H=2, K=16, BT=32, cu_seqlens=[0, 1, 40, 90])], inv_solve_tril, quick=3))
    for path, name, extra in ((api.KDA_LAYER, "KimiDeltaAttention", []),
                              (api.GDN_LAYER, "GatedDeltaNet", [dict(init=dict(use_gate=False)),
                                                                dict(init=dict(num_v_heads=4))])):
        base = [dict(B=2, T=70), dict(B=1, T=20, init=dict(allow_neg_eigval=True))]
        invs += [
            Invariant("state_dict==fla", name, [path], [dict()] + [e for e in extra], inv_layer_state_dict(path),
                      quick=3, layer=name),
            Invariant("==fla layer code (fp64 refs)", name, [path], base + [dict(B=2, T=30, pad=[0, 7])] +
                      [dict(e, B=1, T=20) for e in extra], inv_layer_reference(path), quick=1, layer=name),
            Invariant("masked==unpadded", name, [path], [dict(B=2, T=70, pad=[0, 9]), dict(B=3, T=20, pad=[5, 0, 19])],
                      inv_layer_masked(path), quick=1, layer=name),
            Invariant("prefill+decode==full", name, [path], [dict(B=2, T=72, prefill=66), dict(B=1, T=12, prefill=5)],
                      inv_layer_decode(path), quick=1, layer=name),
            Invariant("grads==fp64 fla layer code", name, [path], [dict(B=1, T=70)] +
                      [dict(e, B=1, T=66) for e in extra], inv_layer_grads(path), quick=1, layer=name),
        ]
    owners = {"fla.layers.utils.index_first_axis": ("IndexFirstAxis", None),
              "fla.layers.utils.pad_input": ("IndexPutFirstAxis", None),
              "fla.modules.convolution.causal_conv1d": ("causal_conv1d", None),
              "fla.modules.fused_norm_gate.rms_norm_gated": ("FusedRMSNormGated", None),
              "fla.modules.layernorm.rms_norm": ("RMSNorm", "GatedDeltaNet"),
              "fla.ops.kda.gate.fused_kda_gate": ("fused_kda_gate", "KimiDeltaAttention")}
    for path, (group, layer) in owners.items():
        invs.append(Invariant("gradcheck fp64", group, [path], [dict()], inv_gradcheck_fn(path), quick=1,
                              layer=layer))
    return invs


def hypothesis_cases(n: int, seed: int) -> List[Dict[str, Any]]:
    """``n`` random delta-rule cases (replayable from ``seed``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        H = rng.choice([1, 2, 3])
        out.append(dict(B=rng.choice([1, 2]), T=rng.randint(1, 150), H=H, K=rng.choice([8, 12, 16, 20, 32]),
                        V=rng.choice([8, 16, 24]), h0=rng.random() < 0.5, _seed=seed))
    return out
