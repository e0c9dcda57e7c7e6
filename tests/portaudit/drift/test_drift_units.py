"""Units: the normalised content hash and the signature diff on hand-written inputs."""

from __future__ import annotations

from portaudit.drift.fingerprint import normalised
from portaudit.drift.model import (PARAM_ADDED, PARAM_ADDED_REQUIRED, PARAM_DEFAULT, PARAM_KIND, PARAM_MOVED,
                                   PARAM_OPTIONAL, PARAM_REMOVED, PARAM_RENAMED, PARAM_REQUIRED)
from portaudit.drift.signature import diff_params
from portaudit.static.index.model import KEYWORD_ONLY, POSITIONAL_OR_KEYWORD, VAR_KEYWORD, Param


def P(name, default=None, kind=POSITIONAL_OR_KEYWORD):
    return Param(name, kind, default)


def kinds(changes):
    return sorted((c.kind, c.param) for c in changes)


def test_hash_ignores_moves_indentation_and_comments_not_code():
    a = "def f(x):\n    # why\n    return x + 1\n"
    moved_into_class = "    def f(x):\n\n        return x + 1  # still why\n"
    assert normalised(a) == normalised(moved_into_class)
    assert normalised(a) != normalised("def f(x):\n    return x + 2\n")
    assert normalised('s = "#not a comment"') != normalised('s = "#other"')


def test_unchanged_signature_has_no_changes():
    ps = [P("q"), P("k"), P("scale", "None"), P("kw", "1", KEYWORD_ONLY)]
    assert diff_params(ps, list(ps)) == []


def test_required_and_optional_additions_and_removal():
    old = [P("g"), P("A"), P("head_k_dim"), P("beta", "1.0")]
    new = [P("g"), P("A_log", "None"), P("dt_bias", "None"), P("extra")]
    got = kinds(diff_params(old, new))
    assert got == sorted([(PARAM_RENAMED, "A"), (PARAM_OPTIONAL, "A_log"), (PARAM_REMOVED, "head_k_dim"),
                          (PARAM_REMOVED, "beta"), (PARAM_ADDED, "dt_bias"), (PARAM_ADDED_REQUIRED, "extra")])


def test_moved_kind_default_and_required():
    old = [P("a"), P("b", "1"), P("c", "2"), P("d")]
    new = [P("b", "3"), P("a"), P("c", kind=KEYWORD_ONLY), P("d", "0"), P("kw", kind=VAR_KEYWORD)]
    got = kinds(diff_params(old, new))
    # d keeps its name but its positional index drops from 3 to 2 once c becomes keyword-only
    assert got == sorted([(PARAM_MOVED, "a"), (PARAM_MOVED, "b"), (PARAM_DEFAULT, "b"), (PARAM_KIND, "c"),
                          (PARAM_REQUIRED, "c"), (PARAM_MOVED, "d"), (PARAM_OPTIONAL, "d"), (PARAM_ADDED, "kw")])
    breaking = {c.param for c in diff_params(old, new) if c.breaking}
    assert breaking == {"a", "b", "c", "d"}
