"""Drift reports: rich tables per stage, JSON, and a markdown upgrade checklist."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from portaudit.drift.checklist import SECTIONS, checklist
from portaudit.drift.engine import DriftRun
from portaudit.drift.model import (BODY_CHANGED, CITE_CHANGED, CITE_RELOCATED, CITE_UNKNOWN, MOVED,
                                   NOT_IN_FROM, PARAM_MOVED, PORT_ALREADY, PORT_CONFLICT, PORT_LOCAL,
                                   PORT_MISSING, PORT_STATES, PORT_TODO, REMOVED, RENAMED, UNCHANGED,
                                   ManifestDrift, SignatureChange, SymbolDrift)

STYLE = {REMOVED: "red", RENAMED: "magenta", MOVED: "yellow", BODY_CHANGED: "cyan", UNCHANGED: "green",
         NOT_IN_FROM: "red"}


def signature_lines(changes: Iterable[SignatureChange]) -> list[str]:
    """One line per change, with the positional shifts of a member folded into one line."""
    out: list[str] = []
    moved: "OrderedDict[str, list[str]]" = OrderedDict()
    for c in changes:
        if c.kind == PARAM_MOVED:
            moved.setdefault(c.member, []).append(c.param or "")
            continue
        out.append(("! " if c.breaking else "") + c.describe())
    for member, names in moved.items():
        where = f"{member}: " if member else ""
        out.append(f"! {where}{PARAM_MOVED} (position shifted): {', '.join(names)}")
    return out


def _what(s: SymbolDrift) -> str:
    if s.status == REMOVED:
        return "no definition of this name in the new release"
    parts = []
    if s.status == RENAMED:
        parts.append(f"guess, score {s.score:.2f}" if s.score is not None else "alias of a renamed definition")
    if s.status in (MOVED, RENAMED) and s.body_changed:
        parts.append("body changed")
    if s.reached is False:
        parts.append("no longer reached from the entry points")
    if s.note:
        parts.append(s.note)
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# rich

def print_run(run: DriftRun, console: Console, verbose: bool = False) -> None:
    for md in run.manifests:
        _print_manifest(md, run, console, verbose)
    _print_citations(run, console, verbose)
    _print_checklist(run, console, verbose)
    _print_summary(run, console)


PORT_STYLE = {PORT_TODO: "red", PORT_CONFLICT: "magenta", PORT_LOCAL: "yellow", PORT_MISSING: "red",
              PORT_ALREADY: "green", "add": "cyan", "manifest": "blue"}


def _print_checklist(run: DriftRun, console: Console, verbose: bool) -> None:
    if not run.three_way:
        return
    items = [it for it in checklist(run) if verbose or it.section != "already has it"]
    done = sum(1 for it in checklist(run) if it.section == "already has it")
    table = Table(title=f"Port checklist (three-way: {run.from_label} -> {run.to_label} against the port), "
                        "in the order to work through it", title_justify="left", header_style="bold",
                  pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("state", no_wrap=True)
    table.add_column("symbol", overflow="fold")
    table.add_column("what to do", overflow="fold")
    for i, it in enumerate(items, 1):
        table.add_row(str(i), Text(it.section, style=PORT_STYLE.get(it.section, "")), it.symbol, it.action)
    if done and not verbose:
        table.caption = f"{done} upstream change(s) the port already has not shown (-v lists them)"
    console.print(table)


def _print_manifest(md: ManifestDrift, run: DriftRun, console: Console, verbose: bool) -> None:
    src = run.sources.get(md.manifest)
    titles = {st.id: st.title for st in src.stages} if src else {}
    console.rule(f"[bold]{md.manifest}[/]: {md.from_label} -> {md.to_label}")
    console.print(f"entry points: {', '.join(md.entry_points)}  ·  closure {md.old_closure_size} -> "
                  f"{md.new_closure_size} symbols", markup=False)
    stages: "OrderedDict[str, list[SymbolDrift]]" = OrderedDict()
    for s in md.symbols:
        stages.setdefault(s.stage, []).append(s)
    for sid, syms in stages.items():
        shown = [s for s in syms if verbose or s.changed]
        quiet = len(syms) - len(shown)
        if not shown:
            console.print(f"Stage {sid} {titles.get(sid, '')}: {quiet} symbol(s), all unchanged", markup=False)
            continue
        table = Table(title=f"Stage {sid} {titles.get(sid, '')}", title_justify="left", header_style="bold",
                      pad_edge=False)
        table.add_column("symbol", overflow="fold")
        table.add_column("change", no_wrap=True)
        table.add_column("now at", overflow="fold")
        table.add_column("signature", overflow="fold")
        table.add_column("notes", overflow="fold")
        for s in shown:
            now = "" if s.new_symbol in (None, s.symbol) else s.new_symbol
            sig = signature_lines(s.signature)
            sig_text = "\n".join(sig[:6] + ([f"... {len(sig) - 6} more"] if len(sig) > 6 else []))
            table.add_row(s.symbol, Text(s.status, style=STYLE.get(s.status, "")), now, sig_text, _what(s))
        if quiet:
            table.caption = f"{quiet} unchanged symbol(s) not shown (-v lists them)"
        console.print(table)
    if md.new_symbols:
        table = Table(title=f"New in the {md.to_label} closure: what the port would newly need "
                            f"({len(md.new_symbols)})", title_justify="left", header_style="bold", pad_edge=False)
        table.add_column("module", overflow="fold")
        table.add_column("symbols", overflow="fold")
        table.add_column("stage", no_wrap=True)
        groups: "OrderedDict[str, list]" = OrderedDict()
        for n in md.new_symbols:
            groups.setdefault(n.module, []).append(n)
        for mod, items in groups.items():
            names = ", ".join(n.symbol.rsplit(".", 1)[1] + (" (kernel)" if n.kind == "kernel" else "")
                              for n in items)
            table.add_row(mod, names, items[0].stage or "new stage")
        console.print(table)


def _print_citations(run: DriftRun, console: Console, verbose: bool) -> None:
    rows = [c for c in run.citations if verbose or c.status in (CITE_CHANGED, CITE_RELOCATED, CITE_UNKNOWN)]
    if not run.citations:
        return
    table = Table(title=f"Port citations ({len(run.citations)}; {len(run.changed_citations)} to update)",
                  title_justify="left", header_style="bold", pad_edge=False)
    table.add_column("port symbol", overflow="fold")
    table.add_column("citation", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("what changed", overflow="fold")
    table.add_column("suggested", overflow="fold")
    for c in rows:
        style = {CITE_CHANGED: "red", CITE_RELOCATED: "yellow", CITE_UNKNOWN: "red"}.get(c.status, "green")
        changes = "\n".join(c.changes[:4] + ([f"... {len(c.changes) - 4} more"] if len(c.changes) > 4 else []))
        table.add_row(f"{c.port_symbol}\n{c.port_file}:{c.port_line}", c.citation, Text(c.status, style=style),
                      changes, c.suggested or "")
    console.print(table)


def _print_summary(run: DriftRun, console: Console) -> None:
    table = Table(title=f"Summary: {run.from_label} -> {run.to_label}", title_justify="left",
                  header_style="bold", pad_edge=False)
    table.add_column("change kind")
    for md in run.manifests:
        table.add_column(md.manifest, justify="right")
    keys = list(run.manifests[0].counts()) if run.manifests else []
    for k in keys:
        table.add_row(k, *[str(md.counts().get(k, 0)) for md in run.manifests])
    console.print(table)
    if run.three_way:
        for md in run.manifests:
            pc = md.port_counts()
            console.print(f"port ({md.manifest}): " + ", ".join(f"{pc[k]} {k}" for k in PORT_STATES),
                          markup=False)
    cc = run.citation_counts()
    console.print(f"citations: {cc[CITE_CHANGED]} cited code changed, {cc[CITE_RELOCATED]} relocated, "
                  f"{cc['unchanged']} unchanged, {cc[CITE_UNKNOWN]} cite a file missing from the from-tree",
                  markup=False)
    console.print("verdict: " + ("[red]drift found[/] (exit 1)" if run.changed else "[green]no drift[/] (exit 0)"))


# ---------------------------------------------------------------------------------------------
# JSON and markdown

def render_json(run: DriftRun) -> str:
    return json.dumps(run.to_dict(), indent=2, sort_keys=False) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


_SECTION_TITLES = {
    "to do": "To do: the port still has the old version",
    "conflict": "Conflicts: the port and upstream both changed it",
    "missing in port": "Missing in port: the manifest places it where the port defines nothing",
    "local change": "Local changes: the port differs and upstream did not change",
    "add": "Add: new in the upstream closure, not in the port",
    "manifest": "Manifest only: upstream moved or renamed it, the port already matches",
    "already has it": "Already has it: upstream changes the port made before the release",
}


def _port_checklist_md(run: DriftRun) -> list[str]:
    items = checklist(run)
    if not run.three_way:
        return []
    out = ["## Port checklist (three-way)", ""]
    if run.manifests:
        keys = list(PORT_STATES)
        out += ["| port state | " + " | ".join(m.manifest for m in run.manifests) + " |",
                "|---|" + "---:|" * len(run.manifests)]
        for k in keys:
            out.append(f"| {k} | " + " | ".join(str(m.port_counts().get(k, 0)) for m in run.manifests) + " |")
        out.append("")
    for section in SECTIONS:
        rows = [it for it in items if it.section == section]
        if not rows:
            continue
        out += [f"### {_SECTION_TITLES[section]} ({len(rows)})", ""]
        many = len(run.manifests) > 1
        for it in rows:
            box = "[x]" if section == "already has it" else "[ ]"
            out.append(f"- {box} `{it.symbol}`{f' ({it.manifest})' if many else ''}: {_md(it.action)}")
        out.append("")
    return out


def render_markdown(run: DriftRun) -> str:
    out = [f"# Upgrade checklist: {run.from_label} → {run.to_label}", ""]
    out += _port_checklist_md(run)
    if run.three_way:
        out += ["## Upstream changes", ""]
    if run.manifests:
        out += ["| change kind | " + " | ".join(m.manifest for m in run.manifests) + " |",
                "|---|" + "---:|" * len(run.manifests)]
        for k in run.manifests[0].counts():
            out.append(f"| {k} | " + " | ".join(str(m.counts().get(k, 0)) for m in run.manifests) + " |")
        out.append("")
    for md in run.manifests:
        out += [f"## {md.manifest}", "",
                f"Entry points: {', '.join(f'`{e}`' for e in md.entry_points)} · closure "
                f"{md.old_closure_size} → {md.new_closure_size} symbols · manifest `{md.manifest_path}`", ""]
        sections = [
            (REMOVED, "Removed upstream: drop from the manifest (keep or delete the port)"),
            (RENAMED, "Renamed (best-effort guesses: confirm each)"),
            (MOVED, "Moved to another module: re-point the manifest (`--write-manifest`); the port keeps "
                    "its own layout"),
            (BODY_CHANGED, "Body changed in place: re-read upstream and update the port"),
        ]
        for status, title in sections:
            items = [s for s in md.symbols if s.status == status]
            if not items:
                continue
            out += [f"### {title} ({len(items)})", ""]
            for s in items:
                line = f"- [ ] `{s.symbol}`"
                if s.new_symbol and s.new_symbol != s.symbol:
                    line += f" → `{s.new_symbol}`"
                if s.new_ref:
                    line += f" (`{s.new_ref}`)"
                what = _what(s)
                if what and status != REMOVED:
                    line += f" — {what}"
                out.append(line)
            out.append("")
        sig = [s for s in md.symbols if s.signature]
        if sig:
            out += [f"### Signature changes ({len(sig)}; ! = breaks old callers)", ""]
            for s in sig:
                out.append(f"- [ ] `{s.new_symbol or s.symbol}`")
                out += [f"  - {_md(x)}" for x in signature_lines(s.signature)]
            out.append("")
        if md.new_symbols:
            out += [f"### New symbols the port would need ({len(md.new_symbols)})", ""]
            groups: "OrderedDict[str, list]" = OrderedDict()
            for n in md.new_symbols:
                groups.setdefault(n.module, []).append(n)
            for mod, items in groups.items():
                out.append(f"- [ ] `{mod}`: " + ", ".join(
                    f"`{n.symbol.rsplit('.', 1)[1]}`" + (" (kernel)" if n.kind == "kernel" else "") for n in items))
            out.append("")
        gone = [s for s in md.symbols if s.reached is False]
        if gone:
            out += [f"<details><summary>Still defined but no longer reached from the entry points "
                    f"({len(gone)})</summary>", ""] + [f"- `{s.symbol}`" for s in gone] + ["", "</details>", ""]
    pending = run.changed_citations
    if run.citations:
        out += [f"## Port citations to update ({len(pending)} of {len(run.citations)})", ""]
        for c in pending:
            line = f"- [ ] `{c.port_file}:{c.port_line}` `{c.port_symbol}`: {c.status}"
            if c.changes:
                line += " (" + "; ".join(c.changes[:3]) + (f"; +{len(c.changes) - 3} more" if len(c.changes) > 3
                                                           else "") + ")"
            if c.suggested:
                line += f" → `{c.suggested}`"
            out.append(line)
        out.append("")
    out.append(f"**Verdict:** {'drift found' if run.changed else 'no drift'}")
    return "\n".join(out) + "\n"
