"""Bodies of copies: each ported definition equals the upstream's after normalisation (PA601/PA602).

The comparison itself is :mod:`portaudit.static.body`; this rule turns its result into findings.
A difference is keyed by the pair of fingerprints (``PA601:symbol:<12 hex>``), so a ratchet
baseline accepts exactly the difference it saw: the next change to either side is a new key.
"""

from __future__ import annotations

from typing import Optional

from portaudit.static.body import Canonical, body_diff, changed_lines, pair_fingerprint, similarity
from portaudit.static.checks.site import Site
from portaudit.static.findings import Finding


def check_body(site: Site, up: Optional[Canonical], port: Optional[Canonical], upstream_label: str,
               port_label: str, upstream_ref: str, aliases: Optional[dict] = None) -> list[Finding]:
    if up is None or port is None:
        side = "upstream" if up is None else "port"
        return [site.finding("PA602", f"the {side} definition could not be normalised (source this "
                                      "Python cannot parse); its body was not compared",
                             upstream_ref=upstream_ref)]
    if up.fingerprint == port.fingerprint:
        return []
    n = changed_lines(up, port)
    return [site.finding(
        "PA601", f"body differs from the upstream's: {n} normalised line(s) changed, similarity "
                 f"{similarity(up, port):.2f} (-v shows the diff)",
        upstream_ref=upstream_ref, detail=pair_fingerprint(up, port),
        diff=body_diff(up, port, upstream_label, port_label, aliases=aliases))]
