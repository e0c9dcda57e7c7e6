"""Pinned requirement specifiers: the only thing portaudit ever hands to ``pip download``.

A manifest's ``upstream.distributions`` (and ``--upstream``/``--to``/``--from`` on the command
line) name what to fetch. pip treats its positional arguments as more than names: ``./evil==1``
is a local project whose build backend pip would run, ``-rfile==1`` is its ``-r`` option, a URL
is fetched from anywhere. So every specifier is parsed with ``packaging`` and must be exactly
``NAME==VERSION``: a valid distribution name, one ``==`` clause with a valid version, no extras,
URL or marker. pip then receives a string rebuilt from the parsed parts (never the user's text),
after a ``--`` that ends its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# A name pip could read as something else than a project name never gets this far; the limit only
# keeps error messages short.
_MAX_SPEC = 200


class RequirementError(ValueError):
    """A specifier that is not ``NAME==VERSION``; the message says why and how to write it."""


@dataclass(frozen=True)
class PinnedRequirement:
    name: str        # as written (valid), e.g. fla-core
    version: str     # normalised by packaging, e.g. 0.4.0

    @property
    def canonical_name(self) -> str:
        return canonicalize_name(self.name)

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def parse_pinned(spec: str) -> PinnedRequirement:
    """Parse one ``NAME==VERSION``; anything else raises RequirementError."""
    if not isinstance(spec, str):
        raise RequirementError(f"expected a string NAME==VERSION, got {type(spec).__name__}")
    text = spec.strip()
    shown = text if len(text) <= _MAX_SPEC else text[:_MAX_SPEC] + "..."
    if not text:
        raise RequirementError("empty distribution; write it as NAME==VERSION")
    if text.startswith("-"):
        raise RequirementError(f"'{shown}' starts with '-' (a pip option); write a distribution as NAME==VERSION")
    try:
        req = Requirement(text)
    except InvalidRequirement:
        raise RequirementError(f"'{shown}' is not a requirement specifier; write it as NAME==VERSION "
                               "(local paths, URLs and pip options are refused)") from None
    if req.url:
        raise RequirementError(f"'{shown}' names a URL; write it as NAME==VERSION from the package registry")
    if req.extras:
        raise RequirementError(f"'{shown}' has extras; write it as NAME==VERSION (dependencies are never fetched)")
    if req.marker is not None:
        raise RequirementError(f"'{shown}' has an environment marker; write it as NAME==VERSION")
    clauses = list(req.specifier)
    if len(clauses) != 1 or clauses[0].operator != "==" or "*" in clauses[0].version:
        raise RequirementError(f"'{shown}' is not pinned; write it as NAME==VERSION")
    try:
        version = Version(clauses[0].version)
    except ValueError:   # InvalidVersion, or a release number past Python's int digit limit
        raise RequirementError(f"'{shown}' has an invalid version; write it as NAME==VERSION") from None
    return PinnedRequirement(req.name, str(version))


def parse_pinned_list(spec: Union[str, Sequence[str]]) -> list[PinnedRequirement]:
    """``"a==1,b==2"`` or ``["a==1", "b==2"]``; at least one; a distribution named twice is refused."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = [parse_pinned(s) for s in items if not isinstance(s, str) or s.strip()]
    if not out:
        raise RequirementError("no upstream distributions given; expected e.g. 'fla-core==0.4.0'")
    seen: dict[str, PinnedRequirement] = {}
    for r in out:
        if r.canonical_name in seen:
            raise RequirementError(f"distribution '{r.name}' is named twice ({seen[r.canonical_name]}, {r})")
        seen[r.canonical_name] = r
    return out
