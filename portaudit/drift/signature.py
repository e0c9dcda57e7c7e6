"""Signature changes between two definitions, in stubtest/griffe terms.

For a function: parameters added (required or optional), removed, renamed (a removed and an
added parameter of the same kind at the same or an adjacent position with similar names), moved
(a positional parameter whose position changed), kind changed, default changed, became required,
became optional. For a class: the same for every method both releases define (``__init__``,
``forward``, ...), plus members added and removed. Autograd Functions and nn.Modules are classes.
"""

from __future__ import annotations

import difflib
from typing import Optional

from portaudit.drift.model import (MEMBER_ADDED, MEMBER_REMOVED, OBJECT_KIND, PARAM_ADDED,
                                   PARAM_ADDED_REQUIRED, PARAM_DEFAULT, PARAM_KIND, PARAM_MOVED,
                                   PARAM_OPTIONAL, PARAM_REMOVED, PARAM_RENAMED, PARAM_REQUIRED,
                                   SignatureChange)
from portaudit.static.index.model import (CONSTANT, KEYWORD_ONLY, POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD,
                                          VAR_KEYWORD, VAR_POSITIONAL, Definition, ModuleInfo, Param)

_POSITIONAL = (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD)
_CALLABLE = {"function", "kernel", "method"}
_CLASSLIKE = {"class", "autograd.Function", "nn.Module"}


def kind_group(kind: str) -> str:
    """'callable', 'class' or the kind itself: definitions of one group can replace each other."""
    if kind in _CALLABLE:
        return "callable"
    if kind in _CLASSLIKE:
        return "class"
    return kind


def _fmt(p: Param) -> str:
    star = "*" if p.kind == VAR_POSITIONAL else "**" if p.kind == VAR_KEYWORD else ""
    return f"{star}{p.name}" + (f"={p.default}" if p.default is not None else "")


def _required(p: Param) -> bool:
    return p.default is None and p.kind not in (VAR_POSITIONAL, VAR_KEYWORD)


def _similar_names(a: str, b: str) -> bool:
    if a.startswith(b) or b.startswith(a):
        return True
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.75


def diff_params(old: list[Param], new: list[Param], member: str = "") -> list[SignatureChange]:
    out: list[SignatureChange] = []
    old_by = {p.name: p for p in old}
    new_by = {p.name: p for p in new}
    removed = [p for p in old if p.name not in new_by]
    added = [p for p in new if p.name not in old_by]
    old_pos = [p.name for p in old if p.kind in _POSITIONAL]
    new_pos = [p.name for p in new if p.kind in _POSITIONAL]
    renamed: dict[str, str] = {}
    for r in removed:
        if r.kind not in _POSITIONAL:
            continue
        i = old_pos.index(r.name)
        for a in added:
            if a.name in renamed.values() or a.kind not in _POSITIONAL:
                continue
            if abs(new_pos.index(a.name) - i) <= 1 and _similar_names(r.name, a.name):
                renamed[r.name] = a.name
                break
    for r in removed:
        if r.name in renamed:
            a = new_by[renamed[r.name]]
            out.append(SignatureChange(PARAM_RENAMED, member, r.name, r.name, a.name))
            if r.default != a.default:
                out.extend(_default_change(r, a, member, name=a.name))
        else:
            out.append(SignatureChange(PARAM_REMOVED, member, r.name, old=_fmt(r)))
    for a in added:
        if a.name in renamed.values():
            continue
        kind = PARAM_ADDED_REQUIRED if _required(a) and a.kind in _POSITIONAL + (KEYWORD_ONLY,) else PARAM_ADDED
        out.append(SignatureChange(kind, member, a.name, new=_fmt(a)))
    for p in old:
        q = new_by.get(p.name)
        if q is None:
            continue
        if p.kind != q.kind:
            out.append(SignatureChange(PARAM_KIND, member, p.name, p.kind, q.kind))
        elif p.kind in _POSITIONAL and p.name in old_pos and q.name in new_pos \
                and old_pos.index(p.name) != new_pos.index(q.name):
            out.append(SignatureChange(PARAM_MOVED, member, p.name,
                                       f"position {old_pos.index(p.name)}", f"position {new_pos.index(q.name)}"))
        out.extend(_default_change(p, q, member))
    return out


def _default_change(p: Param, q: Param, member: str, name: Optional[str] = None) -> list[SignatureChange]:
    name = name or p.name
    if p.kind in (VAR_POSITIONAL, VAR_KEYWORD) or q.kind in (VAR_POSITIONAL, VAR_KEYWORD):
        return []
    if p.default is not None and q.default is None:
        return [SignatureChange(PARAM_REQUIRED, member, name, old=f"default {p.default}")]
    if p.default is None and q.default is not None:
        return [SignatureChange(PARAM_OPTIONAL, member, name, new=f"default {q.default}")]
    if p.default != q.default:
        return [SignatureChange(PARAM_DEFAULT, member, name, p.default, q.default)]
    return []


def diff_definitions(old_info: ModuleInfo, old: Definition, new_info: ModuleInfo,
                     new: Definition) -> list[SignatureChange]:
    """Signature changes from ``old`` (in ``old_info``) to ``new`` (in ``new_info``)."""
    if kind_group(old.kind) != kind_group(new.kind):
        return [SignatureChange(OBJECT_KIND, "", None, old.kind, new.kind)]
    if old.kind == CONSTANT or new.kind == CONSTANT:
        return []
    if kind_group(old.kind) == "callable":
        return diff_params(old.params or [], new.params or [])
    out: list[SignatureChange] = []
    old_methods = [m for m in old.methods if f"{old.name}.{m}" in old_info.definitions]
    new_methods = [m for m in new.methods if f"{new.name}.{m}" in new_info.definitions]
    for m in old_methods:
        if m not in new_methods:
            out.append(SignatureChange(MEMBER_REMOVED, m))
            continue
        a = old_info.definitions[f"{old.name}.{m}"]
        b = new_info.definitions[f"{new.name}.{m}"]
        out.extend(diff_params(a.params or [], b.params or [], member=m))
    for m in new_methods:
        if m not in old_methods:
            out.append(SignatureChange(MEMBER_ADDED, m))
    return out
