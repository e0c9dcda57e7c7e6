"""The two kinds of port, the renames a copy declares, and how a port records provenance.

* ``fidelity``: a **copy** (vendored code in the same language) is faithful when its bodies are
  the upstream's after normalisation and declared renames, so every entry's body is compared
  (PA601); a **translation** (Triton kernels re-expressed in torch, like myfla) legitimately has
  other bodies: its fidelity is the signature, the citation and the numerics. Set per manifest
  (``port.fidelity``, default ``translation``), per stage or per entry: a translation may check a
  plain-Python definition it kept close as a copy.
* ``renames``: upstream name -> port name, for identifiers, parameters, attributes and renamed
  definitions (``{q: query}`` or ``["q->query"]``), per manifest (``port.renames``) or per entry.
  The signature rules then expect ``query`` where the upstream has ``q`` (no PA201 + PA202 pair),
  and body comparison applies them to the upstream side, as transformers' ``Copied from ... with
  A->B`` does. Module renames are ``port.modules``.
* ``citations``: where the port records which upstream lines it came from. ``docstring``
  (default): ``Source:`` lines in docstrings/comments; ``sidecar``: a JSON file next to the
  manifest that ``portaudit fix-citations`` writes, for ports that will not edit vendored files;
  ``off`` (with a reason, like a waiver): the citation family is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

COPY = "copy"
TRANSLATION = "translation"
FIDELITIES = (COPY, TRANSLATION)

DOCSTRING = "docstring"
SIDECAR = "sidecar"
OFF = "off"
CITATION_STYLES = (DOCSTRING, SIDECAR, OFF)

Renames = dict   # str -> str


@dataclass
class CitationPolicy:
    style: str = DOCSTRING
    file: Optional[str] = None       # the sidecar, relative to the manifest
    reason: Optional[str] = None     # why citations are off

    @property
    def off(self) -> bool:
        return self.style == OFF


def parse_fidelity(v, value: Any, path: tuple) -> Optional[str]:
    if value is None:
        return None
    s = v.string(value, path)
    if s not in FIDELITIES:
        v.fail(path, f"unknown fidelity '{s}'; one of {', '.join(FIDELITIES)}")
    return s


def _rename_name(v, s: Any, path: tuple) -> str:
    name = v.string(s, path).strip()
    if not all(part.isidentifier() for part in name.split(".")):
        v.fail(path, f"'{name}' is not a Python name (renames map names, e.g. q: query)")
    return name


def parse_renames(v, value: Any, path: tuple) -> Renames:
    """``{old: new}`` or ``["old->new", ...]`` -> {old: new}."""
    if value is None:
        return {}
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, new in value.items():
            out[_rename_name(v, k, path + (k,))] = _rename_name(v, new, path + (k,))
        return out
    for i, item in enumerate(v.seq(value, path)):
        text = v.string(item, path + (i,))
        old, sep, new = text.partition("->")
        if not sep:
            v.fail(path + (i,), f"'{text}' is not a rename; write it as old->new")
        out[_rename_name(v, old, path + (i,))] = _rename_name(v, new, path + (i,))
    return out


def parse_citation_policy(v, value: Any, path: tuple) -> CitationPolicy:
    d = v.mapping(value, path, {"style": True, "file": False, "reason": False})
    # YAML 1.1 reads a bare `off` as false: take it as the word the author wrote
    style = OFF if d["style"] is False else v.string(d["style"], path + ("style",))
    if style not in CITATION_STYLES:
        v.fail(path + ("style",), f"unknown citation style '{style}'; one of {', '.join(CITATION_STYLES)}")
    policy = CitationPolicy(style, v.opt_string(d, "file", path), v.opt_string(d, "reason", path))
    if style == OFF and not (policy.reason or "").strip():
        v.fail(path, "switching citations off needs a 'reason' (it is shown in every report, like a waiver's)")
    if style == SIDECAR and not policy.file:
        v.fail(path, "a sidecar needs 'file' (the JSON record `portaudit fix-citations --write` keeps)")
    return policy
