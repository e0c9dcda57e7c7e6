"""Item 7: what is read and parsed is bounded; the parser never crashes the interpreter.

The whole-CLI versions of these cases (real exit codes, one line, nothing written) are in the
corpus (test_corpus.py); here the loaders are exercised directly, with timings bounded.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from portaudit.errors import UsageError
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import load_manifest
from portaudit.static.source import MAX_NESTING, MAX_TOKENS, SourceError, check_parse_limits
from portaudit.static.yaml_loader import MAX_NODES, check_node_graph, parse_yaml

from tests.portaudit.conftest import manifest_text, write_tree

ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(6)]
    + ["upstream: *g"]) + "\n"   # 10^7 leaves, under 600 bytes


def test_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    assert len(ALIAS_BOMB) < 600
    p = tmp_path / "bomb.yaml"
    p.write_text(ALIAS_BOMB)
    t = time.monotonic()
    with pytest.raises(UsageError, match=f"expands to more than {MAX_NODES} values"):
        load_manifest(p)
    assert time.monotonic() - t < 10


def test_aliases_within_the_limit_still_work(tmp_path):
    text = manifest_text(["up.a.f", "up.a.g"]).replace(
        "waivers:", "") + "waivers:\n  - &w {symbol: up.a.f, code: PA207, reason: &r \"style\"}\n" \
        "  - {symbol: up.a.g, code: PA207, reason: *r}\n"
    p = tmp_path / "m.yaml"
    p.write_text(text)
    m = load_manifest(p)
    assert [w.reason for w in m.waivers] == ["style", "style"]


@pytest.mark.parametrize("text, match", [
    ("a: &a [*a]\n", "contains itself"),
    ("[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)) + "\n", "nested deeper"),
    ("x: " + "1" * 5000 + "\n", "invalid YAML value"),
    ("x: 2020-13-45\n", "invalid YAML value"),
    ("x: !!python/object:os.system {}\n", "invalid YAML"),
    ("--- {a: 1}\n--- {b: 2}\n", "invalid YAML"),
])
def test_hostile_yaml_shapes(text, match):
    with pytest.raises(UsageError, match=match):
        parse_yaml(text, "m.yaml")


def test_node_graph_measure_is_linear_in_distinct_nodes():
    import yaml
    node = yaml.compose(ALIAS_BOMB.replace("upstream: *g", "top: *e"), Loader=yaml.SafeLoader)
    t = time.monotonic()
    assert check_node_graph(node, "m", max_nodes=10 ** 9) > 10 ** 5
    assert time.monotonic() - t < 2


def test_special_files_as_manifest_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    errors = []
    worker = threading.Thread(target=lambda: errors.append(_raises(load_manifest, fifo)))
    worker.start()
    worker.join(20)
    assert errors and "FIFO" in errors[0]
    assert "character device" in _raises(load_manifest, "/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (3 << 20) + b"\n")
    assert "over the" in _raises(load_manifest, big)


def _raises(fn, *args) -> str:
    try:
        fn(*args)
    except UsageError as exc:
        return str(exc)
    raise AssertionError("no UsageError")


def _nested(n: int) -> str:
    return "x = " + "(" * n + "1" + ")" * n + "\n"


@pytest.mark.parametrize("source, match", [
    (_nested(3000), "nested more than"),
    ("x = " + " and ".join(["a"] * 20000) + "\n", "nested more than"),
    ("x = " + "lambda: " * 20000 + "1\n", "nested more than"),
    ("x = " + "[*" * 5000 + "a" + "]" * 5000 + "\n", "nested more than"),
    ("x = [" + "0," * (MAX_TOKENS // 2 + 10) + "]\n", f"over {MAX_TOKENS} tokens"),
    ('x = """never closed\n', "cannot tokenize"),
])
def test_parse_limits_refuse_what_would_exhaust_libcst(source, match):
    t = time.monotonic()
    with pytest.raises(SourceError, match=match):
        check_parse_limits(source, "m.py")
    assert time.monotonic() - t < 30


def test_real_code_is_far_below_the_limits():
    check_parse_limits(_nested(MAX_NESTING // 2 - 2), "m.py")                # 98 nested brackets pass
    check_parse_limits("x = [" + ", ".join(["-1"] * 50000) + "]\n", "m.py")  # a long flat literal
    check_parse_limits("x = " + " + ".join(["a"] * 150) + "\n", "m.py")      # a long sum


@pytest.mark.parametrize("body, match", [
    (_nested(3000), "nested more than"),
    ("def f(x)\n    pass\n", r"m\.py:\d+:\d+: cannot parse the module"),
    ("def f(:\n    pass\n", r"m\.py:1: cannot tokenize the source: '\(' never closed"),
    ("x = '" + "a" * (5 << 20) + "'\n", "over the"),
    ("x = " + "[" * 150 + "]" * 150 + "\n", "nested more than"),
])
def test_index_turns_parser_failures_into_one_line(tmp_path, body, match):
    write_tree(tmp_path, {"pkg/__init__.py": ""})
    (tmp_path / "pkg" / "m.py").write_text(body)
    with pytest.raises(UsageError, match=match) as info:
        TreeIndex(tmp_path).module("pkg.m")
    assert "\n" not in str(info.value) and str(tmp_path / "pkg" / "m.py") in str(info.value)
