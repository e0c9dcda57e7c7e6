"""Reporters: the same audit results rendered as text, JSON, markdown, JUnit XML, SARIF or
GitHub annotations. Each takes a :class:`~.report.Report` and returns a string (text also renders
with rich).

Add a format by writing ``render(report) -> str`` and registering it in :func:`_formats` and
:data:`FORMAT_NAMES`.
"""

from __future__ import annotations

from typing import Callable

from portaudit.static.reporters.report import Report


def _formats() -> dict[str, Callable[[Report], str]]:
    from portaudit.static.reporters import github, json_report, junit, markdown, sarif, text

    return {"text": text.render, "json": json_report.render, "markdown": markdown.render,
            "junit": junit.render, "sarif": sarif.render, "github": github.render}


FORMAT_NAMES = ("text", "json", "markdown", "junit", "sarif", "github")


def render(report: Report, fmt: str) -> str:
    return _formats()[fmt](report)
