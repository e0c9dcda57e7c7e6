"""Where a finding about a port definition points: the symbol, the file and the definition's lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from portaudit.static.findings import Finding
from portaudit.static.index.model import Definition


@dataclass
class Site:
    """Where a port definition lives, for finding locations."""
    symbol: str        # the upstream symbol the finding is about
    file: str
    definition: Optional[Definition] = None

    def finding(self, code: str, message: str, line: Optional[int] = None, **kw) -> Finding:
        d = self.definition
        return Finding(code=code, symbol=self.symbol, message=message, file=self.file,
                       line=line if line is not None else (d.start if d else 1),
                       end_line=d.end if d and line is None else None, **kw)
