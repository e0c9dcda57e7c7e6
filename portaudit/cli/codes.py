"""`portaudit codes`: print the finding-code table (the same one docs/codes.md documents)."""

from __future__ import annotations

from rich.table import Table

from portaudit.cli.common import cli_errors, console
from portaudit.static.findings import CODES


def codes(markdown: bool = False) -> None:
    """List every finding code with its family, severity and meaning."""
    with cli_errors():
        if markdown:
            print("| code | family | severity | title | meaning |")
            print("|---|---|---|---|---|")
            for c in CODES.values():
                print(f"| {c.code} | {c.family} | {c.severity} | {c.title} | {c.help} |")
            return
        table = Table(header_style="bold")
        for col in ("code", "family", "severity", "title", "meaning"):
            table.add_column(col)
        for c in CODES.values():
            table.add_row(c.code, c.family, c.severity, c.title, c.help)
        console.print(table)
