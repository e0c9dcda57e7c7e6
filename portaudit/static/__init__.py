"""The static half of portaudit: a manifest checked against two parsed trees; nothing is imported or run.

The modules follow the pipeline::

    manifest.py          load + validate the YAML contract (file:line:col errors)
        |
    upstream.py          the trees: fetch/unpack the pinned upstream (or a local tree), locate the port
        |
    index/               model.py (Definition, ModuleInfo, kinds), parse.py (libcst),
        |                tree.py (TreeIndex: lazy, resolves re-exports, parse cache)
    checks/              presence, signature, citation, simplification, hygiene;
        |                runner.py applies them to every manifest entry
    results.py           per-entry and per-manifest results carrying findings.py's Finding objects
        |                (findings.py: the stable code table)
    baseline.py          the CI ratchet (gate) over those results
        |
    reporters/           text, json, markdown, junit, sarif, github

Beside the pipeline: citations.py (the ``Source:`` line format), session.py (one run's trees and
indexes, shared by every command), scaffold.py (a manifest from a static closure), fixcite.py
(rewrite citations). :mod:`portaudit.drift` reuses the index; the commands live in
:mod:`portaudit.cli`.
"""
