"""The libcst index: kinds, signatures, ranges, citations, body facts, re-exports, caching."""

from __future__ import annotations

from portaudit.static.index.model import (AUTOGRAD, CLASS, CONSTANT, FUNCTION, KERNEL, KEYWORD_ONLY, METHOD,
                                          NN_MODULE, POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD, VAR_KEYWORD,
                                          VAR_POSITIONAL)
from portaudit.static.index.tree import TreeIndex

from tests.portaudit.conftest import write_tree

MOD = '''
import torch
import torch.nn as nn
import triton

# Source: up/x.py:L1-L1 (up 1.0)
BT_LIST = [16, 32]


@triton.autotune(configs=[])
@triton.jit
def kern(x, BT: 'tl.constexpr'):
    pass


def f(a, /, b: int = 1, *args, c='x', d: "float" = 2.0, **kw) -> int:
    """Summary.

    Source: up/mod.py:L10-L20 (up 1.0)
    Source: up/mod.py:L30-L40 (up 1.0)
    """
    # TODO finish
    raise NotImplementedError


class Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x


class Layer(nn.Module):
    def __init__(self, n=2):
        super().__init__()

    def forward(self, x):
        return kern(x)


class Child(Layer):
    pass


class Plain:
    def __init__(self):
        pass


if torch.cuda.is_available():
    device = 'cuda'
else:
    device = 'cpu'
'''


def line_of(needle: str, nth: int = 0) -> int:
    lines = MOD.lstrip("\n").splitlines()
    return [i + 1 for i, ln in enumerate(lines) if needle in ln][nth]


def test_kinds_ranges_signatures_and_facts(tmp_path):
    write_tree(tmp_path, {"up/__init__.py": "", "up/mod.py": MOD})
    ix = TreeIndex(tmp_path)
    info = ix.module("up.mod")
    d = info.definitions
    assert d["kern"].kind == KERNEL
    # decorators included, the trailing blank lines not
    assert (d["kern"].start, d["kern"].end) == (line_of("@triton.autotune"), line_of("    pass"))
    assert d["f"].kind == FUNCTION
    assert [(p.name, p.kind, p.default, p.annotation) for p in d["f"].params] == [
        ("a", POSITIONAL_ONLY, None, None), ("b", POSITIONAL_OR_KEYWORD, "1", "int"),
        ("args", VAR_POSITIONAL, None, None), ("c", KEYWORD_ONLY, "'x'", None),
        ("d", KEYWORD_ONLY, "2.0", "'float'"), ("kw", VAR_KEYWORD, None, None)]
    assert d["f"].returns == "int"
    assert [(c.path, c.start, c.end, c.label, c.version) for c in d["f"].citations] == [
        ("up/mod.py", 10, 20, "up", "1.0"), ("up/mod.py", 30, 40, "up", "1.0")]
    assert d["f"].facts.is_stub and d["f"].facts.not_implemented == [line_of("raise NotImplementedError")]
    assert ("TODO" in [w for _, w in d["f"].facts.markers])
    assert d["Fn"].kind == AUTOGRAD and d["Fn.forward"].kind == METHOD
    assert d["Layer"].kind == NN_MODULE and d["Layer"].methods == ["__init__", "forward"]
    assert d["Child"].kind == NN_MODULE          # derives from a local nn.Module
    assert d["Plain"].kind == CLASS
    assert d["BT_LIST"].kind == CONSTANT and d["BT_LIST"].citations[0].path == "up/x.py"
    assert d["device"].spans == [(line_of("device = 'cuda'"),) * 2, (line_of("device = 'cpu'"),) * 2]   # conditional definitions: one symbol, two spans
    assert "torch.cuda.is_available" in d["device"].uses  # the guard is a use
    assert "kern" in d["Layer"].uses and "x" not in d["Layer"].uses  # locals are not uses


def test_reexports_relative_imports_and_type_checking(tmp_path):
    write_tree(tmp_path, {
        "up/__init__.py": "from .ops import chunk\n",
        "up/ops/__init__.py": "from .impl import chunk\nfrom . import impl as impl_mod\n",
        "up/ops/impl.py": "from ..base import helper\n\ndef chunk(x):\n    return helper(x)\n",
        "up/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from up.hidden import H\n"
                      "def helper(x):\n    return x\n",
        "up/unreached.py": "def never():\n    return 1\n",
    })
    ix = TreeIndex(tmp_path)
    r = ix.resolve("up.chunk")
    assert r.symbol == "up.ops.impl.chunk"
    assert ix.resolve("up.ops.impl.helper").symbol == "up.base.helper"
    assert "H" not in ix.module("up.base").imports          # TYPE_CHECKING imports are skipped
    assert ix.resolve("up.nothing") is None
    assert not any("unreached" in p for p in ix.parsed_files)


def test_parse_cache_is_reused_and_keyed_by_content(tmp_path):
    write_tree(tmp_path / "src", {"up/__init__.py": "", "up/a.py": "def f(x):\n    return x\n"})
    cache = tmp_path / "cache"
    first = TreeIndex(tmp_path / "src", cache)
    first.module("up.a")
    assert len(first.parsed_files) == 1
    warm = TreeIndex(tmp_path / "src", cache)
    assert warm.module("up.a").definitions["f"].params[0].name == "x"
    assert warm.parsed_files == [] and len(warm.loaded_files) == 1
    (tmp_path / "src/up/a.py").write_text("def f(y):\n    return y\n")
    changed = TreeIndex(tmp_path / "src", cache)
    assert changed.module("up.a").definitions["f"].params[0].name == "y"
    assert len(changed.parsed_files) == 1
