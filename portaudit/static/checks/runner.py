"""Run every static rule of one manifest against an upstream index and a port index.

For each manifest entry (and each of its port locations) the runner resolves the upstream
definition and the port definition, runs the rule families (:mod:`.presence`, :mod:`.signature`,
:mod:`.citation`, :mod:`.simplification`, and for copies :mod:`.body`) and records their outcomes
in a :class:`~portaudit.static.results.SymbolResult`; then :mod:`.hygiene` applies the manifest's
waivers and deviations. Reporters and the gate read only the resulting
:class:`~portaudit.static.results.ManifestResult`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from portaudit.errors import UsageError
from portaudit.safe_io import is_regular_file, read_regular
from portaudit.static.checks import hygiene
from portaudit.static.checks.citation import UpstreamFile, check_citations
from portaudit.static.checks.comparer import BodyComparer
from portaudit.static.checks.presence import check_kind, check_methods, kernel_accounted, manifest_port_citations
from portaudit.static.checks.signature import check_signature
from portaudit.static.checks.simplification import check_simplification
from portaudit.static.checks.site import Site
from portaudit.static.citations import malformed_lines
from portaudit.static.fidelity import COPY, OFF, SIDECAR
from portaudit.static.findings import ERROR, Finding
from portaudit.static.index.model import (CALLABLE_KINDS, CLASS, CLASS_KINDS, KERNEL, METHOD, Definition,
                                          ModuleInfo, Resolved)
from portaudit.static.index.tree import TreeIndex
from portaudit.static.kinds import effective_kind
from portaudit.static.manifest import Entry, Manifest
from portaudit.static.results import FAIL, PASS, SKIP, ManifestResult, SymbolResult, display_path
from portaudit.static.sidecar import Sidecar, load_sidecar
from portaudit.static.source import MAX_SOURCE_BYTES, read_source, split_lines

FAMILIES = ("presence", "signature", "citation", "simplification", "body")
CITATIONS_OFF = "off"


class Auditor:
    """Audits manifests; shares tree indexes between manifests that use the same trees.

    ``body_figures``: also measure how close translation entries' bodies are to the upstream's
    (the ``--bodies`` report; a figure, never a finding).
    """

    def __init__(self, upstream: TreeIndex, port: TreeIndex, body_figures: bool = False):
        self.up = upstream
        self.port = port
        self.body_figures = body_figures
        cache = upstream.cache_dir.parent if upstream.cache_dir is not None else None
        self.bodies = BodyComparer(upstream, port, cache)
        self._file_lines: dict[str, UpstreamFile] = {}
        self._sidecars: dict[str, Sidecar] = {}
        self._used_renames: set[tuple[str, str]] = set()   # (entry symbol or "", rename key)

    # -- helpers ---------------------------------------------------------------------------
    def upstream_file(self, relpath: str) -> UpstreamFile:
        if relpath not in self._file_lines:
            p = self.up.root / relpath
            if ".." not in Path(relpath).parts and is_regular_file(p):
                n = read_regular(p, MAX_SOURCE_BYTES, "cited upstream file").count(b"\n")
                self._file_lines[relpath] = UpstreamFile(relpath, True, n)
            else:
                self._file_lines[relpath] = UpstreamFile(relpath, False)
        return self._file_lines[relpath]

    def up_relpath(self, info: ModuleInfo) -> str:
        return self.up.relpath(info.path)

    def ref(self, info: ModuleInfo, d: Definition) -> str:
        return f"{self.up_relpath(info)}:L{d.start}-L{d.end}"

    # -- one manifest ----------------------------------------------------------------------
    def run(self, manifest: Manifest) -> ManifestResult:
        result = ManifestResult(manifest, self.up.root, self.port.root)
        mfile = display_path(manifest.path)
        entries, repeats = hygiene.unique_entries(manifest, mfile)
        result.hygiene += repeats
        todo: list[tuple[Entry, Optional[Resolved]]] = [(e, self.up.resolve(e.symbol)) for e in entries]
        # every port module mirrored by the manifest is loaded first: kernels may be cited anywhere
        port_citations = manifest_port_citations(manifest, (entry for entry, _ in todo), self.port)
        self._used_renames = set()
        for entry, up in todo:
            locations = manifest.port_symbols(entry)
            for psym in locations:
                sr = self.audit_entry(manifest, entry, up, port_citations, mfile, psym)
                if len(locations) > 1:
                    for f in sr.findings:
                        f.location = psym
                result.symbols.append(sr)
        result.hygiene += self.unused_renames(manifest, entries, mfile)
        self.bodies.store.flush()
        hygiene.apply_waivers(manifest, result, mfile)
        hygiene.apply_deviations(manifest, result, mfile)
        for f in result.findings:
            f.manifest = manifest.name
        return result

    def unused_renames(self, manifest: Manifest, entries: list[Entry], mfile: str) -> list[Finding]:
        """PA507 for declared renames that changed nothing (the port's, and each entry's)."""
        out = []
        used_anywhere = {k for _, k in self._used_renames}
        for old, new in manifest.port.renames.items():
            if old not in used_anywhere:
                out.append(Finding("PA507", manifest.port.package, f"port.renames {old} -> {new} changed "
                                   "nothing in any entry; remove it", mfile, 1, detail=old))
        for e in entries:
            for old, new in e.renames.items():
                if (e.symbol, old) not in self._used_renames:
                    out.append(Finding("PA507", e.symbol, f"rename {old} -> {new} of {e.symbol} changed "
                                       "nothing (no such parameter or name)", mfile,
                                       e.loc.line if e.loc else 1, stage=e.stage_id, detail=old))
        return out

    def sidecar(self, manifest: Manifest, file: str) -> Sidecar:
        path = (manifest.path.parent / file).resolve()
        key = str(path)
        if key not in self._sidecars:
            self._sidecars[key] = load_sidecar(path, manifest.name, manifest.citation_label)
        return self._sidecars[key]

    def audit_entry(self, manifest: Manifest, entry: Entry, up: Optional[Resolved],
                    port_citations: list, mfile: str, psym: Optional[str] = None) -> SymbolResult:
        psym = psym or manifest.port_symbol(entry)
        line = entry.loc.line if entry.loc else 1
        if up is None:
            mod, _ = self.up.split_symbol(entry.symbol)
            sr = SymbolResult(entry.symbol, entry.stage_id, mod or entry.symbol.rsplit(".", 1)[0],
                              entry.kind or "?", psym)
            sr.findings.append(Finding("PA501", entry.symbol, f"{entry.symbol} is not defined in the upstream "
                                       f"tree {self.up.root}", mfile, line, stage=entry.stage_id))
            sr.rules = {fam: SKIP for fam in FAMILIES}
            sr.rules["presence"] = FAIL
            return sr
        ud = up.definition
        up_ref = self.ref(up.module, ud)
        sr = SymbolResult(entry.symbol, entry.stage_id, up.module.module, ud.kind, psym, upstream_ref=up_ref)
        fam: dict[str, list[Finding]] = {f: [] for f in FAMILIES}
        if entry.kind is not None and entry.kind != ud.kind:
            fam["presence"].append(Finding("PA506", entry.symbol, f"the manifest says kind '{entry.kind}', "
                                           f"the upstream index says '{ud.kind}'", mfile, line))
        is_kernel = ud.kind == KERNEL or entry.kind == KERNEL
        pmod, _ = self.port.split_symbol(psym)
        pres = self.port.resolve(psym)
        if pres is not None:
            sr.port_file = display_path(pres.module.path)
            sr.port_line = pres.definition.start
        site = Site(entry.symbol, sr.port_file or mfile, pres.definition if pres else None)

        if is_kernel:
            how = kernel_accounted(self.up_relpath(up.module), ud, port_citations,
                                          pres.definition if pres else None)
            sr.accounted_by = how
            if how is None:
                where = psym.rsplit(".", 1)[0]
                mod_file = self.port_module_file(where)
                fam["presence"].append(Finding(
                    "PA105", entry.symbol, f"kernel {ud.name} ({up_ref}) is not accounted for: cite it "
                    f"from the torch function that implements it or define {ud.name} in {where}",
                    mod_file or mfile, 1 if mod_file else line, upstream_ref=up_ref))
        elif pres is None:
            listed_mod, _ = self.up.split_symbol(entry.symbol)
            expected = (psym.rsplit(".", 1)[0] if entry.port
                        else manifest.port_name_for(listed_mod or up.module.module))
            info = self.port.module(expected)
            if info is None:
                expect = self.port.root.joinpath(*expected.split(".")).with_suffix(".py")
                fam["presence"].append(Finding(
                    "PA101", entry.symbol, f"port module {expected} not found (expected "
                    f"{display_path(expect)})", mfile, line, upstream_ref=up_ref))
            else:
                pfile = display_path(info.path)
                fam["presence"].append(Finding(
                    "PA102", entry.symbol, f"{psym} is not defined in {pfile}", pfile, 1,
                    upstream_ref=up_ref))

        copy = manifest.fidelity_of(entry) == COPY
        renames = manifest.renames_for(entry)
        policy = manifest.citation_policy(entry)
        if pres is not None:
            pd = pres.definition
            if not is_kernel:
                fam["presence"] += self.kind_findings(site, up, pres, up_ref)
            port_methods: dict[str, Definition] = {}
            if ud.kind in CLASS_KINDS and pd.kind in CLASS_KINDS:
                up_methods = {m: up.module.definitions[f"{ud.name}.{m}"] for m in ud.methods
                              if f"{ud.name}.{m}" in up.module.definitions}
                port_methods = self.port_methods(pres)
                fam["presence"] += check_methods(site, ud, up_methods, port_methods, up_ref)
                readers = self.bodies.readers(up, pres)
                for name, um in up_methods.items():
                    pm = port_methods.get(name)
                    if pm is None:
                        continue
                    msite = Site(f"{entry.symbol}.{name}", site.file, pm)
                    mref = self.ref(up.module, um)
                    fam["signature"] += check_signature(msite, um, pm, mref, renames=renames, readers=readers)
                    self.note_param_renames(entry, um, renames)
                    fam["simplification"] += check_simplification(msite, um, pm, markers=False)
            elif ud.kind != "constant" and (not is_kernel or copy):
                fam["signature"] += check_signature(site, ud, pd, up_ref, renames=renames,
                                                    readers=self.bodies.readers(up, pres))
                self.note_param_renames(entry, ud, renames)
            if policy.style != OFF:
                fam["citation"] += self.citation_findings(manifest, policy, site, up, pres, up_ref, psym)
            fam["simplification"] += check_simplification(site, ud, pd)
            if copy:
                found, used = self.bodies.findings(
                    site, up, pres, port_methods, renames, f"{manifest.citation_label} {manifest.citation_version}",
                    lambda d: self.ref(up.module, d), sr.port_file or mfile)
                fam["body"] += found
                self._used_renames |= {(entry.symbol, k) for k in used}
            if (copy or self.body_figures) and not is_kernel:
                sr.body = self.bodies.figure(up, pres, port_methods, renames, self.bodies.plain_python(up))

        for name, found in fam.items():
            for f in found:
                f.stage = entry.stage_id
            sr.findings += found
        sr.rules = self.rule_outcomes(fam, pres is not None)
        if policy.style == OFF and pres is not None:
            sr.rules["citation"] = CITATIONS_OFF
        if not copy:
            sr.rules["body"] = SKIP
        return sr

    def note_param_renames(self, entry: Entry, ud: Definition, renames: dict) -> None:
        for p in ud.params or ():
            if p.name in renames:
                self._used_renames.add((entry.symbol, p.name))

    def kind_findings(self, site: Site, up: Resolved, port: Resolved, up_ref: str) -> list[Finding]:
        """PA103 (or PA106 when a port base leads outside the trees), kinds resolved through bases."""
        up_kind = effective_kind(self.up, up.module, up.definition).kind \
            if up.definition.kind == CLASS else up.definition.kind
        res = effective_kind(self.port, port.module, port.definition)
        return check_kind(site, up.definition, port.definition, up_ref, up_kind=up_kind, port_kind=res.kind,
                          unresolved=res.unresolved)

    def citation_findings(self, manifest: Manifest, policy, site: Site, up: Resolved, pres: Resolved,
                          up_ref: str, psym: str) -> list[Finding]:
        ud, pd = up.definition, pres.definition
        spans = ud.spans or [(ud.start, ud.end)]
        if policy.style == SIDECAR:
            car = self.sidecar(manifest, policy.file)
            cit = car.citation(psym)
            cits = [cit] if cit is not None else []
            found = check_citations(site, cits, car.malformed(psym), manifest.citation_label,
                                    manifest.citation_version, self.up_relpath(up.module), spans,
                                    {c.path: self.upstream_file(c.path) for c in cits}, up_ref)
            for f in found:
                if f.code == "PA301":
                    f.message = (f"no record for {psym} in the citation sidecar {display_path(car.path)}; "
                                 "run `portaudit fix-citations --write`")
            return found
        port_text = self.port_definition_text(pres)
        return check_citations(
            site, pd.citations, malformed_lines(port_text), manifest.citation_label,
            manifest.citation_version, self.up_relpath(up.module), spans,
            {c.path: self.upstream_file(c.path) for c in pd.citations}, up_ref)

    def port_module_file(self, module: str) -> Optional[str]:
        info = self.port.module(module)
        return display_path(info.path) if info else None

    def port_methods(self, res: Resolved) -> dict[str, Definition]:
        """Methods of a port class, including those inherited from same-module base classes."""
        info, cls = res.module, res.definition
        out: dict[str, Definition] = {}
        chain, seen = [cls], set()
        while chain:
            c = chain.pop(0)
            if c.name in seen:
                continue
            seen.add(c.name)
            for m in c.methods:
                d = info.definitions.get(f"{c.name}.{m}")
                if d is not None:
                    out.setdefault(m, d)
            for b in c.bases:
                if b in info.definitions and info.definitions[b].kind != METHOD:
                    chain.append(info.definitions[b])
        return out

    def port_definition_text(self, res: Resolved) -> str:
        d = res.definition
        try:
            lines = split_lines(read_source(res.module.path).text)
        except UsageError:
            return ""
        start = d.start
        while start > 1 and lines[start - 2].lstrip().startswith("#"):
            start -= 1
        if d.kind in CLASS_KINDS or d.kind in CALLABLE_KINDS:
            # only the docstring region matters for citations: stop at the first blank-free body
            end = min(d.end, d.start + 60)
        else:
            end = d.end
        return "\n".join(lines[start - 1:end])

    @staticmethod
    def rule_outcomes(fam: dict[str, list[Finding]], present: bool) -> dict[str, str]:
        out = {}
        for name, found in fam.items():
            if name != "presence" and not present:
                out[name] = SKIP
            elif any(f.severity == ERROR for f in found):
                out[name] = FAIL
            else:
                out[name] = PASS
        return out


def audit(manifest: Manifest, upstream: TreeIndex, port: TreeIndex) -> ManifestResult:
    return Auditor(upstream, port).run(manifest)
