"""SARIF 2.1.0: one run, the code table as rules, one result with a location per finding;
waived and baseline-accepted findings carry a suppression."""

from __future__ import annotations

import json
from pathlib import Path

from portaudit import __version__
from portaudit.static.findings import BASELINE, CODES, ERROR, WAIVED
from portaudit.static.reporters.report import Report

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _uri(path: str) -> str:
    p = Path(path)
    return p.as_posix() if not p.is_absolute() else p.as_uri()


def render(report: Report) -> str:
    codes = sorted(CODES)
    rules = [{"id": c, "name": CODES[c].title.title().replace(" ", "").replace("*", ""),
              "shortDescription": {"text": CODES[c].title},
              "fullDescription": {"text": CODES[c].help},
              "helpUri": "https://example.invalid/portaudit/docs/codes.md#" + c.lower(),
              "defaultConfiguration": {"level": "error" if CODES[c].severity == ERROR else "warning"},
              "properties": {"family": CODES[c].family}} for c in codes]
    results = []
    for r in report.results:
        for f in r.findings:
            region = {"startLine": max(1, f.line)}
            if f.end_line and f.end_line >= f.line:
                region["endLine"] = f.end_line
            res = {"ruleId": f.code, "ruleIndex": codes.index(f.code),
                   "level": "error" if f.severity == ERROR else "warning",
                   "message": {"text": f"{f.symbol}: {f.message}"},
                   "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(f.file)},
                                                       "region": region}}],
                   "partialFingerprints": {"portauditKey/v1": f.key},
                   "properties": {"symbol": f.symbol, "manifest": f.manifest, "stage": f.stage,
                                  "status": f.status, "upstreamRef": f.upstream_ref}}
            if f.diff:
                res["message"]["markdown"] = f"{f.symbol}: {f.message}\n\n```diff\n{f.diff}\n```"
                res["properties"]["diff"] = f.diff
            if f.status == WAIVED:
                res["suppressions"] = [{"kind": "external", "justification": f.reason or ""}]
            elif f.status == BASELINE:
                res["suppressions"] = [{"kind": "external", "justification": "accepted by the ratchet baseline"}]
            results.append(res)
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0",
           "runs": [{"tool": {"driver": {"name": "portaudit", "version": __version__,
                                         "informationUri": "https://example.invalid/portaudit",
                                         "rules": rules}},
                     "columnKind": "unicodeCodePoints",
                     "results": results}]}
    return json.dumps(doc, indent=2) + "\n"
