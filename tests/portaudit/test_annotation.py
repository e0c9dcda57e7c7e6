"""PA207 compares what annotations mean, not how they are spelt (portaudit/static/checks/annotation.py):
a port that must import on Python 3.8 writes ``Tuple[...]``/``Optional[...]`` where its upstream
writes ``tuple[...]``/``X | None``."""

from __future__ import annotations

import pytest

from portaudit.static.checks.annotation import canonical_annotation, same_annotation


@pytest.mark.parametrize("upstream, port", [
    ("tuple[torch.Tensor, torch.Tensor | None]", "Tuple[torch.Tensor, Optional[torch.Tensor]]"),
    ("list[int]", "typing.List[int]"),
    ("dict[str, Any]", "Dict[str, Any]"),
    ("int | None | str", "Optional[Union[str, int]]"),
    ("Optional[tuple[Dict[str, Any], ...]]", "Optional[Tuple[Dict[str, Any], ...]]"),
    ("'Cache'", "Cache"),
    (None, None),
])
def test_spellings_of_one_type_agree(upstream, port):
    assert same_annotation(upstream, port)


@pytest.mark.parametrize("upstream, port", [
    ("tuple[int, int]", "Tuple[int]"),
    ("Optional[int]", "int"),
    ("list[int]", "Sequence[int]"),
    ("torch.Tensor", None),
    ("int | str", "Union[int, float]"),
])
def test_different_types_still_differ(upstream, port):
    assert not same_annotation(upstream, port)


def test_canonical_form_is_stable():
    assert canonical_annotation("tuple[int, str | None]") == "Tuple[int, Union[None, str]]"
    assert canonical_annotation("not valid python (") == "not valid python ("


def test_pa207_still_reports_a_real_difference(ws):
    ws.files(upstream={"up/m.py": "def f(a: tuple[int, int]) -> int | None:\n    return None\n"})
    ws.files(port={"po/m.py": 'def f(a: Tuple[int, int]) -> Optional[str]:\n    """Source: up/m.py:L1-L2 (up 1.0)"""\n'
                              "    return None\n"})
    result = ws.audit(["up.m.f"])
    pa207 = [f for f in result.findings if f.code == "PA207"]
    assert [f.message for f in pa207] == ["return annotation differs: upstream int | None, port Optional[str]"]
