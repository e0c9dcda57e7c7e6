"""Fixtures of the myfla tests: fla 0.4.0's own model and attention code on CPU references
(tests/myfla/models/fla_oracle.py), loaded once per session (tests that use them need transformers,
as fla's models do, and skip without it); one or two intra-op threads for the thread-policy tests."""

from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def _intra_op_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test (the caller's count restored after it)."""
    with _intra_op_threads(2):
        yield


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def intra_op_threads(request):
    """The test at one and at two intra-op threads (e.g. the state loops of
    ``myfla.ops.common.chunk_delta_h`` update their outputs in place only with several)."""
    with _intra_op_threads(request.param) as n:
        yield n


@pytest.fixture(scope="session")
def fla_ref(fla040_root):
    """fla's models with fla's layer code on fla's naive references (fp64 oracles for fp64 inputs)."""
    pytest.importorskip("transformers", reason="fla's model code needs transformers")
    from tests.myfla.models.fla_oracle import load_fla_models
    return load_fla_models(fla040_root, layers='ref', fp64=True)


@pytest.fixture(scope="session")
def fla_glue(fla040_root):
    """fla's model code around myfla's layers: the oracle for model-level glue (losses, caches,
    generation) where the layers themselves are not under test."""
    pytest.importorskip("transformers", reason="fla's model code needs transformers")
    from tests.myfla.models.fla_oracle import load_fla_models
    return load_fla_models(fla040_root, layers='myfla')
