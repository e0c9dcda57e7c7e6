"""The three-way checklist: what a maintainer does, in the order they do it.

1. *to do*: the port still has the old version of something upstream changed or removed;
2. *conflict*: both changed the same definition (or lines of it): merge by hand;
3. *missing in port*: the manifest places a symbol where the port defines nothing;
4. *local change*: the port differs and upstream did not change: keep it, or send it upstream;
5. *add*: definitions the new release's closure needs and the port lacks;
6. *manifest*: upstream only moved or renamed a definition the port already matches (the port keeps
   its place; ``--write-manifest`` re-points the entry);
7. *already has it*: upstream changes the port made before the release (nothing to do).

Every item names the port's own module and file (from the port's index and the manifest's
``port.modules``), never a place derived from the upstream's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from portaudit.drift.model import (MOVED, PORT_ALREADY, PORT_CONFLICT, PORT_LOCAL, PORT_MISSING, PORT_SAME,
                                   PORT_TODO, REMOVED, RENAMED, ManifestDrift, SymbolDrift)

SECTIONS = ("to do", "conflict", "missing in port", "local change", "add", "manifest", "already has it")


@dataclass
class ChecklistItem:
    section: str
    manifest: str
    symbol: str                     # the upstream symbol (old name; the new one for additions)
    action: str                     # what to do, naming the port's own module/file
    port_symbol: Optional[str] = None
    port_ref: Optional[str] = None
    upstream_ref: Optional[str] = None   # the new release's definition (or the old one, removed)


def _upstream_what(s: SymbolDrift, to_label: str) -> str:
    if s.status == REMOVED:
        return f"{to_label} removed it"
    parts = []
    if s.status in (MOVED, RENAMED):
        parts.append(f"{s.status} to {s.new_symbol}")
    if s.body_changed:
        parts.append("body changed")
    if s.signature:
        parts.append(f"{len(s.signature)} signature change(s)")
    return ", ".join(parts) or "changed"


def _item(md: ManifestDrift, s: SymbolDrift) -> Optional[ChecklistItem]:
    p = s.port
    if p is None:
        return None
    where = f"`{p.port_symbol}` ({p.port_ref})" if p.port_ref else f"`{p.port_symbol}`"
    new = s.new_symbol or s.symbol
    ref = s.new_ref or s.old_ref
    note = f"; {p.note}" if p.note else ""
    up = _upstream_what(s, md.to_label)
    if p.state == PORT_TODO and s.status == REMOVED:
        action = f"remove {where}: {up}"
        return ChecklistItem("to do", md.manifest, s.symbol, action, p.port_symbol, p.port_ref, s.old_ref)
    if p.state == PORT_TODO:
        action = f"update {where} to {md.to_label}'s `{new}` ({ref}): {up}{note}"
        return ChecklistItem("to do", md.manifest, s.symbol, action, p.port_symbol, p.port_ref, ref)
    if p.state == PORT_CONFLICT:
        action = f"merge by hand: {where} has its own edits and {md.to_label} changed `{new}` ({ref}): {up}{note}"
        return ChecklistItem("conflict", md.manifest, s.symbol, action, p.port_symbol, p.port_ref, ref)
    if p.state == PORT_MISSING:
        action = f"the manifest places `{s.symbol}` at `{p.port_symbol}` (module {p.port_module}), which the " \
                 "port does not define: fix the entry's `port:` or port it"
        return ChecklistItem("missing in port", md.manifest, s.symbol, action, p.port_symbol, None, ref)
    if p.state == PORT_LOCAL:
        action = f"keep or send upstream: {where} differs from `{s.symbol}`, which {md.to_label} did not change{note}"
        return ChecklistItem("local change", md.manifest, s.symbol, action, p.port_symbol, p.port_ref, ref)
    if p.state == PORT_SAME and s.status in (MOVED, RENAMED):
        action = f"re-point the manifest entry to `{new}` (`--write-manifest` does it); the port keeps {where}"
        return ChecklistItem("manifest", md.manifest, s.symbol, action, p.port_symbol, p.port_ref, ref)
    if p.state == PORT_ALREADY and s.status == REMOVED:
        action = f"nothing: the port does not define `{p.port_symbol}` either ({up}){note}"
        return ChecklistItem("already has it", md.manifest, s.symbol, action, p.port_symbol, None, s.old_ref)
    if p.state == PORT_ALREADY:
        action = f"nothing: {where} already has {md.to_label}'s change ({up}){note}"
        return ChecklistItem("already has it", md.manifest, s.symbol, action, p.port_symbol, p.port_ref, ref)
    return None


def _port_home(md: ManifestDrift, manifest, module: str, reached_from: Optional[str], port_index) -> str:
    """The port module a new upstream definition belongs in: where ``port.modules`` maps its module
    when the port has that module, else the port module of the symbol that reaches it."""
    mapped = manifest.port_name_for(module + ".x").rsplit(".", 1)[0] if manifest is not None else module
    if port_index is not None and port_index.has_module(mapped):
        return mapped
    if reached_from:
        for s in md.symbols:
            if s.port is not None and (s.new_symbol == reached_from or s.symbol == reached_from
                                       or reached_from.startswith((s.new_symbol or s.symbol) + ".")):
                return s.port.port_module or mapped
    return mapped


def checklist(run) -> list[ChecklistItem]:
    """The ordered checklist of a :class:`~portaudit.drift.engine.DriftRun` (three-way states needed)."""
    items: list[ChecklistItem] = []
    for md in run.manifests:
        if not any(s.port is not None for s in md.symbols):
            continue
        manifest = run.sources.get(md.manifest)
        port_index = run.port_indexes.get(md.manifest)
        for s in md.symbols + md.removed_helpers:
            it = _item(md, s)
            if it is not None:
                items.append(it)
        for n in md.new_symbols:
            home = _port_home(md, manifest, n.module, n.reached_from, port_index)
            info = port_index.module(home) if port_index is not None else None
            file = f" ({port_index.relpath(info.path)})" if info is not None else " (a new module)"
            name = n.symbol.rsplit(".", 1)[1]
            reached = f", reached from `{n.reached_from}`" if n.reached_from else ""
            items.append(ChecklistItem("add", md.manifest, n.symbol,
                                       f"add `{name}` ({n.kind}, {n.ref}{reached}) to `{home}`{file}",
                                       f"{home}.{name}", None, n.ref))
    order = {s: i for i, s in enumerate(SECTIONS)}
    return sorted(items, key=lambda it: order[it.section])
