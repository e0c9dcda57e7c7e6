"""JUnit XML: one testsuite per manifest, one testcase per symbol (failure = incomplete)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from portaudit.static.findings import ERROR, OPEN, WAIVED
from portaudit.static.reporters.report import Report


def render(report: Report) -> str:
    root = ET.Element("testsuites", name="portaudit")
    total_tests = total_fail = 0
    for r in report.results:
        suite = ET.SubElement(root, "testsuite", name=r.manifest.name)
        tests = failures = skipped = 0
        for s in r.symbols:
            tests += 1
            case = ET.SubElement(suite, "testcase", name=s.symbol,
                                 classname=f"{r.manifest.name}.stage{s.stage}.{s.module}",
                                 file=s.port_file or str(r.manifest.path))
            bad = [f for f in s.findings if f.severity == ERROR and f.status != WAIVED]
            if not s.complete:
                failures += 1
                fail = ET.SubElement(case, "failure", type=bad[0].code if bad else "incomplete",
                                     message=f"{s.symbol}: {s.status}")
                fail.text = "\n".join(f"{f.code} {f.file}:{f.line} {f.message}" for f in s.findings)
            elif s.findings:
                out = ET.SubElement(case, "system-out")
                out.text = "\n".join(f"{f.code} [{f.status}] {f.message}" + (f" (waived: {f.reason})"
                                     if f.status == WAIVED else "") for f in s.findings)
        if r.hygiene:
            tests += 1
            case = ET.SubElement(suite, "testcase", name="manifest hygiene",
                                 classname=f"{r.manifest.name}.manifest", file=str(r.manifest.path))
            open_h = [f for f in r.hygiene if f.status == OPEN and f.severity == ERROR]
            if open_h:
                failures += 1
                fail = ET.SubElement(case, "failure", type=open_h[0].code,
                                     message=f"{len(open_h)} manifest hygiene finding(s)")
                fail.text = "\n".join(f"{f.code} {f.file}:{f.line} {f.message}" for f in r.hygiene)
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(skipped))
        total_tests += tests
        total_fail += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_fail))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
