"""The static half of portaudit: a manifest checked against two parsed trees; nothing is imported or run.

The modules follow the pipeline::

    manifest.py          load + validate the YAML contract (file:line:col errors);
        |                fidelity.py: copy/translation, renames, the citation policy
    upstream.py          the trees: fetch/unpack the pinned upstream (or a local tree), locate the port;
        |                gittree.py: a git repository at a commit or tag, or an archive
    index/               model.py (Definition, ModuleInfo, kinds), parse.py (libcst),
        |                body_source.py (normalised bodies, ast), tree.py (TreeIndex: lazy,
        |                resolves re-exports, parse cache)
    body.py              canonical form of a definition (import spelling, renames), fingerprint, diff;
        |                canonical_store.py keeps the forms on disk; kinds.py (kinds through bases),
        |                signature_normal.py (annotations as types, defaults as values)
    checks/              presence, signature, citation, simplification, body (PA6xx), hygiene;
        |                comparer.py pairs canonical forms; runner.py applies them to every entry
    results.py           per-entry and per-manifest results carrying findings.py's Finding objects
        |                (findings.py: the stable code table)
    baseline.py          the CI ratchet (gate) over those results
        |
    reporters/           text, json, markdown, junit, sarif, github

Beside the pipeline: citations.py (the ``Source:`` line format), sidecar.py (citations kept beside
the manifest), session.py (one run's trees and indexes, shared by every command), scaffold.py (a
manifest from a static closure), port_scaffold.py (a manifest from a port: matches, left out,
unplaced), provenance.py (the closest upstream version per definition), fixcite.py (rewrite
citations). :mod:`portaudit.drift` reuses the index; the commands live in :mod:`portaudit.cli`.
"""
