"""Golden cases of the RWKV-7 closure: the DPLR delta rule (chunk and
fused_recurrent), RWKV-7's ops (chunk_rwkv7, fused_mul_recurrent_rwkv7, fused_addcmul, the key
update, the output correction), the token shift and the RWKV7Attention layer.

Every case name starts with ``rwkv7/`` (record them with ``--cases rwkv7/``); their fixtures live in
``tests/fixtures/golden_rwkv7`` (``RWKV7_FIXTURES``), a recording run of their own next to the KDA/GDN
set in ``tests/fixtures/golden``. Inputs follow what
the layer feeds the ops: RWKV-7 decays ``w = -exp(-1/2) sigmoid(.)``, ``a = -kk``, ``b = kk *
sigmoid(.)`` with L2-normalised ``kk``; the ``fla`` flavour uses fla's DPLR test recipe instead
(``a = normalize(rand)``, ``b = -a``, ``gk = logsigmoid(randn) / norm``).
"""

from __future__ import annotations

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
from portaudit.numerics.fla040.golden import DTYPES, _cpu, _leaf, _make_layer, _rand, _randn, _to
from portaudit.numerics.golden_cases import GoldenCase, Tensors

W_SCALE = 0.6065306597126334          # exp(-1/2): RWKV-7's decay bound


# -- the DPLR delta rule and RWKV-7's recurrent ops ----------------------------------------------------

def _make_dplr(case: GoldenCase, gen: torch.Generator, impl) -> Tensors:
    p = case.params
    B, T, H, K, V = p["B"], p["T"], p["H"], p["K"], p["V"]
    inp: Tensors = {"q": _randn(gen, B, T, H, K), "k": _randn(gen, B, T, H, K), "v": _randn(gen, B, T, H, V)}
    if p.get("flavour", "rwkv") == "rwkv":
        kk = F.normalize(_randn(gen, B, T, H, K), p=2, dim=-1)
        rate = _rand(gen, B, T, H, K)
        if case.api == RWKV7_FUSED_MUL:          # RWKV-7's own kernel takes kk and the rate
            inp["kk"], inp["a_rate"] = kk, rate
        else:
            inp["a"], inp["b"] = -kk, kk * rate
        inp["gk"] = -W_SCALE * _randn(gen, B, T, H, K).sigmoid()
    else:
        a = F.normalize(_rand(gen, B, T, H, K), p=2, dim=-1)
        inp["a"], inp["b"] = a, -a
        inp["gk"] = F.logsigmoid(_randn(gen, B, T, H, K)) / p.get("gate_norm", 1.0)
    N = B
    if p.get("cu_seqlens"):
        inp["cu_seqlens"] = torch.tensor(p["cu_seqlens"], dtype=torch.long)
        N = len(p["cu_seqlens"]) - 1
    if p.get("h0"):
        inp["h0"] = _randn(gen, N, H, K, V, scale=0.5)
    if p.get("grads"):
        inp["do"] = _randn(gen, B, T, H, V)
        inp["dht"] = _randn(gen, N, H, K, V)
    return inp


def _run_dplr(case: GoldenCase, impl, inputs: Tensors, device) -> Tensors:
    """chunk/fused DPLR (q, k, v, a, b, gk) and chunk_rwkv7 (r, w, k, v, a, b): ``o``, ``ht`` and,
    with grads, the gradient of every input (named after fla's arguments)."""
    p = case.params
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    dt = DTYPES[p.get("dtype", "fp32")]
    grads = p.get("grads", False)
    # fla's tests keep the decay and the state in fp32 when the other inputs are half precision
    leaves = {n: _leaf(x[n].to(dt) if n != "gk" else x[n], grads) for n in ("q", "k", "v", "a", "b", "gk")}
    h0 = _leaf(x["h0"], grads) if "h0" in x else None
    kw = dict(initial_state=h0, output_final_state=True, cu_seqlens=x.get("cu_seqlens"))
    if "scale" in p:
        kw["scale"] = p["scale"]
    if case.api == RWKV7_CHUNK:
        o, ht = fn(r=leaves["q"], w=leaves["gk"], k=leaves["k"], v=leaves["v"], a=leaves["a"], b=leaves["b"], **kw)
        names = {"q": "dr", "gk": "dw"}
    else:
        o, ht = fn(q=leaves["q"], k=leaves["k"], v=leaves["v"], a=leaves["a"], b=leaves["b"], gk=leaves["gk"], **kw)
        names = {}
    out = {"o": o, "ht": ht}
    if grads:
        ((o.float() * x["do"]).sum() + (ht.float() * x["dht"]).sum()).backward()
        for n, t in leaves.items():
            out[names.get(n, "d" + n)] = t.grad
        if h0 is not None:
            out["dh0"] = h0.grad
    return _cpu(out)


def _run_fused_mul(case: GoldenCase, impl, inputs: Tensors, device) -> Tensors:
    """fused_mul_recurrent_rwkv7(r, w, k, v, kk, a): forward only (fla's kernel has no backward)."""
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    with torch.no_grad():
        o, ht = fn(r=x["q"], w=x["gk"], k=x["k"], v=x["v"], kk=x["kk"], a=x["a_rate"], scale=1.0,
                   initial_state=x.get("h0"), output_final_state=True, cu_seqlens=x.get("cu_seqlens"))
    return _cpu({"o": o, "ht": ht})


def _dplr_case(name, api, grads, note="", **params) -> GoldenCase:
    base = dict(B=1, T=50, H=2, K=32, V=32, h0=True, grads=grads)
    base.update(params)
    run = _run_fused_mul if api == RWKV7_FUSED_MUL else _run_dplr
    return GoldenCase(name, api, "op", base, _make_dplr, run, note)


# -- elementwise ops --------------------------------------------------------------------------------

def _make_addcmul(case, gen, impl) -> Tensors:
    p = case.params
    B, T, D = p["B"], p["T"], p["D"]
    inp = {"hidden_states": _randn(gen, B, T, D), "delta": _randn(gen, B, T, D)}
    for n in ("x_r", "x_w", "x_k", "x_v", "x_a") + (("x_g",) if p.get("use_g") else ()):
        inp[n] = _randn(gen, 1, 1, D)
        inp["d" + n[2:]] = _randn(gen, B, T, D)             # cotangent of each mix
    return inp


def _run_addcmul(case, impl, inputs, device) -> Tensors:
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    names = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]
    leaves = {n: _leaf(x[n], True) for n in ["hidden_states", "delta"] + [n for n in names if n in x]}
    outs = fn(leaves["hidden_states"], leaves["delta"], *[leaves.get(n) for n in names])
    out: Dict[str, Any] = {}
    loss = 0
    for n, o in zip(names, outs):
        if o is not None:
            out["o" + n[1:]] = o
            loss = loss + (o * x["d" + n[2:]]).sum()
    loss.backward()
    for n, t in leaves.items():
        out["d" + n] = t.grad
    return _cpu(out)


def _make_k_update(case, gen, impl) -> Tensors:
    p = case.params
    B, T, D = p["B"], p["T"], p["D"]
    return {"k": _randn(gen, B, T, D), "a": _rand(gen, B, T, D), "ka": _randn(gen, *p["ka_shape"]),
            "dy": _randn(gen, B, T, D)}


def _run_k_update(case, impl, inputs, device) -> Tensors:
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    k, a, ka = (_leaf(x[n], True) for n in ("k", "a", "ka"))
    y = fn(k, a, ka)
    (y * x["dy"]).sum().backward()
    return _cpu({"y": y, "dk": k.grad, "da": a.grad, "dka": ka.grad})


def _make_gate(case, gen, impl) -> Tensors:
    p = case.params
    B, T, H, K = p["B"], p["T"], p["H"], p["K"]
    return {"o": _randn(gen, B, T, H * K), "r": _randn(gen, B, T, H, K), "k": _randn(gen, B, T, H, K),
            "r_k": _randn(gen, H, K, scale=0.5), "v": _randn(gen, B, T, H, K), "g": _randn(gen, B, T, H * K).sigmoid(),
            "dy": _randn(gen, B, T, H * K)}


def _run_gate(case, impl, inputs, device) -> Tensors:
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    leaves = [_leaf(x[n], True) for n in ("o", "r", "k", "r_k", "v", "g")]
    y = fn(*leaves)
    (y * x["dy"]).sum().backward()
    out = {"y": y}
    out.update({"d" + n: t.grad for n, t in zip(("o", "r", "k", "r_k", "v", "g"), leaves)})
    return _cpu(out)


def _make_token_shift(case, gen, impl) -> Tensors:
    p = case.params
    B, T, D = p["B"], p["T"], p["D"]
    inp = {"x": _randn(gen, B, T, D), "dy": _randn(gen, B, T, D)}
    N = B
    if p.get("cu_seqlens"):
        inp["cu_seqlens"] = torch.tensor(p["cu_seqlens"], dtype=torch.long)
        N = len(p["cu_seqlens"]) - 1
    if p.get("cache"):
        inp["cache"] = _randn(gen, N, D)
    inp["dcache"] = _randn(gen, N, D)
    return inp


def _run_token_shift(case, impl, inputs, device) -> Tensors:
    fn = impl.resolve(case.api)
    x = _to(inputs, device)
    xs = _leaf(x["x"], True)
    cache = _leaf(x["cache"], True) if "cache" in x else None
    y, new = fn(xs, x.get("cu_seqlens"), cache=cache, output_cache=True)
    ((y * x["dy"]).sum() + (new * x["dcache"]).sum()).backward()
    out = {"y": y, "cache_out": new, "dx": xs.grad}
    if cache is not None:
        out["dcache_in"] = cache.grad
    return _cpu(out)


# -- the layer ----------------------------------------------------------------------------------------

def _layer_init(case) -> Dict[str, Any]:
    return dict(case.params["init"])


def _make_rwkv7_layer(case, gen, impl) -> Tensors:
    inp = _make_layer(case, gen, impl)
    p = case.params
    if p["init"].get("layer_idx", 0) != 0:           # later layers take layer 0's values
        B, T = p["B"], p["T"]
        inp["v_first"] = _randn(gen, B, T, p["init"].get("value_dim") or p["init"]["hidden_size"])
    return inp


def _build(case, impl, x, device):
    cls = impl.resolve(case.api)
    layer = cls(**_layer_init(case))
    layer.load_state_dict({k[3:]: v for k, v in x.items() if k.startswith("sd.")}, strict=True)
    return layer.to(device)


def _run_rwkv7_layer(case, impl, inputs, device) -> Tensors:
    """Training mode: ``o``, ``v_first`` and the gradients of the input, of ``v_first`` (later layers)
    and of every parameter; decode cases: prefill + token steps with a cache (eval mode)."""
    p = case.params
    x = _to(inputs, device)
    layer = _build(case, impl, x, device)
    if p.get("decode"):
        layer.eval()
        T0 = p["prefill"]
        cache = StateCache()
        with torch.no_grad():
            o0, _, cache, _ = layer(hidden_states=x["x"][:, :T0], past_key_values=cache, use_cache=True,
                                    v_first=x["v_first"][:, :T0] if "v_first" in x else None)
            steps = []
            for t in range(T0, p["T"]):
                o_t, _, cache, _ = layer(hidden_states=x["x"][:, t:t + 1], past_key_values=cache, use_cache=True,
                                         v_first=x["v_first"][:, t:t + 1] if "v_first" in x else None)
                steps.append(o_t)
        state = cache[layer.layer_idx]
        return _cpu({"o_prefill": o0, "o_decode": torch.cat(steps, 1), "recurrent_state": state["recurrent_state"],
                     "conv_state": state["conv_state"]})
    layer.train()
    hs = _leaf(x["x"], True)
    vf = _leaf(x["v_first"], True) if "v_first" in x else None
    o, _, _, v_first = layer(hidden_states=hs, attention_mask=x.get("mask"), v_first=vf)
    loss = (o * x["dy"]).sum()
    if vf is None:            # layer 0 produces v_first: give it a cotangent too
        loss = loss + v_first.sum() * 1e-2
    loss.backward()
    out = {"o": o, "v_first": v_first, "dx": hs.grad}
    if vf is not None:
        out["dv_first"] = vf.grad
    for name, param in sorted(layer.named_parameters()):
        if param.grad is not None:
            out["dparam." + name] = param.grad
    return _cpu(out)


def _layer_case(name, note="", init=None, **params) -> GoldenCase:
    base_init = dict(hidden_size=32, head_dim=16, layer_idx=0, num_hidden_layers=2)
    base_init.update(init or {})
    base = dict(B=2, T=70, init=base_init)
    base.update(params)
    apis = [RWKV7_CHUNK, RWKV7_FUSED_MUL, RWKV7_ADDCMUL, RWKV7_K_UPDATE, RWKV7_GATE, TOKEN_SHIFT]
    return GoldenCase(name, RWKV7_LAYER, "layer", base, _make_rwkv7_layer, _run_rwkv7_layer, note, apis=apis)


# -- the declared set --------------------------------------------------------------------------------

def rwkv7_golden_cases() -> List[GoldenCase]:
    cu = [0, 1, 20, 53, 70]     # a length-1 sequence, chunk-crossing ones, lengths not chunk multiples
    return [
        _dplr_case("rwkv7/dplr_chunk/rwkv", DPLR_CHUNK, True, scale=1.0),
        _dplr_case("rwkv7/dplr_chunk/fla_recipe", DPLR_CHUNK, True, flavour="fla", B=2, T=37),
        _dplr_case("rwkv7/dplr_chunk/varlen", DPLR_CHUNK, True, B=1, T=70, H=1, cu_seqlens=cu),
        _dplr_case("rwkv7/dplr_chunk/K48_V16_noh0", DPLR_CHUNK, True, T=37, H=1, K=48, V=16, h0=False, scale=0.3),
        _dplr_case("rwkv7/dplr_chunk/bf16", DPLR_CHUNK, True, dtype="bf16", scale=1.0),
        _dplr_case("rwkv7/dplr_fused_recurrent/base", DPLR_FUSED, False, B=2, T=30),
        _dplr_case("rwkv7/dplr_fused_recurrent/varlen", DPLR_FUSED, False, B=1, T=70, H=1, cu_seqlens=cu),
        _dplr_case("rwkv7/dplr_fused_recurrent/fla_recipe_T1", DPLR_FUSED, False, flavour="fla", T=1),
        _dplr_case("rwkv7/chunk_rwkv7/base", RWKV7_CHUNK, True, T=40),
        _dplr_case("rwkv7/fused_mul_recurrent/base", RWKV7_FUSED_MUL, False, B=2, T=30),
        _dplr_case("rwkv7/fused_mul_recurrent/decode", RWKV7_FUSED_MUL, False, B=3, T=1,
                   note="T == 1: fla's decode branch"),
        GoldenCase("rwkv7/fused_addcmul/g", RWKV7_ADDCMUL, "op", dict(B=2, T=20, D=32, use_g=True),
                   _make_addcmul, _run_addcmul),
        GoldenCase("rwkv7/fused_addcmul/no_g", RWKV7_ADDCMUL, "op", dict(B=1, T=20, D=24, use_g=False),
                   _make_addcmul, _run_addcmul),
        GoldenCase("rwkv7/fused_k_update/ka_vector", RWKV7_K_UPDATE, "op", dict(B=2, T=30, D=32, ka_shape=[32]),
                   _make_k_update, _run_k_update),
        GoldenCase("rwkv7/fused_k_update/long", RWKV7_K_UPDATE, "op", dict(B=1, T=520, D=8, ka_shape=[1, 1, 8]),
                   _make_k_update, _run_k_update, "T > 512 takes fla's long kernel"),
        GoldenCase("rwkv7/gate_output_correction/base", RWKV7_GATE, "op", dict(B=2, T=20, H=2, K=32),
                   _make_gate, _run_gate),
        GoldenCase("rwkv7/token_shift/plain", TOKEN_SHIFT, "op", dict(B=2, T=30, D=32), _make_token_shift,
                   _run_token_shift),
        GoldenCase("rwkv7/token_shift/cache", TOKEN_SHIFT, "op", dict(B=2, T=9, D=64, cache=True),
                   _make_token_shift, _run_token_shift),
        GoldenCase("rwkv7/token_shift/varlen_cache", TOKEN_SHIFT, "op", dict(B=1, T=40, D=32, cu_seqlens=[0, 5, 18, 40],
                                                                             cache=True),
                   _make_token_shift, _run_token_shift),
        _layer_case("rwkv7/RWKV7Attention/layer0"),
        _layer_case("rwkv7/RWKV7Attention/layer1", init=dict(layer_idx=1)),
        _layer_case("rwkv7/RWKV7Attention/fuse_norm_masked", init=dict(layer_idx=1, fuse_norm=True), pad=[0, 21],
                    note="fuse_norm: fla's GroupNorm and l2_norm"),
        _layer_case("rwkv7/RWKV7Attention/short_training", T=20, note="training takes the chunk path at any length"),
        _layer_case("rwkv7/RWKV7Attention/prefill_decode", T=72, prefill=66, decode=True),
        _layer_case("rwkv7/RWKV7Attention/prefill_short_decode", init=dict(layer_idx=1), T=30, prefill=25,
                    decode=True, note="prefill < 64 tokens in eval mode takes fused_mul_recurrent_rwkv7"),
    ]
