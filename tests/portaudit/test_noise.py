"""Less noise: annotations as types, constant defaults as values, kinds through outside bases,
stand-in comments, declared parameter renames, and one upstream symbol ported in several places.

Each noise rule has its counterpart that must still be a finding (a real type change, a different
constant, an unresolvable base, a TODO).
"""

from __future__ import annotations

import pytest

from portaudit.static.signature_normal import canonical_annotation

from tests.portaudit.conftest import open_codes


def spell_typing(name):
    return {"Optional": "typing.Optional", "Union": "typing.Union", "Tuple": "typing.Tuple",
            "List": "typing.List", "Dict": "typing.Dict", "torch": "torch", "Tensor": "torch.Tensor"}.get(name)


@pytest.mark.parametrize("a,b", [
    ("Optional[torch.Tensor]", "torch.Tensor | None"),
    ("Union[torch.Tensor, None]", "None | torch.Tensor"),
    ("Tuple[int, int]", "tuple[int, int]"),
    ("List[int]", "list[int]"),
    ("Dict[str, int]", "dict[str, int]"),
    ("'torch.Tensor'", "torch.Tensor"),
    ("Optional['Tensor']", "Optional[torch.Tensor]"),
    ("Union[int, str, None]", "str | int | None"),
])
def test_annotations_equal_as_types(a, b):
    assert canonical_annotation(a, spell_typing) == canonical_annotation(b, spell_typing)


@pytest.mark.parametrize("a,b", [
    ("Optional[torch.LongTensor]", "torch.Tensor | None"),
    ("Tuple[int, int]", "tuple[int, str]"),
    ("Optional[int]", "int"),
])
def test_different_types_stay_different(a, b):
    assert canonical_annotation(a, spell_typing) != canonical_annotation(b, spell_typing)


UP = {"up/m.py": '''
import torch
from typing import Optional, Tuple


def f(x: Optional[torch.Tensor] = None, size: int = 64, shape: Tuple[int, int] = (1, 2)) -> Tuple[int, int]:
    return shape


class Norm(torch.nn.Module):
    def forward(self, x):
        return x
'''}


SIGNATURE = ("import torch\nfrom typing import Optional, Tuple\n\n\n"
             "def f(x: Optional[torch.Tensor] = None, size: int = 64, shape: Tuple[int, int] = (1, 2)) "
             "-> Tuple[int, int]:")


def run(ws, port: str, symbols=("up.m.f",), files=None):
    ws.files(upstream=UP, port={"po/m.py": port, **(files or {})})
    return ws.audit(list(symbols), waivers="  - {symbol: 'up.*', code: 'PA30*', reason: the test port cites nothing}\n")


def test_annotation_spelling_is_not_a_finding(ws):
    port = ('import torch\n\n\ndef f(x: "torch.Tensor | None" = None, size: int = 64,\n'
            '      shape: tuple[int, int] = (1, 2)) -> tuple[int, int]:\n    return shape\n')
    assert open_codes(run(ws, port)) == []


def test_a_real_annotation_change_is_still_a_warning(ws):
    port = ("import torch\n\n\ndef f(x: torch.LongTensor | None = None, size: int = 64,\n"
            "      shape: tuple[int, int] = (1, 2)) -> tuple[int, int]:\n    return shape\n")
    r = run(ws, port)
    assert [(f.code, f.param) for f in r.findings if f.status == "open"] == [("PA207", "x")]


def test_a_named_constant_default_is_compared_by_value(ws):
    port = ("import torch\nfrom typing import Optional, Tuple\nfrom po.consts import FLA_CHUNK_SIZE\n\n"
            "LOCAL = (1, 2)\n\n\ndef f(x: Optional[torch.Tensor] = None, size: int = FLA_CHUNK_SIZE,\n"
            "      shape: Tuple[int, int] = LOCAL) -> Tuple[int, int]:\n    return shape\n")
    files = {"po/consts.py": "FLA_CHUNK_SIZE = 64\n"}
    r = run(ws, port, files=files)
    assert open_codes(r) == []
    files = {"po/consts.py": "FLA_CHUNK_SIZE = 32\n"}
    r = run(ws, port, files=files)
    (f,) = [f for f in r.findings if f.code == "PA206"]
    assert f.param == "size" and "FLA_CHUNK_SIZE (= 32)" in f.message


def test_a_base_defined_outside_the_port_package_is_followed(ws):
    """vLLM's `class RMSNormGated(CustomOp)` with `class CustomOp(nn.Module)` elsewhere in the tree."""
    port = "from vendor.custom_op import CustomOp\n\n\nclass Norm(CustomOp):\n    def forward(self, x):\n        return x\n"
    files = {"vendor/__init__.py": "", "vendor/custom_op.py": "from torch import nn\n\n\nclass CustomOp(nn.Module):\n    pass\n"}
    ws.files(upstream=UP)
    for rel, text in files.items():
        (ws.port / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws.port / rel).write_text(text)
    assert open_codes(run(ws, port, symbols=("up.m.Norm",))) == []


def test_an_unresolvable_base_is_unresolved_not_wrong(ws):
    port = "from somewhere_else import Base\n\n\nclass Norm(Base):\n    def forward(self, x):\n        return x\n"
    r = run(ws, port, symbols=("up.m.Norm",))
    assert [(f.code, f.severity) for f in r.findings if f.status == "open"] == [("PA106", "warning")]
    assert r.percent == 100.0
    # a base that resolves to a plain class is still the wrong kind
    port = "class Base:\n    pass\n\n\nclass Norm(Base):\n    def forward(self, x):\n        return x\n"
    assert open_codes(run(ws, port, symbols=("up.m.Norm",))) == ["PA103"]


def test_a_comment_saying_what_a_value_stands_for_is_no_stub(ws):
    port = (f"{SIGNATURE}\n"
            "    mean = 0.0  # Placeholder for RMS norm\n"
            "    extra = x,  # unused placeholder when x is None\n"
            "    return shape\n")
    assert open_codes(run(ws, port)) == []


@pytest.mark.parametrize("line", [
    "    # TODO vectorise",
    "    mean = 0.0  # TODO compute the mean",
    "    return shape  # simplified version",
    "    # placeholder for the real computation",
])
def test_confessions_are_still_markers(ws, line):
    port = f"{SIGNATURE}\n{line}\n    return shape\n"
    assert open_codes(run(ws, port)) == ["PA403"]


def test_parameter_renames_declared_once(ws):
    ws.files(upstream={"up/ops.py": "def attn(q, k, v, scale=None):\n    return q\n\n\n"
                                    "def rec(q, k, v, beta=None):\n    return q\n"})
    ws.files(port={"po/ops.py": "def attn(query, key, value, scale=None):\n    return query\n\n\n"
                                "def rec(query, key, value, beta=None):\n    return query\n"})
    path = ws.manifest(["up.ops.attn", "up.ops.rec"],
                       waivers="  - {symbol: 'up.*', code: 'PA30*', reason: no citations in this test}\n")
    plain = ws.audit(["up.ops.attn", "up.ops.rec"],
                     waivers="  - {symbol: 'up.*', code: 'PA30*', reason: no citations in this test}\n")
    assert open_codes(plain).count("PA201") == 6 and open_codes(plain).count("PA202") == 6
    text = path.read_text().replace("  package: po\n", "  package: po\n  renames: {q: query, k: key, v: value}\n")
    path.write_text(text)
    from portaudit.static.manifest import load_manifest
    from portaudit.static.session import Session
    r = Session(upstream_path=ws.up, port_path=ws.port, cache_dir=ws.cache).audit(load_manifest(path))
    assert open_codes(r) == []


def test_one_upstream_symbol_in_several_port_places(ws):
    """transformers ports l2norm twice: one entry, two locations, each checked."""
    ws.files(upstream={"up/l2.py": "def l2norm(x, eps=1e-6):\n    return x\n"})
    ws.files(port={"po/a.py": "def l2norm(x, eps=1e-6):\n    return x\n",
                   "po/b.py": "def l2norm(x, eps=1e-5):\n    return x\n"})
    r = ws.audit(["{symbol: up.l2.l2norm, port: [po.a.l2norm, po.b.l2norm]}"],
                 waivers="  - {symbol: 'up.*', code: 'PA30*', reason: no citations in this test}\n")
    assert [s.port_symbol for s in r.symbols] == ["po.a.l2norm", "po.b.l2norm"]
    (f,) = [f for f in r.findings if f.status == "open"]
    assert f.code == "PA206" and f.key == "PA206:up.l2.l2norm@po.b.l2norm:eps"
    assert r.passed == 1 and r.total == 2


def test_implicit_optional_is_optional(ws):
    """fla writes `initial_state: torch.Tensor = None`; a port writing `torch.Tensor | None` agrees."""
    ws.files(upstream={"up/o.py": "import torch\n\n\ndef f(h0: torch.Tensor = None, n: int = 1):\n    return h0\n"})
    ws.files(port={"po/o.py": "import torch\n\n\ndef f(h0: torch.Tensor | None = None, n: int | None = 1):\n"
                              "    return h0\n"})
    r = ws.audit(["up.o.f"], waivers="  - {symbol: 'up.*', code: 'PA30*', reason: no citations in this test}\n")
    assert [(f.code, f.param) for f in r.findings if f.status == "open"] == [("PA207", "n")]
