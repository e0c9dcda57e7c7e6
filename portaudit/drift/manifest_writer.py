"""``--write-manifest``: the manifest re-targeted at the new release, edited in place.

The original text is edited, not regenerated, so its comments, order, quoting and layout stay:
the ``upstream:`` keys name the new release; moved and renamed entries get their new symbol (with
a comment naming the old one); removed ones, and ones the new release's closure of the entry
points no longer reaches, are commented out (the new manifest is that closure, so running drift
against it again reports nothing); symbols new in the closure are appended to the stage that holds
their module's neighbours (or to a new stage); waivers, deviations and entry points follow their
symbols, and those whose symbol left the manifest are commented out.

``port.modules`` keys are rewritten with the entries: every kept entry must name the same port
definition as before (the port did not move because upstream did). A key whose entries all moved
to one new module is renamed in place; a destination module that needs its own mapping gets a
key after it; an entry whose short name changed upstream (a rename) or whose module's entries
went to different port modules gets an explicit ``port:``. Relative paths (``port.path``, a
``numerics.implementation`` file) are rewritten relative to the new file's folder.
The text is validated with the manifest loader, as the new file, before it is written atomically;
the original file is never touched.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Optional

from portaudit.drift.model import MOVED, NOT_IN_FROM, REMOVED, RENAMED, ManifestDrift
from portaudit.errors import UsageError
from portaudit.safe_io import final_target, same_file, write_file
from portaudit.static.manifest import Manifest, load_manifest
from portaudit.static.yaml_loader import parse_yaml
import yaml


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


def port_name(symbol: str, modules: dict[str, str], package: str, port_package: str) -> str:
    """Where a manifest with these ``port.modules`` places ``symbol`` (Manifest.port_name_for)."""
    best = ""
    for up_mod in modules:
        if (symbol == up_mod or symbol.startswith(up_mod + ".")) and len(up_mod) > len(best):
            best = up_mod
    if best:
        return modules[best] + symbol[len(best):]
    if symbol == package or symbol.startswith(package + "."):
        return port_package + symbol[len(package):]
    return symbol


# ---------------------------------------------------------------------------------------------
# text edits on the original YAML

class _Edits:
    """Edits of one text by character index; insertions at one index keep their order."""

    def __init__(self, text: str):
        self.text = text
        self.starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                self.starts.append(i + 1)
        self.items: list[tuple[int, int, int, str]] = []

    def line_start(self, line: int) -> int:          # 0-based line
        return self.starts[line] if line < len(self.starts) else len(self.text)

    def line_text(self, line: int) -> str:
        end = self.line_start(line + 1)
        return self.text[self.line_start(line):end].rstrip("\n")

    def replace(self, node, text: str) -> None:
        self.items.append((node.start_mark.index, node.end_mark.index, len(self.items), text))

    def insert_after_line(self, line: int, lines: list[str]) -> None:
        at = self.line_start(line + 1)
        prefix = "" if at == 0 or self.text[at - 1:at] == "\n" else "\n"
        self.items.append((at, at, len(self.items), prefix + "".join(x + "\n" for x in lines)))

    def insert_before_line(self, line: int, lines: list[str]) -> None:
        at = self.line_start(line)
        self.items.append((at, at, len(self.items), "".join(x + "\n" for x in lines)))

    def comment_out(self, first: int, last: int, why: str) -> None:
        indent = len(self.line_text(first)) - len(self.line_text(first).lstrip())
        self.insert_before_line(first, [" " * indent + f"# {why}"])
        for ln in range(first, last + 1):
            t = self.line_text(ln)
            col = len(t) - len(t.lstrip())
            at = self.line_start(ln) + col
            if t.strip():
                self.items.append((at, at, len(self.items), "# "))

    def apply(self) -> str:
        out = self.text
        for start, end, _, text in sorted(self.items, key=lambda t: (t[0], t[2]), reverse=True):
            out = out[:start] + text + out[end:]
        return out


def _get(node, key: str):
    """(key node, value node) of a mapping node's key, or (None, None)."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    return None, None


def _last_line(node) -> int:
    """The last line a node's own text occupies (block nodes end where the next token starts)."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False):
        end = node.end_mark
        return end.line if end.column > 0 or end.line == node.start_mark.line else end.line - 1
    last = node.start_mark.line
    kids = node.value if isinstance(node, yaml.SequenceNode) else [x for kv in node.value for x in kv]
    for k in kids:
        last = max(last, _last_line(k))
    return last


def _flow(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def plan_port_modules(manifest: Manifest, md: ManifestDrift, kept: dict[str, str], new_index,
                      port_index) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(new ``port.modules``, keys renamed in place old -> new, entries that need an explicit
    ``port:``) so that every kept entry (old symbol -> new symbol in ``kept``) names the same port
    definition as before."""
    up_pkg, port_pkg = manifest.upstream.package, manifest.port.package
    entries = {e.symbol: e for e in manifest.entries}
    wanted: dict[str, Counter] = {}
    targets: dict[str, tuple[str, str]] = {}      # old symbol -> (port symbol, new symbol)
    for old_sym, new_sym in kept.items():
        e = entries[old_sym]
        if e.port:
            continue
        psym = manifest.port_symbol(e)
        targets[old_sym] = (psym, new_sym)
        if new_sym == old_sym:
            continue
        mod, rest = new_index.split_symbol(new_sym) if new_index is not None else (None, [])
        if mod is None:
            mod, rest = new_sym.rsplit(".", 1)[0], [new_sym.rsplit(".", 1)[1]]
        tail = "." + ".".join(rest)
        if psym.endswith(tail):
            wanted.setdefault(mod, Counter())[psym[:-len(tail)]] += 1
    modules = dict(manifest.port.modules)
    renamed: dict[str, str] = {}
    for mod, counter in wanted.items():
        best = counter.most_common(1)[0][0]
        if port_name(mod + ".x", modules, up_pkg, port_pkg) == best + ".x":
            continue
        # a key whose entries all left for this module is renamed in place
        stale = [k for k, v in manifest.port.modules.items() if v == best and k not in renamed
                 and not any(n.startswith(k + ".") and port_name(n, modules, up_pkg, port_pkg) == p
                             for p, n in targets.values())]
        if stale and mod not in modules:
            k = stale[0]
            renamed[k] = mod
            modules = {(mod if key == k else key): v for key, v in modules.items()}
        elif mod not in modules:      # an existing key may serve other entries: never re-aim it
            modules[mod] = best
    explicit = {old: p for old, (p, n) in targets.items() if port_name(n, modules, up_pkg, port_pkg) != p}
    return modules, renamed, explicit


def render_updated_manifest(manifest: Manifest, md: ManifestDrift, distributions: list[str],
                            version: Optional[str], to_label: str, upstream_keys: Optional[dict] = None,
                            target_dir: Optional[Path] = None, new_index=None, port_index=None) -> str:
    """The updated manifest's text (the original edited), to be saved in ``target_dir`` (default:
    beside the original). ``upstream_keys``: what names the new release besides ``distributions``
    (``path``, ``archive``, or ``git`` and ``rev``)."""
    from portaudit.static.source import read_source

    upstream_keys = dict(upstream_keys or {})
    old_dir = manifest.path.parent
    new_dir = Path(target_dir) if target_dir is not None else old_dir
    text = read_source(manifest.path).text
    root = parse_yaml(text, str(manifest.path)).node
    ed = _Edits(text)
    by_symbol = {s.symbol: s for s in md.symbols}
    mapping = {s.symbol: s.new_symbol for s in md.symbols
               if s.new_symbol and s.new_symbol != s.symbol and s.status in (MOVED, RENAMED)}

    # which entries stay, under which symbol
    kept: dict[str, str] = {}
    fate: dict[str, tuple[str, str]] = {}          # old symbol -> (what, comment)
    written: set[str] = set()
    for e in manifest.entries:
        s = by_symbol.get(e.symbol)
        if s is None or s.status == NOT_IN_FROM:
            kept[e.symbol] = e.symbol
            written.add(e.symbol)
            continue
        if s.status == REMOVED:
            fate[e.symbol] = ("drop", f"removed in {to_label}: {e.symbol}")
            continue
        new = s.new_symbol or e.symbol
        if new in written:
            fate[e.symbol] = ("drop", f"{e.symbol} is now {new}, listed above")
            continue
        if s.reached is False:
            fate[e.symbol] = ("drop", f"no longer reached from the entry points in {to_label}: {new}")
            continue
        written.add(new)
        kept[e.symbol] = new
        if s.status == MOVED:
            fate[e.symbol] = ("keep", f"moved from {e.symbol}")
        elif s.status == RENAMED:
            guess = f" (a guess, similarity {s.score:.2f})" if s.score is not None else ""
            fate[e.symbol] = ("keep", f"renamed from {e.symbol}{guess}")
    modules, renamed_keys, explicit = plan_port_modules(manifest, md, kept, new_index, port_index)

    ed.insert_before_line(0, [f"# Updated by `portaudit drift` for {to_label} from {manifest.path.name} "
                              f"({md.from_label}).",
                              "# Review the moved/renamed comments, the dropped symbols and the new ones before use."])
    # upstream: the keys that name the new release
    _, up = _get(root, "upstream")
    new_keys: dict[str, object] = {}
    if distributions:
        new_keys["distributions"] = list(distributions)
    new_keys.update(upstream_keys)
    if not new_keys:          # the manifest's own upstream is the new side: nothing to rename
        new_keys = None
    if new_keys is not None:
        sources = ("distributions", "path", "git", "rev", "archive")
        pkg_key, _ = _get(up, "package")
        indent = " " * pkg_key.start_mark.column
        for key in sources:
            k, v = _get(up, key)
            if key in new_keys:
                value = new_keys[key]
                rendered = _flow(value) if isinstance(value, list) else _q(str(value))
                if k is not None:
                    if key in ("path", "git", "archive") and isinstance(v, yaml.ScalarNode) and \
                            os.path.realpath(old_dir / v.value) == os.path.realpath(str(value)):
                        if _rebase(v.value, old_dir, new_dir) != v.value:
                            ed.replace(v, _q(_rebase(v.value, old_dir, new_dir)))
                        continue
                    if isinstance(v, yaml.ScalarNode) or getattr(v, "flow_style", False):
                        ed.replace(v, rendered)
                    else:       # a block sequence: comment it out, write the new value after it
                        ed.comment_out(k.start_mark.line, _last_line(v), f"{key} for {md.from_label}:")
                        ed.insert_after_line(_last_line(v), [f"{indent}{key}: {rendered}"])
                else:
                    ed.insert_after_line(pkg_key.start_mark.line, [f"{indent}{key}: {rendered}"])
            elif k is not None:
                ed.comment_out(k.start_mark.line, _last_line(v), f"{key} named {md.from_label}:")
        vk, vv = _get(up, "version")
        if vv is not None and version and vv.value != version:
            ed.replace(vv, _q(version))
    elif new_dir != old_dir:
        for key in ("path", "git", "archive"):
            _, v = _get(up, key)
            if isinstance(v, yaml.ScalarNode) and _rebase(v.value, old_dir, new_dir) != v.value:
                ed.replace(v, _q(_rebase(v.value, old_dir, new_dir)))

    # port: its relative path, and the modules keys that follow the entries
    _, port = _get(root, "port")
    _, ppath = _get(port, "path")
    if isinstance(ppath, yaml.ScalarNode) and _rebase(ppath.value, old_dir, new_dir) != ppath.value:
        ed.replace(ppath, _q(_rebase(ppath.value, old_dir, new_dir)))
    _, mods = _get(port, "modules")
    added = [k for k in modules if k not in manifest.port.modules and k not in renamed_keys.values()]
    if isinstance(mods, yaml.MappingNode):
        for k, v in mods.value:
            if k.value in renamed_keys:
                ed.replace(k, _q(renamed_keys[k.value]))
                ed.insert_before_line(k.start_mark.line, [" " * k.start_mark.column +
                                                         f"# was {k.value} in {md.from_label}"])
        if added and not mods.flow_style and mods.value:
            last_k = mods.value[-1][0]
            ed.insert_after_line(_last_line(mods), [" " * last_k.start_mark.column + "# new in " + to_label] +
                                 [" " * last_k.start_mark.column + f"{_q(k)}: {_q(modules[k])}" for k in added])
        elif added:
            ed.replace(mods, "{" + ", ".join(f"{_q(k)}: {_q(v)}" for k, v in modules.items()) + "}")
    elif added:
        pkg_key, _ = _get(port, "package")
        indent = " " * pkg_key.start_mark.column
        ed.insert_after_line(pkg_key.start_mark.line, [f"{indent}modules:"] +
                             [f"{indent}  {_q(k)}: {_q(modules[k])}" for k in added])

    # entry points and numerics paths
    _, eps = _get(root, "entry_points")
    if isinstance(eps, yaml.SequenceNode):
        for v in eps.value:
            if isinstance(v, yaml.ScalarNode) and _repoint(v.value, mapping) != v.value:
                ed.replace(v, _q(_repoint(v.value, mapping)))
    _, num = _get(root, "numerics")
    _, impl = _get(num, "implementation")
    if isinstance(impl, yaml.ScalarNode) and _rebase(impl.value, old_dir, new_dir) != impl.value:
        ed.replace(impl, _q(_rebase(impl.value, old_dir, new_dir)))

    # stages
    new_by_stage: dict[Optional[str], list] = {}
    for n in md.new_symbols:
        if n.symbol not in written:
            new_by_stage.setdefault(n.stage, []).append(n)
    _, stages = _get(root, "stages")
    stage_ids = []
    for st_node in (stages.value if isinstance(stages, yaml.SequenceNode) else []):
        _, sid = _get(st_node, "id")
        _, syms = _get(st_node, "symbols")
        stage_ids.append(sid.value if sid is not None else "")
        items = syms.value if isinstance(syms, yaml.SequenceNode) else []
        for item in items:
            sym_node = item if isinstance(item, yaml.ScalarNode) else _get(item, "symbol")[1]
            if sym_node is None:
                continue
            old_sym = sym_node.value
            what, comment = fate.get(old_sym, ("keep", ""))
            if what == "drop":
                ed.comment_out(item.start_mark.line, _last_line(item), comment)
                continue
            new_sym = kept.get(old_sym, old_sym)
            if comment:
                line = ed.line_text(item.start_mark.line)
                ed.insert_before_line(item.start_mark.line, [line[:len(line) - len(line.lstrip())] + f"# {comment}"])
            port = explicit.get(old_sym)
            if isinstance(item, yaml.ScalarNode):
                if port is not None:
                    ed.replace(item, "{" + f"symbol: {_q(new_sym)}, port: {_q(port)}" + "}")
                elif new_sym != old_sym:
                    ed.replace(item, _q(new_sym))
                continue
            if new_sym != old_sym:
                ed.replace(sym_node, _q(new_sym))
            if port is not None and _get(item, "port")[1] is None:
                if item.flow_style:
                    ed.items.append((sym_node.end_mark.index, sym_node.end_mark.index, len(ed.items),
                                     f", port: {_q(port)}"))
                else:
                    key, _ = _get(item, "symbol")
                    ed.insert_after_line(sym_node.end_mark.line,
                                         [" " * key.start_mark.column + f"port: {_q(port)}"])
        fresh = new_by_stage.get(stage_ids[-1], [])
        if fresh:
            lines = [f"{n.symbol}" if n.kind != "kernel" else f"{{symbol: {_q(n.symbol)}, kind: kernel}}"
                     for n in fresh]
            if isinstance(syms, yaml.SequenceNode) and syms.value and not syms.flow_style:
                col = syms.value[0].start_mark.column
                indent = " " * max(col - 2, 0)
                ed.insert_after_line(_last_line(syms), [f"{indent}# new in {to_label}"] +
                                     [f"{indent}- {_q(n.symbol) if n.kind != 'kernel' else x}"
                                      for n, x in zip(fresh, lines)])
            elif syms is not None:
                old = [i.value for i in syms.value if isinstance(i, yaml.ScalarNode)] if syms.value else []
                if syms.value and len(old) != len(syms.value):
                    raise UsageError(f"{manifest.path}: stage {stage_ids[-1]}: cannot append to a flow list of "
                                     "mappings; write its symbols as a block list")
                ed.replace(syms, "[" + ", ".join([_q(x) for x in old] +
                                                 [_q(n.symbol) if n.kind != "kernel" else x
                                                  for n, x in zip(fresh, lines)]) + "]")
    rest = new_by_stage.get(None, [])
    if rest and isinstance(stages, yaml.SequenceNode) and stages.value:
        sid, k = "new", 1
        while sid in stage_ids:
            k += 1
            sid = f"new{k}"
        col = stages.value[0].start_mark.column
        ind = " " * max(col - 2, 0)
        lines = [f"{ind}- id: {_q(sid)}", f"{ind}  title: {_q('new in ' + to_label)}", f"{ind}  symbols:"]
        module = None
        for n in rest:
            if n.module != module:
                lines.append(f"{ind}    # {n.module}")
                module = n.module
            lines.append(f"{ind}    - " + (_q(n.symbol) if n.kind != "kernel"
                                           else f"{{symbol: {_q(n.symbol)}, kind: kernel}}"))
        ed.insert_after_line(_last_line(stages), lines)

    # waivers and deviations follow their symbols
    live = set(kept.values())

    def listed(symbol: str) -> bool:
        return "*" in symbol or any(symbol == k or symbol.startswith(k + ".") or k.startswith(symbol + ".")
                                    for k in live)
    for key in ("waivers", "deviations"):
        _, seq = _get(root, key)
        for item in (seq.value if isinstance(seq, yaml.SequenceNode) else []):
            _, sym = _get(item, "symbol")
            if not isinstance(sym, yaml.ScalarNode):
                continue
            new_sym = _repoint(sym.value, mapping)
            if not listed(new_sym):
                ed.comment_out(item.start_mark.line, _last_line(item), "its symbol left the manifest:")
            elif new_sym != sym.value:
                ed.replace(sym, _q(new_sym))
    return ed.apply()


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
