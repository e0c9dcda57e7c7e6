"""No simplification: stub bodies, NotImplementedError, constant returns, stand-in returns,
literals, changed class attributes, marker words.

Codes PA401-PA407; anything the upstream definition itself does (a stub, a raise, a marker word in
fla's own text) is not held against the port.
"""

from __future__ import annotations

from typing import Optional

from portaudit.static.checks.site import Site
from portaudit.static.findings import Finding
from portaudit.static.index.model import CALLABLE_KINDS, CLASS_KINDS, CONSTANT, Definition


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
    if port.facts.stand_in is not None and port.facts.constant_return is None and up is not None \
            and up.kind in CALLABLE_KINDS and not up.facts.is_stub and up.facts.stand_in is None \
            and up.facts.constant_return is None:
        out.append(site.finding("PA406", f"{port.name} only returns {port.facts.stand_in} (an argument "
                                         "unchanged or a fresh constant tensor); the upstream computes its result",
                                detail=port.name))
    if up is not None and up.kind in CLASS_KINDS and port.kind in CLASS_KINDS:
        upstream_values = dict(up.facts.class_literals)
        for name, value in port.facts.class_literals:
            if name in upstream_values and upstream_values[name] != value:
                out.append(site.finding("PA407", f"class attribute {port.name}.{name} = {value}; the upstream "
                                                 f"sets {upstream_values[name]}", detail=name))
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
