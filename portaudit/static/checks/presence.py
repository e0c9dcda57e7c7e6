"""Presence and kind: the port defines the symbol, as the same kind, with the upstream class's methods.

A ``@triton.jit`` kernel is present when a port citation covers its lines or a same-named torch
function exists (:func:`kernel_accounted`). Codes PA103-PA105 (PA101/PA102, a missing module or
symbol, are decided by the runner, which knows where the port was expected). PA106: a port class's
kind could not be resolved because a base lies outside the trees (:mod:`portaudit.static.kinds`).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from portaudit.static.checks.site import Site
from portaudit.static.citations import Citation
from portaudit.static.findings import Finding
from portaudit.static.index.model import CLASS, CLASS_KINDS, CONSTANT, FUNCTION, KERNEL, METHOD, Definition


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


def check_kind(site: Site, up: Definition, port: Definition, upstream_ref: str,
               up_kind: Optional[str] = None, port_kind: Optional[str] = None,
               unresolved: Sequence[str] = ()) -> list[Finding]:
    """PA103 on a kind mismatch; PA106 instead when the port class's bases leave the trees (its kind
    is then unknown, not wrong). ``up_kind``/``port_kind``: kinds resolved through base classes."""
    up_kind = up_kind or up.kind
    port_kind = port_kind or port.kind
    if kinds_compatible(up_kind, port_kind):
        return []
    if unresolved and port_kind == CLASS:
        return [site.finding("PA106", f"upstream {up.name} is a {up_kind}; the port class derives from "
                                      f"{', '.join(unresolved)}, defined outside the trees, so its kind is "
                                      "unresolved", upstream_ref=upstream_ref, detail=unresolved[0].split(" ")[0])]
    return [site.finding("PA103", f"upstream {up.name} is a {up_kind}, the port defines a {port_kind}",
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


def kernel_accounted(kernel_path: str, kernel: Definition, port_citations: Iterable[Citation],
                     same_named: Optional[Definition]) -> Optional[str]:
    """How an upstream kernel is accounted for in the port, or None."""
    if same_named is not None:
        what = "kernel" if same_named.kind == KERNEL else "torch function"
        return f"same-named {what} {same_named.name}"
    for c in port_citations:
        if c.covers(kernel_path, kernel.start, kernel.end):
            return f"cited by {c.ref}"
    return None


def manifest_port_citations(manifest, entries: Iterable, port) -> list[Citation]:
    """Every citation in the port modules the manifest places ``entries`` in: a kernel a translation
    re-expresses may be cited from any of them (see :func:`kernel_accounted`)."""
    modules: dict = {}
    for entry in entries:
        for psym in manifest.port_symbols(entry):
            mod, _ = port.split_symbol(psym)
            if mod is not None and mod not in modules:
                modules[mod] = port.module(mod)
    return [c for m in modules.values() if m is not None for d in m.definitions.values() for c in d.citations]
