"""What the index holds: definitions, their parameters and body facts, and modules.

Plain dataclasses and the kind constants, shared by the parser that builds them
(:mod:`.parse`), the lazily parsed tree that caches them (:mod:`.tree`) and everything that reads
them (checks, drift, scaffold). The index cache (:mod:`.cache`) stores these classes as checked JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from portaudit.static.citations import Citation

# Kinds of definitions.
FUNCTION = "function"
CLASS = "class"
METHOD = "method"
AUTOGRAD = "autograd.Function"
NN_MODULE = "nn.Module"
KERNEL = "kernel"
CONSTANT = "constant"
KINDS = (FUNCTION, CLASS, METHOD, AUTOGRAD, NN_MODULE, KERNEL, CONSTANT)
CLASS_KINDS = (CLASS, NN_MODULE, AUTOGRAD)
CALLABLE_KINDS = (FUNCTION, METHOD, KERNEL)

POSITIONAL_ONLY = "positional-only"
POSITIONAL_OR_KEYWORD = "positional-or-keyword"
VAR_POSITIONAL = "*args"
KEYWORD_ONLY = "keyword-only"
VAR_KEYWORD = "**kwargs"


@dataclass
class Param:
    name: str
    kind: str
    default: Optional[str] = None      # normalised source text of the default, None if absent
    annotation: Optional[str] = None   # normalised source text of the annotation


@dataclass
class BodyFacts:
    is_stub: bool = False                       # only pass / ... / docstring / raise NotImplementedError
    not_implemented: list[int] = field(default_factory=list)   # lines raising NotImplementedError
    markers: list[tuple[int, str]] = field(default_factory=list)  # (line, word) in code/comments/docstring
    constant_return: Optional[str] = None       # the literal when the body is a single `return <literal>`
    stand_in: Optional[str] = None              # the value when the body is a single `return` of an
                                                # argument unchanged or a fresh constant tensor
    class_literals: list[tuple[str, str]] = field(default_factory=list)  # class-level `name = <literal>`
    literal_value: Optional[str] = None         # for a constant: its value when that is a plain literal
    statements: int = 0                         # top-level statements in the body (docstring excluded)


@dataclass
class Definition:
    name: str                       # qualified inside its module: "f", "Cls", "Cls.method"
    kind: str
    start: int                      # 1-based, decorators included
    end: int
    spans: list[tuple[int, int]] = field(default_factory=list)  # every (conditional) definition
    params: Optional[list[Param]] = None
    returns: Optional[str] = None
    decorators: list[str] = field(default_factory=list)
    docstring: Optional[str] = None
    citations: list[Citation] = field(default_factory=list)
    facts: BodyFacts = field(default_factory=BodyFacts)
    bases: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # for classes, in source order
    uses: list[str] = field(default_factory=list)     # dotted names read by the definition
    body_start: int = 0                               # first body statement line (functions/classes)
    body_indent: int = 0                              # its column (0-based)
    doc_span: Optional[tuple[int, int]] = None        # lines of the docstring statement
    body_src: Optional[str] = None                    # normalised body (index/body_source.py); None if unparsable

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass
class ImportRef:
    module: str                 # absolute module name
    name: Optional[str] = None  # None for `import a.b as c` (the module itself)


@dataclass
class ModuleInfo:
    module: str
    path: str
    sha: str
    line_count: int
    is_package: bool
    definitions: dict[str, Definition] = field(default_factory=dict)
    imports: dict[str, ImportRef] = field(default_factory=dict)
    star_imports: list[str] = field(default_factory=list)
    dunder_all: Optional[list[str]] = None


@dataclass
class Resolved:
    module: ModuleInfo
    definition: Definition

    @property
    def symbol(self) -> str:
        return f"{self.module.module}.{self.definition.name}"


def iter_methods(info: ModuleInfo, cls: Definition) -> Iterable[Definition]:
    for m in cls.methods:
        d = info.definitions.get(f"{cls.name}.{m}")
        if d is not None:
            yield d
