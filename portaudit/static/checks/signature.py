"""Signatures: parameter names, order, kinds, defaults and annotations (codes PA201-PA207).

Declared parameter renames (``q -> query``) are applied to the upstream signature first, so a
renamed parameter is neither missing nor extra. Through :class:`Readers`, annotations are compared
as types and defaults as values (:mod:`portaudit.static.signature_normal`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from portaudit.static.checks.annotation import same_annotation
from portaudit.static.checks.site import Site
from portaudit.static.findings import Finding
from portaudit.static.index.model import VAR_KEYWORD, VAR_POSITIONAL, Definition, Param


def _fmt(p: Param) -> str:
    prefix = "*" if p.kind == VAR_POSITIONAL else "**" if p.kind == VAR_KEYWORD else ""
    return prefix + p.name + (f"={p.default}" if p.default is not None else "")


def _same(text: Optional[str]) -> Optional[str]:
    return text


@dataclass
class Readers:
    """How each side's annotation and default texts are read before comparing (default: as text)."""
    up_annotation: Callable[[Optional[str]], Optional[str]] = _same
    port_annotation: Callable[[Optional[str]], Optional[str]] = _same
    up_default: Callable[[Optional[str]], Optional[str]] = _same
    port_default: Callable[[Optional[str]], Optional[str]] = _same


def check_signature(site: Site, up: Definition, port: Definition, upstream_ref: str,
                    annotations: bool = True, renames: Optional[Mapping[str, str]] = None,
                    readers: Optional[Readers] = None) -> list[Finding]:
    """Compare two signatures the way mypy's stubtest does: names, order, kinds, defaults; annotations
    that differ only in spelling (``tuple[int]`` / ``Tuple[int]``, ``X | None`` / ``Optional[X]``) agree."""
    if up.params is None or port.params is None:
        return []
    out: list[Finding] = []
    ref = dict(upstream_ref=upstream_ref)
    rd = readers or Readers()
    if renames:
        up = dataclasses.replace(up, params=[dataclasses.replace(p, name=renames.get(p.name, p.name))
                                             for p in up.params])

    def var(params: list[Param], kind: str) -> Optional[Param]:
        return next((p for p in params if p.kind == kind), None)

    up_named = [p for p in up.params if p.kind not in (VAR_POSITIONAL, VAR_KEYWORD)]
    port_named = [p for p in port.params if p.kind not in (VAR_POSITIONAL, VAR_KEYWORD)]
    port_by_name = {p.name: p for p in port_named}
    up_by_name = {p.name: p for p in up_named}
    for p in up_named:
        if p.name not in port_by_name:
            out.append(site.finding("PA201", f"parameter '{p.name}' ({p.kind}) is missing in the port",
                                    param=p.name, **ref))
    for p in port_named:
        if p.name not in up_by_name:
            out.append(site.finding("PA202", f"extra parameter '{p.name}' ({p.kind}) not in upstream",
                                    param=p.name, **ref))
    shared_up = [p.name for p in up_named if p.name in port_by_name]
    shared_port = [p.name for p in port_named if p.name in up_by_name]
    if shared_up != shared_port:
        out.append(site.finding(
            "PA203", f"parameter order differs: upstream ({', '.join(shared_up)}), "
                     f"port ({', '.join(shared_port)})", **ref))
    for kind, label in ((VAR_POSITIONAL, "*args"), (VAR_KEYWORD, "**kwargs")):
        u, q = var(up.params, kind), var(port.params, kind)
        if u and not q:
            out.append(site.finding("PA201", f"upstream accepts {_fmt(u)}, the port does not",
                                    param=label, **ref))
        elif q and not u:
            out.append(site.finding("PA202", f"the port accepts {_fmt(q)}, upstream does not",
                                    param=label, **ref))
        elif u and q and u.name != q.name:
            out.append(site.finding("PA203", f"{label} is named '{q.name}' in the port, "
                                             f"'{u.name}' upstream", param=label, **ref))
    for name in shared_up:
        u, q = up_by_name[name], port_by_name[name]
        if u.kind != q.kind:
            out.append(site.finding("PA204", f"parameter '{name}' is {q.kind} in the port, "
                                             f"{u.kind} upstream", param=name, **ref))
        if (u.default is None) != (q.default is None):
            has = "has" if q.default is not None else "lacks"
            out.append(site.finding("PA205", f"parameter '{name}' {has} a default in the port "
                                             f"(upstream: {u.default if u.default is not None else 'none'})",
                                    param=name, **ref))
        elif u.default is not None and u.default != q.default \
                and rd.up_default(u.default) != rd.port_default(q.default):
            out.append(site.finding("PA206", f"default of '{name}' differs: upstream {_shown(u.default, rd.up_default)}, "
                                             f"port {_shown(q.default, rd.port_default)}", param=name, **ref))
    if annotations:
        for name in shared_up:
            u, q = up_by_name[name], port_by_name[name]
            if not same_annotation(u.annotation, q.annotation) and \
                    rd.up_annotation(_as_typed(u)) != rd.port_annotation(_as_typed(q)):
                out.append(site.finding("PA207", f"annotation of '{name}' differs: upstream "
                                                 f"{u.annotation or '(none)'}, port {q.annotation or '(none)'}", param=name, **ref))
        if not same_annotation(up.returns, port.returns) and \
                rd.up_annotation(up.returns) != rd.port_annotation(port.returns):
            out.append(site.finding("PA207", f"return annotation differs: upstream {up.returns or '(none)'}, "
                                             f"port {port.returns or '(none)'}", param="return", **ref))
    return out


def _as_typed(p: Param) -> Optional[str]:
    """The annotation as a type checker reads it: ``x: T = None`` is ``Optional[T]`` (PEP 484's
    implicit Optional, which fla's signatures rely on)."""
    if p.annotation is not None and p.default == "None":
        return f"Optional[{p.annotation}]"
    return p.annotation


def _shown(text: str, read: Callable[[Optional[str]], Optional[str]]) -> str:
    value = read(text)
    return text if value == text else f"{text} (= {value})"
