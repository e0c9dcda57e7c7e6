"""fla 0.4.0's golden cases: how each draws its inputs and runs through fla's API.

Each :class:`~portaudit.numerics.golden_cases.GoldenCase` names the API path it records, its
parameters, a ``make`` (inputs drawn on the CPU from ``crc32(name)``) and a ``run`` (calls only
fla API paths resolved by the implementation; returns a flat dict of outputs). To add a case:
append it to :func:`golden_cases` (a new op usually needs a ``_make_x``/``_run_x`` pair), record it
on a GPU (``portaudit golden record --cases NAME``, docs/golden.md) and merge the fixtures; the
registry interface is documented in docs/numerics-registry.md.
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from portaudit.numerics.cache import StateCache
from portaudit.numerics.fla040.apis import (CUMSUM, GDN_CHUNK, GDN_FUSED, GDN_LAYER, KDA_CHUNK, KDA_FUSED, KDA_GATE,
                                            KDA_LAYER, L2NORM_BWD, L2NORM_FWD, RMSNORM, RMSNORM_GATED, SHORT_CONV,
                                            SOLVE_TRIL)
from portaudit.numerics.golden_cases import GoldenCase, Tensors
from portaudit.numerics.impl import Implementation

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _rand(gen, *shape):
    return torch.rand(*shape, generator=gen)


def _to(inputs: Tensors, device) -> Tensors:
    return {k: v.to(device) for k, v in inputs.items()}


def _leaf(t: torch.Tensor, grad: bool) -> torch.Tensor:
    t = t.detach().clone()
    return t.requires_grad_(grad) if grad and t.is_floating_point() else t


def _cpu(out: Dict[str, Optional[torch.Tensor]]) -> Tensors:
    return {k: v.detach().float().cpu().contiguous() if v.dtype == torch.float64 else v.detach().cpu().contiguous()
            for k, v in out.items() if v is not None}


# -- delta rule ops ------------------------------------------------------------------------------

def _make_delta(case: GoldenCase, gen: torch.Generator, impl) -> Tensors:
    p = case.params
    B, T, H, K, V = p["B"], p["T"], p["H"], p["K"], p["V"]
    HV = p.get("HV", H)
    gdn = p["family"] == "gdn"
    inp: Tensors = {}
    q, k = _randn(gen, B, T, H, K), _randn(gen, B, T, H, K)
    if not p.get("l2_in_kernel"):
        # Raw randn keys make the delta rule diverge (eigenvalues 1 - beta |k|^2): normalise.
        q, k = F.normalize(q, p=2, dim=-1), F.normalize(k, p=2, dim=-1)
    inp["q"], inp["k"] = q, k
    inp["v"] = _randn(gen, B, T, HV, V)
    if gdn:
        inp["g"] = F.logsigmoid(_randn(gen, B, T, HV)) / p.get("gate_norm", 1.0)
    else:
        inp["g"] = F.logsigmoid(_randn(gen, B, T, H, K)) / p.get("gate_norm", 1.0)
    inp["beta"] = _rand(gen, B, T, HV).sigmoid()
    N = B
    if p.get("cu_seqlens"):
        inp["cu_seqlens"] = torch.tensor(p["cu_seqlens"], dtype=torch.long)
        N = len(p["cu_seqlens"]) - 1
    if p.get("h0"):
        inp["h0"] = _randn(gen, N, HV, K, V, scale=0.5)
    if p.get("grads"):
        inp["do"] = _randn(gen, B, T, HV, V)
        inp["dht"] = _randn(gen, N, HV, K, V)
    return inp


def _run_delta(case: GoldenCase, impl: Implementation, inputs: Tensors, device) -> Tensors:
    p = case.params
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    dt = DTYPES[p.get("dtype", "fp32")]
    grads = p.get("grads", False)
    names = ["q", "k", "v", "g", "beta"] + (["h0"] if "h0" in x else [])
    # fla's tests keep g and h0 in fp32 when q/k/v/beta are half precision.
    leaves = {n: _leaf(x[n].to(dt) if n in ("q", "k", "v", "beta") else x[n], grads) for n in names}
    kwargs = dict(q=leaves["q"], k=leaves["k"], v=leaves["v"], g=leaves["g"], beta=leaves["beta"],
                  initial_state=leaves.get("h0"), output_final_state=True,
                  use_qk_l2norm_in_kernel=bool(p.get("l2_in_kernel")),
                  cu_seqlens=x.get("cu_seqlens"))
    if p.get("scale") is not None:
        kwargs["scale"] = p["scale"]
    o, ht = fn(**kwargs)
    out = {"o": o, "ht": ht}
    if grads:
        loss = (o.float() * x["do"]).sum() + (ht.float() * x["dht"]).sum()
        loss.backward()
        for n, t in leaves.items():
            out["d" + n] = t.grad
    return _cpu(out)


def _delta_case(name, api, family, grads, note="", **params) -> GoldenCase:
    base = dict(B=1, T=100, H=2, K=64, V=64, h0=True, family=family, grads=grads)
    base.update(params)
    return GoldenCase(name, api, "op", base, _make_delta, _run_delta, note)


# -- the KDA gate --------------------------------------------------------------------------------

def _make_gate(case, gen, impl) -> Tensors:
    p = case.params
    B, T, H, K = p["B"], p["T"], p["H"], p["K"]
    inp = {"g": _randn(gen, B, T, H * K, scale=p.get("g_scale", 1.0)),
           "A_log": torch.log(torch.empty(H).uniform_(1, 16, generator=gen)),
           "dy": _randn(gen, B, T, H, K)}
    if p.get("bias"):
        inp["g_bias"] = _randn(gen, H * K, scale=0.5)
    return inp


def _run_gate(case, impl, inputs, device) -> Tensors:
    p = case.params
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    g, A = _leaf(x["g"], True), _leaf(x["A_log"], True)
    bias = _leaf(x["g_bias"], True) if "g_bias" in x else None
    y = fn(g, A, p["K"], g_bias=bias)
    (y * x["dy"]).sum().backward()
    out = {"y": y, "dg": g.grad, "dA_log": A.grad}
    if bias is not None:
        out["dg_bias"] = bias.grad
    return _cpu(out)


# -- modules -------------------------------------------------------------------------------------

def _make_conv(case, gen, impl) -> Tensors:
    p = case.params
    B, T, D, W = p["B"], p["T"], p["D"], p["W"]
    N = len(p["cu_seqlens"]) - 1 if p.get("cu_seqlens") else B
    inp = {"x": _randn(gen, B, T, D), "sd.weight": _randn(gen, D, 1, W, scale=0.5), "dy": _randn(gen, B, T, D)}
    if p.get("bias"):
        inp["sd.bias"] = _randn(gen, D, scale=0.2)
    if p.get("residual"):
        inp["residual"] = _randn(gen, B, T, D)
    if p.get("cu_seqlens"):
        inp["cu_seqlens"] = torch.tensor(p["cu_seqlens"], dtype=torch.long)
    if p.get("cache"):
        inp["cache"] = _randn(gen, N, D, W)
    return inp


def _module(case, impl, inputs, device, init):
    cls = impl.resolve(case.api)
    mod = cls(**init)
    sd = {k[3:]: v for k, v in inputs.items() if k.startswith("sd.")}
    mod.load_state_dict(sd, strict=True)
    return mod.to(device)


def _run_conv(case, impl, inputs, device) -> Tensors:
    p = case.params
    x = _to(inputs, device)
    mod = _module(case, impl, x, device, dict(hidden_size=p["D"], kernel_size=p["W"], bias=bool(p.get("bias")),
                                              activation=p.get("activation", "silu")))
    grads = p.get("grads", False)
    if p.get("decode"):
        # Token-by-token decoding: each step writes the cache in place (B*T == N -> step()).
        cache = x["cache"].clone()
        ys = []
        with torch.no_grad():
            for t in range(p["T"]):
                y, cache = mod(x=x["x"][:, t:t + 1].clone(), cache=cache, output_final_state=True)
                ys.append(y)
        return _cpu({"y": torch.cat(ys, 1), "cache": cache})
    xin = _leaf(x["x"], grads)
    res = _leaf(x["residual"], grads) if "residual" in x else None
    cache = x["cache"].clone() if "cache" in x else None
    y, final = mod(x=xin, residual=res, cache=cache, output_final_state=bool(p.get("final_state")),
                   cu_seqlens=x.get("cu_seqlens"))
    out = {"y": y, "final_state": final}
    if grads:
        (y * x["dy"]).sum().backward()
        out.update(dx=xin.grad, dweight=mod.weight.grad)
        if mod.bias is not None:
            out["dbias"] = mod.bias.grad
        if res is not None:
            out["dresidual"] = res.grad
    return _cpu(out)


def _make_norm(case, gen, impl) -> Tensors:
    p = case.params
    shape = (p["B"], p["T"], p["H"], p["D"])
    inp = {"x": _randn(gen, *shape), "sd.weight": 1 + _randn(gen, p["D"], scale=0.2), "dy": _randn(gen, *shape)}
    if p.get("gated"):
        inp["g"] = _randn(gen, *shape)
    if p.get("residual"):
        inp["residual"] = _randn(gen, *shape)
        inp["dres"] = _randn(gen, *shape)
    return inp


def _run_norm(case, impl, inputs, device) -> Tensors:
    p = case.params
    x = _to(inputs, device)
    init = dict(hidden_size=p["D"], eps=p.get("eps", 1e-5))
    if p.get("gated"):
        init["activation"] = p["activation"]
    mod = _module(case, impl, x, device, init)
    xin = _leaf(x["x"], True)
    res = _leaf(x["residual"], True) if "residual" in x else None
    prenorm = bool(p.get("prenorm"))
    kw = dict(residual=res, prenorm=prenorm, residual_in_fp32=bool(p.get("residual_in_fp32")))
    if p.get("gated"):
        g = _leaf(x["g"], True)
        result = mod(xin, g, **kw)
    else:
        g = None
        result = mod(xin, **kw)
    y, res_out = (result if prenorm else (result, None))
    loss = (y * x["dy"]).sum()
    if res_out is not None:
        loss = loss + (res_out.float() * x["dres"]).sum()
    loss.backward()
    out = {"y": y, "residual_out": res_out, "dx": xin.grad, "dweight": mod.weight.grad}
    if g is not None:
        out["dg"] = g.grad
    if res is not None:
        out["dresidual"] = res.grad
    return _cpu(out)


def _make_l2norm(case, gen, impl) -> Tensors:
    p = case.params
    shape = (p["B"], p["T"], p["H"], p["D"])
    return {"x": _randn(gen, *shape), "dy": _randn(gen, *shape)}


def _run_l2norm(case, impl, inputs, device) -> Tensors:
    fwd, bwd = impl.resolve(L2NORM_FWD), impl.resolve(L2NORM_BWD)
    x = _to(inputs, device)
    y, rstd = fwd(x["x"])
    dx = bwd(y, rstd, x["dy"])
    return _cpu({"y": y, "rstd": rstd, "dx": dx})


def _make_cumsum(case, gen, impl) -> Tensors:
    p = case.params
    shape = (p["B"], p["T"], p["H"]) + ((p["D"],) if p.get("D") else ())
    inp = {"g": F.logsigmoid(_randn(gen, *shape))}
    if p.get("cu_seqlens"):
        inp["cu_seqlens"] = torch.tensor(p["cu_seqlens"], dtype=torch.long)
    return inp


def _run_cumsum(case, impl, inputs, device) -> Tensors:
    p = case.params
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    y = fn(x["g"], chunk_size=p["chunk_size"], reverse=bool(p.get("reverse")), scale=p.get("scale"),
           cu_seqlens=x.get("cu_seqlens"))
    return _cpu({"y": y})


def _make_tril(case, gen, impl) -> Tensors:
    p = case.params
    B, T, H, K, BT = p["B"], p["T"], p["H"], p["K"], p["BT"]
    k = F.normalize(_randn(gen, B, T, H, K), dim=-1)
    beta = _rand(gen, B, T, H).sigmoid()
    inp = {}
    bounds = [(b, 0, T) for b in range(B)]
    if p.get("cu_seqlens"):
        inp["cu_seqlens"] = torch.tensor(p["cu_seqlens"], dtype=torch.long)
        c = p["cu_seqlens"]
        bounds = [(0, s, e) for s, e in zip(c[:-1], c[1:])]
    # A[t, j] = beta_t k_t . k_{c0+j} for j < t within each chunk (the KKT matrix the ops solve).
    A = torch.zeros(B, T, H, BT)
    for b, s, e in bounds:
        for c0 in range(s, e, BT):
            n = min(BT, e - c0)
            kc = k[b, c0:c0 + n].transpose(0, 1)                               # [H, n, K]
            blk = (kc @ kc.transpose(1, 2)) * beta[b, c0:c0 + n].transpose(0, 1).unsqueeze(-1)
            A[b, c0:c0 + n, :, :n] = blk.tril(-1).permute(1, 0, 2)
    inp["A"] = A
    return inp


def _run_tril(case, impl, inputs, device) -> Tensors:
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    return _cpu({"Ai": fn(x["A"], cu_seqlens=x.get("cu_seqlens"))})


# -- layers --------------------------------------------------------------------------------------

def _layer_init(case) -> Dict[str, Any]:
    return dict(case.params["init"])


def _make_layer(case, gen, impl) -> Tensors:
    """Build the layer with the implementation's own init (seeded), then perturb every parameter
    so that no weight sits at a trivial value (ones, zeros); the state_dict is part of the inputs."""
    p = case.params
    cls = impl.resolve(case.api)
    torch.manual_seed(zlib.crc32(case.name.encode()))
    layer = cls(**_layer_init(case))
    inp: Tensors = {}
    for key, value in layer.state_dict().items():
        v = value.detach().float().cpu()
        if key.endswith("A_log") or key.endswith("dt_bias"):
            noise = _randn(gen, *v.shape, scale=0.1)
        else:
            noise = _randn(gen, *v.shape, scale=0.02 if v.dim() > 1 else 0.1)
        inp["sd." + key] = (v + noise).to(value.dtype)
    B, T, D = p["B"], p["T"], p["init"]["hidden_size"]
    inp["x"] = _randn(gen, B, T, D)
    inp["dy"] = _randn(gen, B, T, D)
    if p.get("pad"):
        mask = torch.ones(B, T, dtype=torch.long)
        for b, n in enumerate(p["pad"]):
            mask[b, :n] = 0           # left padding, as in generation
        inp["mask"] = mask
    return inp


def _build_layer(case, impl, inputs, device):
    cls = impl.resolve(case.api)
    layer = cls(**_layer_init(case))
    sd = {k[3:]: v for k, v in inputs.items() if k.startswith("sd.")}
    layer.load_state_dict(sd, strict=True)
    return layer.to(device)


def _run_layer(case, impl, inputs, device) -> Tensors:
    p = case.params
    x = _to(inputs, device)
    layer = _build_layer(case, impl, x, device)
    if p.get("decode"):
        layer.eval()
        T0 = p["prefill"]
        cache = StateCache()
        with torch.no_grad():
            o0, _, cache = layer(hidden_states=x["x"][:, :T0], past_key_values=cache, use_cache=True)
            steps = []
            for t in range(T0, p["T"]):
                o_t, _, cache = layer(hidden_states=x["x"][:, t:t + 1], past_key_values=cache, use_cache=True)
                steps.append(o_t)
        state = cache[0]
        out = {"o_prefill": o0, "o_decode": torch.cat(steps, 1), "recurrent_state": state["recurrent_state"]}
        if state.get("conv_state") is not None:
            for name, conv in zip("qkv", state["conv_state"]):
                out[f"conv_state_{name}"] = conv
        return _cpu(out)
    layer.train()
    hs = _leaf(x["x"], True)
    o, _, _ = layer(hidden_states=hs, attention_mask=x.get("mask"))
    (o * x["dy"]).sum().backward()
    out = {"o": o, "dx": hs.grad}
    for name, param in sorted(layer.named_parameters()):
        if param.grad is not None:
            out["dparam." + name] = param.grad
    return _cpu(out)


def _layer_case(name, api, note="", init=None, **params) -> GoldenCase:
    base_init = dict(hidden_size=32, head_dim=64, num_heads=2, layer_idx=0)
    base_init.update(init or {})
    base = dict(B=2, T=70, init=base_init)
    base.update(params)
    apis = [KDA_CHUNK, KDA_FUSED, KDA_GATE] if api == KDA_LAYER else [GDN_CHUNK, GDN_FUSED]
    return GoldenCase(name, api, "layer", base, _make_layer, _run_layer, note, apis=apis + [SHORT_CONV])


# -- the declared set ----------------------------------------------------------------------------

def golden_cases() -> List[GoldenCase]:
    cu = [0, 1, 40, 107, 150]   # a length-1 sequence, a chunk-crossing one, T not a multiple of 64
    cases: List[GoldenCase] = []
    for fam, chunk, fused in (("kda", KDA_CHUNK, KDA_FUSED), ("gdn", GDN_CHUNK, GDN_FUSED)):
        cases += [
            _delta_case(f"{fam}/chunk/base", chunk, fam, True),
            _delta_case(f"{fam}/chunk/l2_in_kernel", chunk, fam, True, B=1, l2_in_kernel=True),
            _delta_case(f"{fam}/chunk/varlen", chunk, fam, True, B=1, T=150, H=1, cu_seqlens=cu),
            _delta_case(f"{fam}/chunk/K100_noh0", chunk, fam, True, B=1, T=70, K=100, V=64, h0=False),
            _delta_case(f"{fam}/chunk/T37_H1", chunk, fam, True, T=37, H=1, scale=0.1),
            _delta_case(f"{fam}/chunk/bf16", chunk, fam, True, B=1, dtype="bf16"),
            _delta_case(f"{fam}/fused_recurrent/base", fused, fam, False, B=2, T=80),
            _delta_case(f"{fam}/fused_recurrent/l2_in_kernel", fused, fam, False, B=1, l2_in_kernel=True),
            _delta_case(f"{fam}/fused_recurrent/varlen", fused, fam, False, B=1, T=150, H=1, cu_seqlens=cu),
            _delta_case(f"{fam}/fused_recurrent/K100_T1", fused, fam, False, K=100, V=64, T=1),
        ]
    cases.append(_delta_case("gdn/fused_recurrent/gva", GDN_FUSED, "gdn", False, B=1, H=2, HV=4,
                                   l2_in_kernel=True))
    cases += [
        GoldenCase("kda/gate/bias", KDA_GATE, "op", dict(B=2, T=50, H=2, K=64, bias=True), _make_gate, _run_gate),
        GoldenCase("kda/gate/nobias", KDA_GATE, "op", dict(B=2, T=50, H=2, K=64, bias=False), _make_gate, _run_gate),
        GoldenCase("kda/gate/threshold", KDA_GATE, "op", dict(B=1, T=30, H=2, K=100, bias=True, g_scale=30.0),
                   _make_gate, _run_gate, "large inputs cross softplus' threshold=20"),
        GoldenCase("conv/plain", SHORT_CONV, "module", dict(B=2, T=70, D=64, W=4, bias=True, grads=True,
                                                            residual=True), _make_conv, _run_conv),
        GoldenCase("conv/no_activation", SHORT_CONV, "module", dict(B=2, T=30, D=64, W=3, activation=None,
                                                                    grads=True), _make_conv, _run_conv),
        GoldenCase("conv/varlen", SHORT_CONV, "module", dict(B=1, T=150, D=64, W=4, bias=True, grads=True,
                                                             cu_seqlens=cu), _make_conv, _run_conv),
        GoldenCase("conv/cache_prefill", SHORT_CONV, "module", dict(B=2, T=50, D=64, W=4, cache=True,
                                                                    final_state=True), _make_conv, _run_conv),
        GoldenCase("conv/final_state_T2", SHORT_CONV, "module", dict(B=2, T=2, D=64, W=4, final_state=True),
                   _make_conv, _run_conv, "T < W: the final state is left-padded with zeros"),
        GoldenCase("conv/decode", SHORT_CONV, "module", dict(B=2, T=6, D=128, W=4, bias=True, cache=True,
                                                             decode=True), _make_conv, _run_conv),
        GoldenCase("norm_gated/swish", RMSNORM_GATED, "module",
                   dict(B=2, T=30, H=2, D=64, gated=True, activation="swish"), _make_norm, _run_norm),
        GoldenCase("norm_gated/sigmoid", RMSNORM_GATED, "module",
                   dict(B=2, T=30, H=2, D=64, gated=True, activation="sigmoid"), _make_norm, _run_norm),
        GoldenCase("norm_gated/residual_prenorm", RMSNORM_GATED, "module",
                   dict(B=2, T=30, H=2, D=64, gated=True, activation="swish", residual=True, prenorm=True,
                        residual_in_fp32=True), _make_norm, _run_norm),
        GoldenCase("rmsnorm/plain", RMSNORM, "module", dict(B=2, T=30, H=2, D=64), _make_norm, _run_norm),
        GoldenCase("rmsnorm/residual_prenorm", RMSNORM, "module",
                   dict(B=2, T=30, H=2, D=100, residual=True, prenorm=True), _make_norm, _run_norm),
        GoldenCase("l2norm/D64", L2NORM_FWD, "op", dict(B=2, T=30, H=2, D=64), _make_l2norm, _run_l2norm,
                   apis=[L2NORM_BWD]),
        GoldenCase("l2norm/D100", L2NORM_FWD, "op", dict(B=2, T=30, H=2, D=100), _make_l2norm, _run_l2norm,
                   apis=[L2NORM_BWD]),
        GoldenCase("l2norm/D1024", L2NORM_FWD, "op", dict(B=1, T=8, H=1, D=1024), _make_l2norm, _run_l2norm,
                   "D > 512 takes fla's other kernel", apis=[L2NORM_BWD]),
        GoldenCase("cumsum/scalar", CUMSUM, "op", dict(B=2, T=150, H=2, chunk_size=64), _make_cumsum, _run_cumsum),
        GoldenCase("cumsum/vector_reverse_scale", CUMSUM, "op",
                   dict(B=2, T=150, H=2, D=32, chunk_size=64, reverse=True, scale=0.5), _make_cumsum, _run_cumsum),
        GoldenCase("cumsum/vector_varlen", CUMSUM, "op", dict(B=1, T=150, H=2, D=32, chunk_size=16,
                                                              cu_seqlens=cu), _make_cumsum, _run_cumsum),
        GoldenCase("solve_tril/BT16", SOLVE_TRIL, "op", dict(B=2, T=100, H=2, K=64, BT=16), _make_tril, _run_tril),
        GoldenCase("solve_tril/BT32", SOLVE_TRIL, "op", dict(B=2, T=100, H=2, K=64, BT=32), _make_tril, _run_tril),
        GoldenCase("solve_tril/BT64", SOLVE_TRIL, "op", dict(B=2, T=150, H=2, K=64, BT=64), _make_tril, _run_tril),
        GoldenCase("solve_tril/BT64_varlen", SOLVE_TRIL, "op", dict(B=1, T=150, H=2, K=64, BT=64, cu_seqlens=cu),
                   _make_tril, _run_tril),
    ]
    for prefix, api in (("KimiDeltaAttention", KDA_LAYER), ("GatedDeltaNet", GDN_LAYER)):
        cases += [
            _layer_case(f"{prefix}/plain", api),
            _layer_case(f"{prefix}/masked", api, pad=[0, 37]),
            _layer_case(f"{prefix}/allow_neg_eigval", api, init=dict(allow_neg_eigval=True)),
            _layer_case(f"{prefix}/prefill_decode", api, T=86, prefill=80, decode=True),
            _layer_case(f"{prefix}/prefill_short_decode", api, T=40, prefill=33, decode=True,
                        note="prefill <= 64 tokens takes the fused_recurrent path"),
        ]
    cases += [
        _layer_case("GatedDeltaNet/no_gate", GDN_LAYER, init=dict(use_gate=False)),
        _layer_case("GatedDeltaNet/gva", GDN_LAYER, init=dict(num_v_heads=4, expand_v=1)),
        _layer_case("GatedDeltaNet/gva_prefill_decode", GDN_LAYER, init=dict(num_v_heads=4, expand_v=1), T=84,
                    prefill=80,
                    decode=True),
    ]
    return cases
