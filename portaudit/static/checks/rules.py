"""The static rules, as pure functions from indexed definitions to findings.

Each rule family takes what it compares (upstream and port definitions, paths for locations) and
returns a list of :class:`Finding`; nothing here prints, exits or touches the file system.
Codes are documented in :mod:`portaudit.static.findings` and docs/codes.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from portaudit.static.citations import Citation
from portaudit.static.findings import Finding
from portaudit.static.index.tree import (AUTOGRAD, CLASS, CONSTANT, FUNCTION, KERNEL, METHOD, NN_MODULE,
                                         VAR_KEYWORD, VAR_POSITIONAL, Definition, Param)

CLASS_KINDS = (CLASS, NN_MODULE, AUTOGRAD)
CALLABLE_KINDS = (FUNCTION, METHOD, KERNEL)


@dataclass
class Site:
    """Where a port definition lives, for finding locations."""
    symbol: str        # the upstream symbol the finding is about
    file: str
    definition: Optional[Definition] = None

    def finding(self, code: str, message: str, line: Optional[int] = None, **kw) -> Finding:
        d = self.definition
        return Finding(code=code, symbol=self.symbol, message=message, file=self.file,
                       line=line if line is not None else (d.start if d else 1),
                       end_line=d.end if d and line is None else None, **kw)


# -- presence and kind ------------------------------------------------------------------------

def kinds_compatible(upstream: str, port: str) -> bool:
    if upstream == CONSTANT:
        return True            # an alias may be ported as a constant, a function or a class
    if upstream in CLASS_KINDS:
        return port == upstream
    if upstream in (FUNCTION, METHOD):
        return port in (FUNCTION, METHOD)
    if upstream == KERNEL:
        return port in (FUNCTION, KERNEL)
    return upstream == port


def check_kind(site: Site, up: Definition, port: Definition, upstream_ref: str) -> list[Finding]:
    if kinds_compatible(up.kind, port.kind):
        return []
    return [site.finding("PA103", f"upstream {up.name} is a {up.kind}, the port defines a {port.kind}",
                         upstream_ref=upstream_ref)]


def check_methods(site: Site, up: Definition, up_methods: dict[str, Definition],
                  port_methods: dict[str, Definition], upstream_ref: str) -> list[Finding]:
    """Methods defined in the upstream class body must exist on the port class."""
    out = []
    for name in up.methods:
        if name not in port_methods:
            um = up_methods.get(name)
            out.append(site.finding("PA104", f"method {up.name}.{name} is missing on the port class",
                                    upstream_ref=f"{upstream_ref.split(':')[0]}:L{um.start}-L{um.end}"
                                    if um else upstream_ref, param=None, detail=name))
    return out


# -- signatures -------------------------------------------------------------------------------

def _fmt(p: Param) -> str:
    prefix = "*" if p.kind == VAR_POSITIONAL else "**" if p.kind == VAR_KEYWORD else ""
    return prefix + p.name + (f"={p.default}" if p.default is not None else "")


def check_signature(site: Site, up: Definition, port: Definition, upstream_ref: str,
                    annotations: bool = True) -> list[Finding]:
    """Compare two signatures the way mypy's stubtest does: names, order, kinds, defaults."""
    if up.params is None or port.params is None:
        return []
    out: list[Finding] = []
    ref = dict(upstream_ref=upstream_ref)

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
        elif u.default is not None and u.default != q.default:
            out.append(site.finding("PA206", f"default of '{name}' differs: upstream {u.default}, "
                                             f"port {q.default}", param=name, **ref))
    if annotations:
        for name in shared_up:
            u, q = up_by_name[name], port_by_name[name]
            if u.annotation != q.annotation:
                out.append(site.finding("PA207", f"annotation of '{name}' differs: upstream "
                                                 f"{u.annotation or '(none)'}, port {q.annotation or '(none)'}", param=name, **ref))
        if up.returns != port.returns:
            out.append(site.finding("PA207", f"return annotation differs: upstream {up.returns or '(none)'}, "
                                             f"port {port.returns or '(none)'}", param="return", **ref))
    return out


# -- citations --------------------------------------------------------------------------------

@dataclass
class UpstreamFile:
    """What the citation rule needs to know about one upstream file."""
    path: str
    exists: bool
    line_count: int = 0


def check_citations(site: Site, citations: list[Citation], malformed: list[str], label: str,
                    version: Optional[str], target_path: str, target_spans: list[tuple[int, int]],
                    files: dict[str, UpstreamFile], upstream_ref: str) -> list[Finding]:
    """Present, right version, file exists, range inside it, the first covers the target."""
    out = [site.finding("PA306", f"cannot read citation '{m}'; write 'Source: path:Lx-Ly "
                                 f"({label} {version})'", detail=m[:60]) for m in malformed]
    ref = dict(upstream_ref=upstream_ref)
    if not citations:
        where = ("as a '# Source:' comment above it" if site.definition is not None
                 and site.definition.kind == CONSTANT else "to the docstring")
        out.append(site.finding("PA301", f"no citation; add 'Source: {upstream_ref} ({label} {version})' "
                                         f"{where} (or run `portaudit fix-citations --write`)", **ref))
        return out
    for c in citations:
        line = c.line or None
        if c.label != label or (version is not None and c.version != version):
            out.append(site.finding("PA302", f"citation '{c.raw}' names {c.label} {c.version}, the manifest "
                                             f"pins {label} {version}", line=line, detail=c.ref, **ref))
        f = files.get(c.path)
        if f is None or not f.exists:
            out.append(site.finding("PA303", f"cited file {c.path} does not exist in the upstream tree",
                                    line=line, detail=c.ref, **ref))
            continue
        if c.start < 1 or c.end < c.start or c.end > f.line_count:
            out.append(site.finding("PA304", f"citation range L{c.start}-L{c.end} is outside {c.path} "
                                             f"({f.line_count} lines)", line=line, detail=c.ref, **ref))
    same_file = [c for c in citations if c.path == target_path]
    first = citations[0]
    uncovered = [s for s in target_spans if not any(c.start <= s[0] and c.end >= s[1] for c in same_file)]
    if first.path != target_path or uncovered or not any(
            first.start <= s[0] and first.end >= s[1] for s in target_spans[:1]):
        out.append(site.finding("PA305", f"first citation {first.ref} does not cover the upstream "
                                         f"definition {upstream_ref}; run `portaudit fix-citations`",
                                line=first.line or None, **ref))
    return out


# -- no simplification ------------------------------------------------------------------------

def check_simplification(site: Site, up: Optional[Definition], port: Definition,
                         markers: bool = True) -> list[Finding]:
    out = []
    if port.kind in CALLABLE_KINDS + CLASS_KINDS and port.facts.is_stub \
            and not (up is not None and up.facts.is_stub):
        out.append(site.finding("PA401", f"{port.name} has a stub body", detail=port.name))
    if port.facts.not_implemented and not (up is not None and up.facts.not_implemented):
        for ln in port.facts.not_implemented:
            out.append(site.finding("PA402", f"{port.name} raises NotImplementedError (line {ln}); "
                                             "the upstream definition does not", line=ln,
                                    detail=port.name))
    if port.facts.constant_return is not None and up is not None and up.facts.constant_return is None \
            and up.kind in CALLABLE_KINDS and not up.facts.is_stub:
        out.append(site.finding("PA404", f"{port.name} returns the constant {port.facts.constant_return}; "
                                         "the upstream computes its result", detail=port.name))
    if up is not None and up.kind == CONSTANT and port.kind == CONSTANT \
            and port.facts.literal_value is not None and up.facts.literal_value is None:
        out.append(site.finding("PA405", f"{port.name} is the literal {port.facts.literal_value}; the "
                                         "upstream computes it", detail=port.name))
    if markers:
        # a marker the upstream definition itself carries (e.g. fla's own error message) is fla's text
        upstream_words = {w.lower() for _, w in up.facts.markers} if up is not None else set()
        for ln, word in port.facts.markers:
            if word.lower() in upstream_words:
                continue
            out.append(site.finding("PA403", f"marker word '{word}' at line {ln}", line=ln,
                                    detail=word.lower()))
    return out


# -- kernels ----------------------------------------------------------------------------------

def kernel_accounted(kernel_path: str, kernel: Definition, port_citations: Iterable[Citation],
                     same_named: Optional[Definition]) -> Optional[str]:
    """How an upstream kernel is accounted for in the port, or None."""
    if same_named is not None:
        return f"same-named torch function {same_named.name}"
    for c in port_citations:
        if c.covers(kernel_path, kernel.start, kernel.end):
            return f"cited by {c.ref}"
    return None
