"""GitHub Actions workflow commands: ``::error file=..,line=..,title=..::message`` per open
finding (warnings for lower-severity codes) and a ``::notice`` summary line per manifest."""

from __future__ import annotations

from portaudit.static.findings import CODES, ERROR, OPEN
from portaudit.static.reporters.report import Report


def escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def render(report: Report) -> str:
    lines = []
    for r in report.results:
        for f in r.findings:
            if f.status != OPEN:
                continue
            level = "error" if f.severity == ERROR else "warning"
            props = [f"file={escape_property(f.file)}", f"line={max(1, f.line)}"]
            if f.end_line and f.end_line >= f.line:
                props.append(f"endLine={f.end_line}")
            props.append(f"title={escape_property(f'{f.code} {CODES[f.code].title}')}")
            lines.append(f"::{level} {','.join(props)}::{escape_data(f'{f.symbol}: {f.message}')}")
        why = report.manifest_failed(r)
        status = "FAIL: " + "; ".join(why) if why else "pass"
        lines.append(f"::notice title={escape_property('portaudit ' + r.manifest.name)}::"
                     + escape_data(f"{r.percent:.1f}% ({r.passed}/{r.total}) complete; {status}"))
    return "\n".join(lines) + "\n"
