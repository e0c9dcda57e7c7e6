"""Item 2: the parse cache is data (checked JSON), never code.

A cache entry sits under a key anyone can compute; a planted entry must never run anything,
never change what the index says, and is replaced by a fresh parse.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest

from portaudit.static.index import cache as index_cache
from portaudit.static.index.tree import TreeIndex, parser_key

from tests.portaudit.conftest import write_tree

SOURCE = 'def f(x, n=2):\n    """Doc."""\n    return x * n\n'


class _Planted:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tree(tmp_path):
    write_tree(tmp_path / "t", {"pkg/__init__.py": "", "pkg/m.py": SOURCE})
    return tmp_path / "t"


def _entry(index: TreeIndex, root) -> "os.PathLike":
    sha = hashlib.sha256((root / "pkg" / "m.py").read_bytes()).hexdigest()
    return index.cache_file("pkg.m", False, sha)


def test_planted_pickle_is_never_loaded(tmp_path):
    root = _tree(tmp_path)
    marker = tmp_path / "PWNED"
    index = TreeIndex(root, tmp_path / "cache")
    path = _entry(index, root)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(_Planted(str(marker))))
    info = index.module("pkg.m")
    assert not marker.exists()
    assert info.definitions["f"].params[1].default == "2"
    assert index.parsed_files == [str(root / "pkg" / "m.py")]          # parsed, not loaded
    doc = json.loads(path.read_bytes())                                   # replaced by JSON
    assert doc["schema"] == index_cache.SCHEMA and doc["module"]["module"] == "pkg.m"
    again = TreeIndex(root, tmp_path / "cache")
    assert again.module("pkg.m") == info and again.parsed_files == []    # and reused


def _mutations(good: dict):
    def setp(doc, path, value):
        d = doc
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
        return doc

    yield "schema", lambda d: setp(d, ["schema"], "portaudit.index/0")
    yield "parser", lambda d: setp(d, ["parser"], "0" * 16)
    yield "other module", lambda d: setp(d, ["module", "module"], "pkg.other")
    yield "other content", lambda d: setp(d, ["module", "sha"], "0" * 64)
    yield "unknown field", lambda d: setp(d, ["module", "evil"], 1)
    yield "wrong type", lambda d: setp(d, ["module", "line_count"], "3")
    yield "bool for int", lambda d: setp(d, ["module", "line_count"], True)
    yield "missing field", lambda d: d["module"].pop("path") and d
    yield "nested wrong type", lambda d: setp(d, ["module", "definitions", "f", "params"], {"x": 1})
    yield "extra top key", lambda d: setp(d, ["pickle"], "gASV")


def test_tampered_entries_are_parsed_again(tmp_path):
    root = _tree(tmp_path)
    index = TreeIndex(root, tmp_path / "cache")
    truth = index.module("pkg.m")
    path = _entry(index, root)
    good = json.loads(path.read_bytes())
    for name, mutate in _mutations(good):
        doc = mutate(json.loads(json.dumps(good)))
        doc_bytes = json.dumps(doc).encode()
        with pytest.raises(index_cache.CacheEntryError):
            index_cache.decode(doc_bytes, parser_key(), "pkg.m", truth.sha)
        path.write_bytes(doc_bytes)
        fresh = TreeIndex(root, tmp_path / "cache")
        assert fresh.module("pkg.m") == truth, name
        assert fresh.parsed_files, f"{name}: a tampered entry was used"
    for raw in (b'{"schema": NaN}', b"\xff\xfe{", b"[" * 100000, b'{"a": 1, "a": 2}'):
        with pytest.raises(index_cache.CacheEntryError):
            index_cache.decode(raw, parser_key(), "pkg.m", truth.sha)


def test_planted_link_and_fifo_in_the_cache(tmp_path):
    """A link at an entry's path is replaced (its target untouched); a FIFO there does not block."""
    root = _tree(tmp_path)
    index = TreeIndex(root, tmp_path / "cache")
    path = _entry(index, root)
    path.parent.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path.symlink_to(victim)
    assert index.module("pkg.m") is not None
    assert victim.read_text() == "keep me" and not path.is_symlink()
    path.unlink()
    os.mkfifo(path)
    fresh = TreeIndex(root, tmp_path / "cache")
    assert fresh.module("pkg.m") is not None and fresh.parsed_files
