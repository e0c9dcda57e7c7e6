"""`portaudit drift`: what a new upstream release means for a port's manifest.

Pipeline (each step a module here, all static: nothing upstream is imported):

- :mod:`.fingerprint`: a content hash of a definition, normalised so that pure line moves,
  comments, docstrings and formatting do not count, and token lists for body similarity;
- :mod:`.signature`: parameter-level signature changes in stubtest/griffe terms;
- :mod:`.matching`: where an old definition lives in the new tree (same place, moved through
  re-exports or a search by name, a best-effort rename guess, or removed);
- :mod:`.engine`: the drift of one manifest (symbols, signatures, new closure, entry points) and
  of the port's citations;
- :mod:`.manifest_writer`: the updated manifest for the new release;
- :mod:`.report`: rich tables, JSON and a markdown upgrade checklist.

The command itself is :mod:`portaudit.cli.drift`.
"""

from portaudit.drift.engine import DriftRun, drift_manifest, run_drift  # noqa: F401
