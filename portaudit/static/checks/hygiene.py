"""Manifest hygiene: entries listed twice, waivers (applied, unused, without a reason) and deviations.

Codes PA502-PA505. Waivers and deviations are applied after every entry has been checked, so a
waiver that matches nothing is known (PA501 and PA506 concern one entry and come from the runner).
"""

from __future__ import annotations

from portaudit.static.findings import ERROR, WAIVED, Finding
from portaudit.static.manifest import Entry, Manifest
from portaudit.static.results import FAIL, ManifestResult


def unique_entries(manifest: Manifest, mfile: str) -> tuple[list[Entry], list[Finding]]:
    """The manifest's entries without repeats, and a PA504 finding for each repeat."""
    seen: dict[str, Entry] = {}
    found: list[Finding] = []
    for entry in manifest.entries:
        if entry.symbol in seen:
            found.append(Finding(
                "PA504", entry.symbol, f"{entry.symbol} is listed again (first in stage "
                f"{seen[entry.symbol].stage_id})", mfile, entry.loc.line if entry.loc else 1,
                manifest=manifest.name, stage=entry.stage_id, detail=f"stage {entry.stage_id}"))
            continue
        seen[entry.symbol] = entry
    return list(seen.values()), found


def apply_waivers(manifest: Manifest, result: ManifestResult, mfile: str) -> None:
    used = [False] * len(manifest.waivers)
    for w_i, w in enumerate(manifest.waivers):
        if not w.reason.strip():
            result.hygiene.append(Finding(
                "PA503", w.symbol, f"waiver for {w.code} on {w.symbol} has no reason; it is ignored "
                "until it says why", mfile, w.loc.line if w.loc else 1, detail=w.code))
    for sr in result.symbols:
        for f in sr.findings:
            for w_i, w in enumerate(manifest.waivers):
                if w.reason.strip() and w.matches(f.symbol, f.code):
                    f.status, f.reason = WAIVED, w.reason
                    used[w_i] = True
                    break
        for fam, outcome in sr.rules.items():
            fam_f = [f for f in sr.findings if f.family == fam and f.severity == ERROR]
            if outcome == FAIL and fam_f and all(f.status == WAIVED for f in fam_f):
                sr.rules[fam] = "waived"
    for w_i, w in enumerate(manifest.waivers):
        if w.reason.strip() and not used[w_i]:
            result.hygiene.append(Finding(
                "PA502", w.symbol, f"waiver for {w.code} on {w.symbol} matches no finding; remove it",
                mfile, w.loc.line if w.loc else 1, detail=w.code))


def apply_deviations(manifest: Manifest, result: ManifestResult, mfile: str) -> None:
    listed = {sr.symbol for sr in result.symbols}
    for dv in manifest.deviations:
        hit = False
        for sr in result.symbols:
            if dv.matches(sr.symbol):
                hit = True
                sr.deviation = dv.reason
                for f in sr.findings:
                    if dv.matches(f.symbol):
                        f.deviation = dv.reason
        if not hit and dv.symbol not in listed:
            result.hygiene.append(Finding(
                "PA505", dv.symbol, f"deviation names {dv.symbol}, which is not in the manifest",
                mfile, dv.loc.line if dv.loc else 1))
