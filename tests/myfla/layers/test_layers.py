"""GatedDeltaNet and KimiDeltaAttention layers against an independent reference built from the math
(fp64 projections / F.conv1d / norms) around fla 0.4.0's own naive_recurrent_kda (loaded by file
path; with g expanded over K it is the exact GDN recurrence), plus mask, varlen, cache and training
behaviour. The expected state_dict tables are read off fla 0.4.0's __init__ code."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from myfla.layers import GatedDeltaNet, KimiDeltaAttention
from myfla.models.utils import Cache
from tests.fla_refs import load_function
from tests.numerics import assert_rms

C, HK, H = 64, 16, 2   # hidden size, head_dim, num_heads used throughout


@pytest.fixture(scope="module")
def naive(fla040_root):
    return load_function(fla040_root, "fla/ops/kda/naive.py", "naive_recurrent_kda")


def gdn(**kw):
    return GatedDeltaNet(hidden_size=C, head_dim=HK, num_heads=H, layer_idx=0, **kw)


def kda(**kw):
    return KimiDeltaAttention(hidden_size=C, head_dim=HK, num_heads=H, layer_idx=0, **kw)


# ---------------------------------------------------------------- state_dict (from fla's __init__)
def gdn_expected(num_v_heads=H, expand_v=2, use_gate=True, use_short_conv=True, conv_bias=False, W=4):
    key_dim, head_v = H * HK, int(HK * expand_v)
    value_dim = num_v_heads * head_v
    table = [("A_log", (num_v_heads,)), ("dt_bias", (num_v_heads,)),
             ("q_proj.weight", (key_dim, C)), ("k_proj.weight", (key_dim, C)), ("v_proj.weight", (value_dim, C)),
             ("a_proj.weight", (num_v_heads, C)), ("b_proj.weight", (num_v_heads, C))]
    if use_short_conv:
        for name, d in (("q", key_dim), ("k", key_dim), ("v", value_dim)):
            table.append((f"{name}_conv1d.weight", (d, 1, W)))
            if conv_bias:
                table.append((f"{name}_conv1d.bias", (d,)))
    if use_gate:
        table.append(("g_proj.weight", (value_dim, C)))
    table += [("o_norm.weight", (head_v,)), ("o_proj.weight", (C, value_dim))]
    return table


def kda_expected(num_v_heads=H, expand_v=1, use_short_conv=True, conv_bias=False, W=4):
    key_dim, head_v = H * HK, int(HK * expand_v)
    value_dim = num_v_heads * head_v
    table = [("A_log", (H,)), ("dt_bias", (key_dim,)),
             ("q_proj.weight", (key_dim, C)), ("k_proj.weight", (key_dim, C)), ("v_proj.weight", (value_dim, C))]
    if use_short_conv:
        for name, d in (("q", key_dim), ("k", key_dim), ("v", value_dim)):
            table.append((f"{name}_conv1d.weight", (d, 1, W)))
            if conv_bias:
                table.append((f"{name}_conv1d.bias", (d,)))
    table += [("f_proj.0.weight", (head_v, C)), ("f_proj.1.weight", (key_dim, head_v)), ("b_proj.weight", (H, C)),
              ("g_proj.0.weight", (head_v, C)), ("g_proj.1.weight", (value_dim, head_v)), ("g_proj.1.bias", (value_dim,)),
              ("o_norm.weight", (head_v,)), ("o_proj.weight", (C, value_dim))]
    return table


@pytest.mark.parametrize("make,expected", [
    (lambda: gdn(), gdn_expected()),
    (lambda: gdn(num_v_heads=4, conv_bias=True, conv_size=3), gdn_expected(num_v_heads=4, conv_bias=True, W=3)),
    (lambda: gdn(use_gate=False, expand_v=1), gdn_expected(use_gate=False, expand_v=1)),
    (lambda: gdn(use_short_conv=False), gdn_expected(use_short_conv=False)),
    (lambda: kda(), kda_expected()),
    (lambda: kda(num_v_heads=4, expand_v=2, conv_bias=True), kda_expected(num_v_heads=4, expand_v=2, conv_bias=True)),
    (lambda: kda(use_short_conv=False), kda_expected(use_short_conv=False)),
])
def test_state_dict_matches_fla(make, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = make()
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == expected


def test_parameter_init_as_fla():
    torch.manual_seed(1)
    g = gdn(num_v_heads=8)
    assert ((g.A_log.exp() > 0) & (g.A_log.exp() <= 16)).all()
    dt = F.softplus(g.dt_bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert g.A_log._no_weight_decay and g.dt_bias._no_weight_decay
    assert g.A_log.dtype == torch.float32 and g.dt_bias.dtype == torch.float32
    k = kda()
    assert ((k.A_log.exp() >= 1) & (k.A_log.exp() <= 16 * 1.0001)).all()
    assert (k.dt_bias == 0).all() and k.dt_bias.shape == (H * HK,)
    assert k.o_norm.activation == 'sigmoid' and g.o_norm.activation == 'swish'
    # fla 0.4.0's KDA sets no _no_weight_decay flags (added in 0.4.1)
    assert not hasattr(k.A_log, '_no_weight_decay')


def test_constructor_validation():
    with pytest.raises(ValueError, match="num_v_heads=3 must be divisible by num_heads=2."):
        gdn(num_v_heads=3)
    with pytest.raises(ValueError, match="num_v_heads=5 must be divisible by num_heads=2."):
        kda(num_v_heads=5)
    with pytest.raises(AssertionError, match="Not supported mode `parallel`."):
        kda(mode='parallel')
    with pytest.raises(ValueError, match="Resulting value_dim would be 9.6, which is invalid for nn.Linear."):
        gdn(expand_v=0.3)
    with pytest.warns(UserWarning, match="ShortConvolution is crucial to the performance."):
        gdn(use_short_conv=False)


# ---------------------------------------------------------------- independent reference
def reference_layer(m, x, naive):
    """The layer's math in fp64 from its weights; the recurrence is fla's naive_recurrent_kda (fp32 inside)."""
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    x = x.double()
    B, T, _ = x.shape
    HV, V, K = m.num_v_heads, m.head_v_dim, m.head_k_dim

    def lin(name, u):
        return u @ p[f"{name}.weight"].T + (p[f"{name}.bias"] if f"{name}.bias" in p else 0)

    def conv(name, u):
        w = p[f"{name}.weight"]
        y = F.conv1d(F.pad(u.transpose(1, 2), (w.shape[-1] - 1, 0)), w, p.get(f"{name}.bias"), groups=u.shape[-1])
        return F.silu(y.transpose(1, 2))

    q, k, v = lin("q_proj", x), lin("k_proj", x), lin("v_proj", x)
    if m.use_short_conv:
        q, k, v = conv("q_conv1d", q), conv("k_conv1d", k), conv("v_conv1d", v)
    else:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    q, k = q.view(B, T, H, K), k.view(B, T, H, K)
    v = v.view(B, T, HV, V)
    q, k = (t / torch.sqrt(t.square().sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    beta = torch.sigmoid(lin("b_proj", x))
    if isinstance(m, KimiDeltaAttention):
        f = lin("f_proj.1", lin("f_proj.0", x)).view(B, T, H, K) + p["dt_bias"].view(H, K)
        g = -p["A_log"].exp().view(H, 1) * F.softplus(f)
    else:
        g = (-p["A_log"].exp() * F.softplus(lin("a_proj", x) + p["dt_bias"]))[..., None].expand(B, T, HV, K)
    if m.allow_neg_eigval:
        beta = beta * 2
    if HV > H:  # GVA as explicitly repeated heads
        rep = HV // H
        q, k = q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2)
        if isinstance(m, KimiDeltaAttention):
            g, beta = g.repeat_interleave(rep, 2), beta.repeat_interleave(rep, 2)
    o, _ = naive(q, k, v, g, beta)
    o = o.double()
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + m.o_norm.eps) * p["o_norm.weight"]
    if isinstance(m, KimiDeltaAttention):
        o = o * torch.sigmoid(lin("g_proj.1", lin("g_proj.0", x)).view(B, T, HV, V))
    elif m.use_gate:
        o = o * F.silu(lin("g_proj", x).view(B, T, HV, V))
    return lin("o_proj", o.reshape(B, T, HV * V))


CONFIGS = [
    ("gdn", {}),
    ("gdn", {"use_gate": False}),
    ("gdn", {"use_short_conv": False, "allow_neg_eigval": True}),
    ("gdn", {"num_v_heads": 4, "conv_bias": True}),
    ("kda", {}),
    ("kda", {"allow_neg_eigval": True, "use_short_conv": False}),
    ("kda", {"num_v_heads": 4, "expand_v": 2}),       # GVA (fixed as in fla 0.4.1)
]


def _make(kind, kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = gdn(**kw) if kind == "gdn" else kda(**kw)
    with torch.no_grad():
        for name, prm in m.named_parameters():
            if name.endswith("bias") and "proj" in name or "conv1d.bias" in name or name == "o_norm.weight":
                prm.copy_(torch.randn_like(prm) * 0.5 + (1 if name == "o_norm.weight" else 0))
    return m.eval()


@pytest.mark.parametrize("kind,kw", CONFIGS)
@pytest.mark.parametrize("T", [1, 9, 70])   # <= 64 runs fused_recurrent, > 64 the chunk kernels
def test_forward_matches_reference(naive, kind, kw, T):
    m = _make(kind, kw)
    x = torch.randn(2, T, C)
    with torch.no_grad():
        o, attn, pkv = m(x)
    assert attn is None and pkv is None and o.shape == x.shape
    # the oracle's recurrence runs in fp32, so agreement is at fp32 level, not fp64
    assert_rms("o", reference_layer(m, x, naive), o, 1e-5)


# ---------------------------------------------------------------- masks, varlen, cache
@pytest.mark.parametrize("kind", ["gdn", "kda"])
@pytest.mark.parametrize("T", [12, 70])
def test_left_padded_mask_equals_unpadded_runs(kind, T):
    m = _make(kind, {"num_v_heads": 4})
    lens = [T, T - 5, 3]
    x = torch.randn(3, T, C)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, T - n:] = 1
    with torch.no_grad():
        o, _, _ = m(x, attention_mask=mask)
        for b, n in enumerate(lens):
            ob, _, _ = m(x[b:b + 1, T - n:])
            assert_rms(f"o[{b}]", ob[0].double(), o[b, T - n:], 1e-5)
            assert (o[b, :T - n] == 0).all()


@pytest.mark.parametrize("kind", ["gdn", "kda"])
def test_cu_seqlens_equals_per_sequence(kind):
    m = _make(kind, {})
    cu = torch.tensor([0, 1, 40, 110], dtype=torch.int32)
    x = torch.randn(1, 110, C)
    with torch.no_grad():
        o, _, _ = m(x, cu_seqlens=cu)
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
            on, _, _ = m(x[:, s:e])
            assert_rms(f"o[{s}:{e}]", on.double(), o[:, s:e], 1e-5)


@pytest.mark.parametrize("kind,kw", [("gdn", {}), ("gdn", {"use_short_conv": False}), ("kda", {}),
                                     ("kda", {"num_v_heads": 4})])
def test_prefill_then_decode_equals_full_forward(kind, kw):
    """fla's generation check: left-padded batch, prefill, then one token at a time with the cache,
    against per-sample unpadded full forwards."""
    m = _make(kind, kw)
    T, P = 72, 67          # prefill takes the chunk path, decoding the recurrent one
    lens = [T, T - 4]
    x = torch.randn(2, T, C)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :4] = 0
    cache = Cache()
    with torch.no_grad():
        o, _, cache = m(x[:, :P], attention_mask=mask[:, :P], past_key_values=cache, use_cache=True)
        outs = [o]
        assert cache.get_seq_length() == P and len(cache) == 1
        st = cache[0]
        assert st["recurrent_state"].dtype == torch.float32
        assert st["recurrent_state"].shape == (2, m.num_v_heads, HK, m.head_v_dim)
        if m.use_short_conv:
            assert [tuple(c.shape) for c in st["conv_state"]] == [(2, m.key_dim, 4), (2, m.key_dim, 4), (2, m.value_dim, 4)]
        for t in range(P, T):
            o, _, cache = m(x[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache, use_cache=True)
            outs.append(o)
        decoded = torch.cat(outs, 1)
        assert cache.get_seq_length() == T
        for b, n in enumerate(lens):
            full, _, _ = m(x[b:b + 1, T - n:])
            assert_rms(f"o[{b}]", full[0].double(), decoded[b, T - n:], 1e-5)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("kind,kw", [("gdn", {}), ("gdn", {"use_gate": False, "num_v_heads": 4}),
                                     ("kda", {}), ("kda", {"num_v_heads": 4})])
def test_training_forward_backward(kind, kw):
    m = _make(kind, kw).train()
    x = torch.randn(2, 70, C, requires_grad=True)
    o, _, _ = m(x)
    o.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, prm in m.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name


@pytest.mark.parametrize("kind", ["gdn", "kda"])
def test_short_training_input_trips_the_040_assert(kind):
    # fla 0.4.0 picks fused_recurrent for q_len <= 64 even in training, then asserts
    m = _make(kind, {}).train()
    with pytest.raises(AssertionError, match="Only chunk mode is supported in training."):
        m(torch.randn(1, 64, C))


@pytest.mark.parametrize("T", [5, 70])    # fused_recurrent and chunk paths
def test_gdn_bf16_layer_passes_fp32_log_decays(monkeypatch, T):
    """fla 0.4.0 (layers/gated_deltanet.py) computes the log decay in fp32 whatever the layer's dtype:
    ``-A_log.float().exp() * softplus(a_proj(x).float() + dt_bias)``; a bf16 decay would round every
    step's log decay to 8 mantissa bits. Oracle: that formula in fp64 on the bf16 layer's own
    parameters and ``a_proj`` output."""
    import myfla.layers.gated_deltanet as gdn_module

    m = _make("gdn", {}).to(torch.bfloat16)
    with torch.no_grad():
        m.dt_bias.copy_(torch.randn_like(m.dt_bias))
    seen = {}

    def capture(real):
        def op(*args, **kwargs):
            seen["g"] = kwargs["g"]
            return real(*args, **kwargs)
        return op

    monkeypatch.setattr(gdn_module, "chunk_gated_delta_rule", capture(gdn_module.chunk_gated_delta_rule))
    monkeypatch.setattr(gdn_module, "fused_recurrent_gated_delta_rule",
                        capture(gdn_module.fused_recurrent_gated_delta_rule))
    x = torch.randn(2, T, C, dtype=torch.bfloat16)
    with torch.no_grad():
        m(x)
        a = m.a_proj(x).double()
        ref = -m.A_log.double().exp() * F.softplus(a + m.dt_bias.double())
    g = seen["g"]
    assert g.dtype == torch.float32
    assert_rms("g", ref, g, 1e-6, atol=0)
