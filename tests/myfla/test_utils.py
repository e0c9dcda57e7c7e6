"""The public helpers of ``myfla.utils`` beyond the KDA/GDN closure (fla 0.4.0 ``fla/utils.py``):
``assert_close``, ``require_version``, ``deprecate_kwarg``/``Action``, ``checkpoint``,
``check_environments``, ``map_triton_backend_to_torch_device`` and the device flags."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from myfla import utils


def test_assert_close_rules(monkeypatch):
    ref = torch.ones(100)
    utils.assert_close("exact", ref, ref.clone(), 1e-9)
    utils.assert_close("tiny", ref, ref + 5e-7, 0.0)              # within err_atol
    utils.assert_close("ratio", ref, ref + 1e-3, 2e-3)             # rms ratio 1e-3 < 2e-3
    with pytest.raises(AssertionError, match="ratio: 0.010000"):
        utils.assert_close("big", ref, ref + 1e-2, 1e-3)
    with pytest.warns(UserWarning, match="diff: 0.010000"):
        utils.assert_close("warned", ref, ref + 1e-2, 1e-3, warning=True)
    # under FLA_CI_ENV a small error only warns
    monkeypatch.setattr(utils, "FLA_CI_ENV", True)
    with pytest.warns(UserWarning):
        utils.assert_close("ci", ref, ref + 1e-2, 1e-3)
    with pytest.raises(AssertionError):
        utils.assert_close("ci-large", ref, ref + 1.0, 1e-3)


def test_require_version_checks_and_makes_contiguous():
    pytest.importorskip("transformers")
    seen = {}

    @utils.require_version("torch>=1.0", "torch is required")
    def forward(ctx, x, y=None):
        seen["contig"] = (x.is_contiguous(), y.is_contiguous())
        return x

    t = torch.randn(4, 6).t()
    forward(None, t, y=t)
    assert seen["contig"] == (True, True)

    @utils.require_version("torch>=999.0", "needs a future torch")
    def too_new(ctx):
        return None

    with pytest.raises(ImportError, match="needs a future torch"):
        too_new(None)


def test_deprecate_kwarg_rename_notify_and_raise():
    assert [a.value for a in utils.Action] == ["none", "notify", "notify_always", "raise"]

    @utils.deprecate_kwarg("old", version="9.0", new_name="new")
    def f(new=None):
        return new

    with pytest.warns(FutureWarning, match="`old` is deprecated and will be removed in version 9.0 for `f`"):
        assert f(old=3) == 3
    with pytest.warns(FutureWarning, match="Both `old` and `new` are set for `f`"):
        assert f(old=1, new=2) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(new=5) == 5

    # the package version (0.4.0) has reached 0.1: plain notifications are dropped, raising stays
    @utils.deprecate_kwarg("old", version="0.1", new_name="new", raise_if_greater_or_equal_version=True)
    def g(new=None):
        return new

    with pytest.raises(ValueError, match="removed starting from version 0.1"):
        g(old=1)

    @utils.deprecate_kwarg("old", version="0.1", new_name="new")
    def h(new=None):
        return new

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert h(old=7) == 7

    class M:
        @utils.deprecate_kwarg("size", version="9.0")
        def call(self, **kw):
            return kw

    with pytest.warns(FutureWarning, match="`size` is deprecated and will be removed in version 9.0 for `M.call`"):
        assert M().call(size=2) == {"size": 2}


def test_checkpoint_recomputes_with_same_gradients():
    calls = []

    def fn(x):
        calls.append(1)
        return x.sin() * 2

    x = torch.randn(5, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch asks for an explicit use_reentrant; fla passes none
        y = utils.checkpoint(fn)(x)
        y.sum().backward()
    assert len(calls) == 2          # forward, then the recomputation in backward
    torch.testing.assert_close(x.grad, 2 * x.detach().cos())


def test_device_flags_and_environment(caplog):
    assert utils.map_triton_backend_to_torch_device() == utils.device_name == utils.get_available_device()
    assert utils.is_intel is False and utils.is_intel_alchemist is False
    assert utils.is_gather_supported is True
    utils.check_environments.cache_clear()
    with caplog.at_level(logging.WARNING, logger="myfla.utils"):
        utils.check_environments()
    import sys
    warned = any("recommended 3.11" in r.message for r in caplog.records)
    assert warned == (sys.version_info < (3, 11))


def test_tensor_cache_hits_by_identity():
    calls = []
    f = utils.tensor_cache(lambda x, *, n=1: calls.append((x, n)) or ('result', x, n))
    a, b = object(), object()
    first = f(a)
    assert f(a) is first and len(calls) == 1                       # same object: the cached result
    assert f(b)[1] is b and len(calls) == 2                        # another object: computed
    assert f(a) is not first and len(calls) == 3                   # one entry only, as fla 0.4.0
    assert f(a, n=2)[2] == 2 and len(calls) == 4                   # keyword arguments count too


def test_tensor_cache_never_returns_another_callers_result():
    """Threads calling one cached function with different arguments (a manifest deviation: fla 0.4.0
    stores the last arguments and the last result one after another; a thread switch between the
    stores handed a result to a caller with other arguments: thousands of times a second with four
    threads switching every microsecond)."""
    import time

    from tests.concurrency import run_in_threads

    f = utils.tensor_cache(lambda key: ('result', key))
    keys = [object() for _ in range(4)]
    wrong = []
    stop = time.perf_counter() + 0.5

    def caller(key):
        while time.perf_counter() < stop:
            for _ in range(500):
                if f(key)[1] is not key:
                    wrong.append(key)

    run_in_threads(caller, keys, switch_interval=1e-6)
    assert not wrong, f"{len(wrong)} calls got the result of another argument"
