"""Shared fixtures: the fetched upstream trees (oracles are loaded from them by file path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from portaudit.static.upstream import resolve_upstream

FLA_040 = ["fla-core==0.4.0", "flash-linear-attention==0.4.0"]
FLA_060 = ["fla-core==0.6.0", "flash-linear-attention==0.6.0"]


def _tree(dists, env_var):
    local = os.environ.get(env_var)
    if local:
        return resolve_upstream(upstream_path=local, package="fla")
    return resolve_upstream(dists, package="fla")


@pytest.fixture(scope="session")
def fla040_root() -> Path:
    """Root of the unpacked fla 0.4.0 wheels ($PORTAUDIT_FLA040 overrides with a local tree)."""
    return _tree(FLA_040, "PORTAUDIT_FLA040")


@pytest.fixture(scope="session")
def fla060_root() -> Path:
    """Root of the unpacked fla 0.6.0 wheels ($PORTAUDIT_FLA060 overrides with a local tree)."""
    return _tree(FLA_060, "PORTAUDIT_FLA060")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
