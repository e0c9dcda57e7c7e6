"""myfla/_torch_compat.py: each fallback for a torch API newer than 1.13 behaves as the API it stands in
for. Where this torch has the API (the main environment), the fallback is compared with it directly."""

from __future__ import annotations

import pytest
import torch

from myfla import _torch_compat as compat

HAS_AMP_CUSTOM_FWD = hasattr(torch, "amp") and hasattr(torch.amp, "custom_fwd")


def _scale_function(custom_fwd, custom_bwd, **fwd_kwargs):
    """y = x @ w, recording the dtype the forward and backward computed in."""

    class Scale(torch.autograd.Function):
        seen = {}

        @staticmethod
        @custom_fwd(device_type="cpu", **fwd_kwargs)
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            y = x @ w
            Scale.seen["forward"] = y.dtype
            return y

        @staticmethod
        @custom_bwd(device_type="cpu")
        def backward(ctx, dy):
            x, w = ctx.saved_tensors
            dx = dy @ w.t()
            Scale.seen["backward"] = dx.dtype
            return dx, x.t() @ dy

    return Scale


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the per-device autocast calls of torch < 2.4
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("cast_inputs", [None, torch.float32])
def test_custom_fwd_bwd_fallback_keeps_the_forward_autocast_state(autocast, cast_inputs):
    kwargs = {} if cast_inputs is None else {"cast_inputs": cast_inputs}
    results = {}
    impls = {"fallback": (compat._custom_fwd_fallback, compat._custom_bwd_fallback)}
    if HAS_AMP_CUSTOM_FWD:
        impls["torch.amp"] = (torch.amp.custom_fwd, torch.amp.custom_bwd)
    for name, (fwd, bwd) in impls.items():
        fn = _scale_function(fwd, bwd, **kwargs)
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
        w = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = fn.apply(x, w)
        y.float().sum().backward()
        results[name] = (dict(fn.seen), y.detach().float(), x.grad, w.grad)
    seen, y, dx, dw = results["fallback"]
    expect_low = autocast and cast_inputs is None
    assert seen["forward"] == (torch.bfloat16 if expect_low else torch.float32)
    assert seen["backward"] == (torch.bfloat16 if expect_low else torch.float32)
    if "torch.amp" in results:
        ref_seen, ref_y, ref_dx, ref_dw = results["torch.amp"]
        assert seen == ref_seen
        assert torch.equal(y, ref_y) and torch.equal(dx, ref_dx) and torch.equal(dw, ref_dw)


def test_custom_fwd_fallback_rejects_a_device_torch_113_has_no_autocast_for():
    @compat._custom_fwd_fallback(device_type="xpu")
    def forward(ctx, x):
        return x

    with pytest.raises(ValueError, match="needs torch >= 2.4"):
        forward(object(), torch.ones(2))


def test_compiler_disable_fallback_is_the_identity():
    def f(x):
        return x + 1

    assert compat._no_compiler_disable(f) is f
    assert compat._no_compiler_disable(recursive=False)(f) is f


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int8,
                                   torch.int64, torch.bool, torch.complex64])
def test_dtype_itemsize(dtype):
    assert compat.dtype_itemsize(dtype) == torch.empty(0, dtype=dtype).element_size()
    if hasattr(dtype, "itemsize"):
        assert compat.dtype_itemsize(dtype) == dtype.itemsize


@pytest.mark.parametrize("installed, required", [
    ("2.4.0", "2.4"), ("2.4", "2.4.0"), ("2.3.1", "2.4"), ("2.5.0+cpu", "2.4"), ("1.13.1+cu117", "2.4"),
    ("2.4.0a0+git1234", "2.4"), ("2.4.0.dev20240601", "2.4"), ("2.4.0rc1", "2.4"), ("2.4.1", "2.4"),
    ("2.10.0", "2.4"), ("4.53.3", "4.53.3"), ("4.54.0.dev0", "4.53.3"), ("4.53.3.post1", "4.53.3"),
    ("v2.4.0", "2.4"),
])
def test_version_order_without_packaging_matches_packaging(installed, required):
    version = pytest.importorskip("packaging.version")
    expected = version.parse(installed) >= version.parse(required)
    assert (compat._release_key(installed) >= compat._release_key(required)) == expected
    assert compat.version_at_least(installed, required) == expected


@pytest.mark.parametrize("mask", ["none", "bool", "float"])
def test_softmax_attention_is_what_sdpa_computes(mask):
    """The fallback of ``scaled_dot_product_attention`` for torch < 2.1 against torch's own (fp64)."""
    if not compat.HAS_SDPA:
        pytest.skip(f"torch {torch.__version__} has no scaled_dot_product_attention with scale to compare with")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen, dtype=torch.float64) for n in (5, 7, 7))
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.rand(2, 1, 5, 7, generator=gen) > 0.3
        attn_mask[..., 0] = True       # every query sees a key (SDPA gives NaN rows otherwise)
    elif mask == "float":
        attn_mask = torch.randn(2, 1, 5, 7, generator=gen, dtype=torch.float64)
    for scale in (None, 0.3):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        got = compat.softmax_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(compat.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale),
                                   expected, rtol=0, atol=0)


def test_version_without_packaging_orders_as_packaging(monkeypatch):
    """``myfla._torch_compat.Version`` reloaded with ``packaging`` hidden: the fallback class orders the
    final releases it is used for (Python, torch) as packaging's Version does."""
    import builtins
    import importlib
    version = pytest.importorskip("packaging.version")
    real_import = builtins.__import__

    def no_packaging(name, *args, **kwargs):
        if name.split(".")[0] == "packaging":
            raise ImportError("packaging hidden")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_packaging)
    try:
        fallback = importlib.reload(compat)
        assert fallback.Version is not version.Version
        pairs = [("3.8.18", "3.11"), ("3.11", "3.11.0"), ("3.12.1", "3.11"), ("2.4", "2.4.0"), ("1.13.1", "2.4")]
        for a, b in pairs:
            assert (fallback.Version(a) >= fallback.Version(b)) == (version.Version(a) >= version.Version(b))
            assert (fallback.Version(a) < fallback.Version(b)) == (version.Version(a) < version.Version(b))
            assert (fallback.Version(a) == fallback.Version(b)) == (version.Version(a) == version.Version(b))
    finally:
        monkeypatch.setattr(builtins, "__import__", real_import)
        importlib.reload(compat)
