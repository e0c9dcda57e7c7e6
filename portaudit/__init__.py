"""portaudit: prove that a port of a Python library is complete and faithful.

It parses an upstream tree and a port tree with libcst, checks a YAML manifest of expected
symbols, signatures, citations and "no simplification" rules, runs numeric invariants, compares
against golden fixtures and reports upstream drift.
"""

# The version of the ``portaudit`` distribution (distributions/portaudit/pyproject.toml reads it from here).
__version__ = "0.2.0"
