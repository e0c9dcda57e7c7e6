"""``--write-manifest``: the manifest re-targeted at the new release.

Moved and renamed symbols are re-pointed (with a comment naming the old symbol); removed ones, and
ones the new release's closure of the entry points no longer reaches, are dropped and left as a
comment (the new manifest is that closure, so running drift against it again reports nothing);
symbols new in the closure are appended to the stage that holds their module's neighbours (or to a
new stage); waivers and deviations follow their symbols, and those whose symbol left the manifest
are kept as comments. Entry points (re-pointed) and the ``numerics`` section are carried over;
relative paths (``port.path``, a ``numerics.implementation`` file) are rewritten
relative to the new file's folder so they still name the same place.
The text is validated with the manifest loader, as the new file, before it is written atomically;
the original file is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import yaml

from portaudit.drift.model import MOVED, NOT_IN_FROM, REMOVED, RENAMED, ManifestDrift
from portaudit.errors import UsageError
from portaudit.safe_io import final_target, same_file, write_file
from portaudit.static.manifest import Manifest, load_manifest


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)   # a JSON string is a valid YAML double-quoted scalar


def _rebase(path: str, old_dir: Path, new_dir: Path) -> str:
    """A path written relative to ``old_dir``, rewritten to name the same place from ``new_dir``."""
    if os.path.isabs(path):
        return path
    return os.path.relpath(os.path.abspath(old_dir / path), os.path.abspath(new_dir))


def _repoint(symbol: str, mapping: dict[str, str]) -> str:
    best = ""
    for old in mapping:
        if (symbol == old or symbol.startswith(old + ".")) and len(old) > len(best):
            best = old
    return mapping[best] + symbol[len(best):] if best else symbol


def render_updated_manifest(manifest: Manifest, md: ManifestDrift, distributions: list[str],
                            version: Optional[str], to_label: str, upstream_path: Optional[str] = None,
                            target_dir: Optional[Path] = None) -> str:
    """The updated manifest's text, to be saved in ``target_dir`` (default: beside the original)."""
    old_dir = manifest.path.parent
    new_dir = Path(target_dir) if target_dir is not None else old_dir
    by_symbol = {s.symbol: s for s in md.symbols}
    mapping = {s.symbol: s.new_symbol for s in md.symbols
               if s.new_symbol and s.new_symbol != s.symbol and s.status in (MOVED, RENAMED)}
    new_by_stage: dict[Optional[str], list] = {}
    for n in md.new_symbols:
        new_by_stage.setdefault(n.stage, []).append(n)
    lines = [f"# Updated by `portaudit drift` for {to_label} from {manifest.path.name} ({md.from_label}).",
             "# Review the moved/renamed comments, the dropped symbols and the new ones before use.",
             f"name: {_q(manifest.name)}"]
    if manifest.description:
        lines.append(f"description: {_q(manifest.description)}")
    up = manifest.upstream
    lines += ["upstream:", f"  package: {_q(up.package)}"]
    if distributions:
        lines.append(f"  distributions: [{', '.join(_q(d) for d in distributions)}]")
    if up.version or (version and not distributions):
        lines.append(f"  version: {_q(version or up.version)}")
    if up.label:
        lines.append(f"  label: {_q(up.label)}")
    if upstream_path:
        lines.append(f"  path: {_q(upstream_path)}")
    lines += ["port:", f"  package: {_q(manifest.port.package)}"]
    if manifest.port.path:
        lines.append(f"  path: {_q(_rebase(manifest.port.path, old_dir, new_dir))}")
    if manifest.port.modules:
        lines.append("  modules:")
        lines += [f"    {_q(_repoint(k, mapping))}: {_q(v)}" for k, v in manifest.port.modules.items()]
    if manifest.entry_points:
        lines.append("entry_points:")
        lines += [f"  - {_q(_repoint(e, mapping))}" for e in manifest.entry_points]
    if manifest.numerics:
        numerics = dict(manifest.numerics)
        if isinstance(numerics.get("implementation"), str):
            numerics["implementation"] = _rebase(numerics["implementation"], old_dir, new_dir)
        # PyYAML's own dump: a float such as 1e-05 must come back a float (YAML 1.1 wants 1.0e-05)
        lines += yaml.safe_dump({"numerics": numerics}, default_flow_style=False, sort_keys=False,
                                allow_unicode=True, width=1 << 16).rstrip("\n").split("\n")
    lines.append("stages:")
    written: set[str] = set()

    def entry_line(symbol: str, kind: Optional[str], port: Optional[str], note: Optional[str]) -> str:
        fields = [f"symbol: {_q(symbol)}"]
        if kind:
            fields.append(f"kind: {_q(kind)}")
        if port:
            fields.append(f"port: {_q(port)}")
        if note:
            fields.append(f"note: {_q(note)}")
        return f"      - {_q(symbol)}" if len(fields) == 1 else "      - {" + ", ".join(fields) + "}"

    for st in manifest.stages:
        lines += [f"  - id: {_q(st.id)}", f"    title: {_q(st.title)}", "    symbols:"]
        head = len(lines) - 1
        count = 0
        for e in st.entries:
            s = by_symbol.get(e.symbol)
            if s is None or s.status == NOT_IN_FROM:
                lines.append(entry_line(e.symbol, e.kind, e.port, e.note))
                count += 1
                continue
            if s.status == REMOVED:
                lines.append(f"      # removed in {to_label}: {e.symbol}")
                continue
            new = s.new_symbol or e.symbol
            if new in written:
                lines.append(f"      # {e.symbol} is now {new}, listed above")
                continue
            written.add(new)
            if s.status == MOVED:
                lines.append(f"      # moved from {e.symbol}")
            elif s.status == RENAMED:
                guess = f" (a guess, similarity {s.score:.2f})" if s.score is not None else ""
                lines.append(f"      # renamed from {e.symbol}{guess}")
            if s.reached is False:
                lines.append(f"      # no longer reached from the entry points in {to_label}: {new}")
                continue
            kind = "kernel" if s.kind == "kernel" or e.kind == "kernel" else e.kind
            lines.append(entry_line(new, kind, e.port, e.note))
            count += 1
        fresh = [n for n in new_by_stage.get(st.id, []) if n.symbol not in written]
        if fresh:
            lines.append(f"      # new in {to_label}")
        for n in fresh:
            written.add(n.symbol)
            lines.append(entry_line(n.symbol, "kernel" if n.kind == "kernel" else None, None, None))
            count += 1
        if count == 0:
            lines[head] = "    symbols: []"
    rest = [n for n in new_by_stage.get(None, []) if n.symbol not in written]
    if rest:
        ids = {st.id for st in manifest.stages}
        sid, k = "new", 1
        while sid in ids:
            k += 1
            sid = f"new{k}"
        lines += [f"  - id: {_q(sid)}", f"    title: {_q('new in ' + to_label)}", "    symbols:"]
        module = None
        for n in rest:
            if n.module != module:
                lines.append(f"      # {n.module}")
                module = n.module
            lines.append(entry_line(n.symbol, "kernel" if n.kind == "kernel" else None, None, None))
    kept = written | {e.symbol for e in manifest.entries
                      if by_symbol.get(e.symbol) is None or by_symbol[e.symbol].status == NOT_IN_FROM}

    def listed(symbol: str) -> bool:
        return any(symbol == k or symbol.startswith(k + ".") or k.startswith(symbol + ".") for k in kept) \
            or "*" in symbol

    waivers = [(f"{{symbol: {_q(_repoint(w.symbol, mapping))}, code: {_q(w.code)}, reason: {_q(w.reason)}}}",
                listed(_repoint(w.symbol, mapping))) for w in manifest.waivers]
    deviations = []
    for d in manifest.deviations:
        extra = f", fixed_upstream_in: {_q(d.fixed_upstream_in)}" if d.fixed_upstream_in else ""
        sym = _repoint(d.symbol, mapping)
        deviations.append((f"{{symbol: {_q(sym)}, reason: {_q(d.reason)}{extra}}}", listed(sym)))
    for key, items in (("waivers", waivers), ("deviations", deviations)):
        live = [t for t, ok in items if ok]
        lines.append(f"{key}:" if live else f"{key}: []")
        lines += [f"  - {t}" for t in live]
        lines += [f"  # its symbol left the manifest: - {t}" for t, ok in items if not ok]
    return "\n".join(lines) + "\n"


def write_updated_manifest(text: str, target: Path, original: Path) -> Path:
    """Validate ``text`` as the manifest ``target`` and write it (safe_io: atomically, through a
    link, never onto a non-regular file); never onto the original."""
    target = Path(target)
    if same_file(target, original) or final_target(target) == final_target(original):
        raise UsageError(f"--write-manifest {target} is the manifest being compared; write the updated "
                         "manifest to a new file")
    load_manifest(target, text=text)   # the written manifest must load where it will live
    write_file(target, text, what="updated manifest")
    return target
