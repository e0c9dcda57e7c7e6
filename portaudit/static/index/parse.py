"""libcst parsing of one module into a :class:`~portaudit.static.index.model.ModuleInfo` (no code is executed)."""

from __future__ import annotations

import ast
import re
from typing import Optional, Sequence

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from portaudit.static.citations import parse_citations
from portaudit.static.index.body_source import definition_bodies
from portaudit.static.source import SourceError, check_parse_limits, decode_source, split_lines
from portaudit.static.index.model import (AUTOGRAD, CLASS, CONSTANT, FUNCTION, KERNEL, KEYWORD_ONLY, METHOD,
                                          NN_MODULE, POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD, VAR_KEYWORD,
                                          VAR_POSITIONAL, BodyFacts, Definition, ImportRef, ModuleInfo, Param)
from portaudit.static.unparse import unparse

MARKER_RE = re.compile(
    r"\b(TODO|FIXME|XXX|HACK|placeholder|simplified|simplification|MVP|stub|not implemented)\b",
    re.IGNORECASE)
_NIE_RE = re.compile(r"^\s*raise\s+NotImplementedError\b")
# A comment on a line of code that says what that value stands for ("mean = 0.0  # placeholder
# for RMS norm", "Akk=k,  # unused placeholder when ...") describes the value, it is no stub.
_STAND_IN_WORDS = ("placeholder", "stub")
_STAND_IN_AFTER = re.compile(r"^\s+(for|when|if|until|while)\b", re.IGNORECASE)
_STAND_IN_BEFORE = re.compile(r"\b(unused|dummy)\s+$", re.IGNORECASE)


def _comment_start(line: str) -> int:
    """Index of the ``#`` that starts a comment on this line (quotes respected), or -1."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif line.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c == "#":
            return i
        elif c in "'\"":
            quote = line[i:i + 3] if line[i:i + 3] in ("'''", '"""') else c
            i += len(quote) - 1
        i += 1
    return -1


def describes_a_value(line: str, match: "re.Match") -> bool:
    """True for a stand-in word in a trailing comment that names what the line's value stands for."""
    if match.group(1).lower() not in _STAND_IN_WORDS:
        return False
    hash_at = _comment_start(line)
    if hash_at <= 0 or match.start() < hash_at or not line[:hash_at].strip():
        return False
    return bool(_STAND_IN_AFTER.match(line[match.end():])
                or _STAND_IN_BEFORE.search(line[hash_at + 1:match.start()]))


def normalize_source(src: str) -> str:
    """Source of an expression in canonical form (quotes, spacing, parentheses) for comparisons."""
    text = src.strip()
    try:
        return unparse(ast.parse(text, mode="eval"))
    except SyntaxError:
        return " ".join(text.split())


def _dotted(node: cst.BaseExpression) -> Optional[str]:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def _absolute(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_literal(node: cst.BaseExpression) -> bool:
    return isinstance(node, (cst.Integer, cst.Float, cst.Imaginary, cst.SimpleString, cst.ConcatenatedString)) \
        or (isinstance(node, cst.Name) and node.value in ("True", "False", "None"))


# calls that make a tensor of constants (or garbage) without reading any input's values
_TENSOR_FACTORIES = {f"torch.{n}" for n in ("zeros", "ones", "empty", "full", "zeros_like", "ones_like",
                                             "empty_like", "full_like", "rand", "randn", "rand_like",
                                             "randn_like")}
_TENSOR_FACTORY_METHODS = ("new_zeros", "new_ones", "new_empty", "new_full")


def _is_tensor_factory(node: cst.BaseExpression) -> bool:
    if not isinstance(node, cst.Call):
        return False
    name = _dotted(node.func)
    if name in _TENSOR_FACTORIES:
        return True
    return isinstance(node.func, cst.Attribute) and node.func.attr.value in _TENSOR_FACTORY_METHODS


# calls that only report: a body of these before its return computes nothing
_REPORTING_CALLS = ("warnings.warn", "logger.warning", "logger.warning_once", "logger.info", "logger.debug",
                    "logging.warning", "print")


def _is_guard(stmt: cst.CSTNode) -> bool:
    """An assert, a raise, a warning or a check whose branches only do those."""
    if isinstance(stmt, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
        return all(_is_guard(s) for s in stmt.body)
    if isinstance(stmt, (cst.Assert, cst.Raise, cst.Pass)):
        return True
    if isinstance(stmt, cst.Expr):
        return isinstance(stmt.value, cst.Call) and _dotted(stmt.value.func) in _REPORTING_CALLS
    if isinstance(stmt, cst.If):
        body = stmt.body.body if isinstance(stmt.body, (cst.IndentedBlock, cst.SimpleStatementSuite)) else []
        orelse = stmt.orelse
        if orelse is not None:
            other = [orelse] if isinstance(orelse, cst.If) else list(orelse.body.body)
        else:
            other = []
        return all(_is_guard(s) for s in (*body, *other))
    return False


def _param_names(p: cst.Parameters) -> list[str]:
    names = [q.name.value for q in (*p.posonly_params, *p.params, *p.kwonly_params)]
    for star in (p.star_arg, p.star_kwarg):
        if isinstance(star, cst.Param):
            names.append(star.name.value)
    return names


def _is_type_checking(test: cst.BaseExpression) -> bool:
    return _dotted(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


class _Uses(cst.CSTVisitor):
    """Dotted names read by an expression/body; annotations, keyword names and attrs excluded."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.bound: set[str] = set()

    def visit_Name(self, node: cst.Name) -> bool:
        self.names.append(node.value)
        return False

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        dotted = _dotted(node)
        if dotted is not None:
            self.names.append(dotted)
        else:
            node.value.visit(self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)
        return False

    def visit_Annotation(self, node: cst.Annotation) -> bool:
        return False

    def visit_Param(self, node: cst.Param) -> bool:
        self.bound.add(node.name.value)
        if node.default is not None:
            node.default.visit(self)
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.bound.add(node.name.value)
        for d in node.decorators:
            d.visit(self)
        node.params.visit(self)
        node.body.visit(self)
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.bound.add(node.name.value)
        for d in node.decorators:
            d.visit(self)
        for b in node.bases:
            b.value.visit(self)
        node.body.visit(self)
        return False

    def visit_ImportAlias(self, node: cst.ImportAlias) -> bool:
        name = node.asname.name if node.asname else node.name
        d = _dotted(name) if isinstance(name, (cst.Name, cst.Attribute)) else None
        if d:
            self.bound.add(d.split(".")[0])
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        if not isinstance(node.names, cst.ImportStar):
            for alias in node.names:
                alias.visit(self)
        return False

    def _bind_target(self, target: cst.BaseExpression) -> None:
        if isinstance(target, cst.Name):
            self.bound.add(target.value)
        elif isinstance(target, (cst.Tuple, cst.List)):
            for el in target.elements:
                self._bind_target(el.value)
        elif isinstance(target, cst.StarredElement):
            self._bind_target(target.value)

    def visit_AssignTarget(self, node: cst.AssignTarget) -> bool:
        self._bind_target(node.target)
        return not isinstance(node.target, cst.Name)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> bool:
        self._bind_target(node.target)
        if node.value is not None:
            node.value.visit(self)
        return False

    def visit_AugAssign(self, node: cst.AugAssign) -> bool:
        self._bind_target(node.target)
        return True

    def visit_For(self, node: cst.For) -> bool:
        self._bind_target(node.target)
        return True

    def visit_CompFor(self, node: cst.CompFor) -> bool:
        self._bind_target(node.target)
        return True

    def visit_AsName(self, node: cst.AsName) -> bool:
        self._bind_target(node.name)
        return False

    def visit_NamedExpr(self, node: cst.NamedExpr) -> bool:
        self._bind_target(node.target)
        return True

    def visit_Global(self, node: cst.Global) -> bool:
        return False

    def visit_Nonlocal(self, node: cst.Nonlocal) -> bool:
        return False

    def result(self) -> list[str]:
        seen: dict[str, None] = {}
        for n in self.names:
            if n.split(".")[0] in self.bound:
                continue
            seen.setdefault(n, None)
        return list(seen)


def _collect_uses(nodes: Sequence[cst.CSTNode], bound: Sequence[str] = ()) -> list[str]:
    v = _Uses()
    v.bound.update(bound)
    for n in nodes:
        n.visit(v)
    return v.result()


class _ModuleParser:
    def __init__(self, source: str, module: str, path: str, sha: str, is_package: bool):
        self.source = source
        self.lines = split_lines(source)
        self.tree = cst.parse_module(source)
        self.wrapper = MetadataWrapper(self.tree, unsafe_skip_copy=True)
        self.pos = self.wrapper.resolve(PositionProvider)
        self._touched: list[str] = []
        self.info = ModuleInfo(module=module, path=path, sha=sha, line_count=len(self.lines),
                               is_package=is_package)

    # -- helpers ---------------------------------------------------------------------------
    def code(self, node: cst.CSTNode) -> str:
        return self.tree.code_for_node(node)

    def line_range(self, node: cst.CSTNode, decorators: Sequence[cst.Decorator] = ()) -> tuple[int, int]:
        r = self.pos[node]
        start = min([r.start.line] + [self.pos[d].start.line for d in decorators])
        end = r.end.line
        # a trailing newline token makes libcst end one line later at column 0
        if r.end.column == 0 and end > start:
            end -= 1
        return start, end

    def leading_comment_block(self, start: int) -> tuple[int, str]:
        """The comment lines directly above ``start`` (1-based): (first line, text)."""
        i = start - 2
        block: list[str] = []
        while i >= 0 and self.lines[i].lstrip().startswith("#"):
            block.insert(0, self.lines[i])
            i -= 1
        return i + 2, "\n".join(block)

    def text(self, start: int, end: int) -> str:
        return "\n".join(self.lines[start - 1:end])

    def markers(self, start: int, end: int) -> list[tuple[int, str]]:
        out = []
        for ln in range(start, end + 1):
            line = self.lines[ln - 1]
            for m in MARKER_RE.finditer(line):
                if not describes_a_value(line, m):
                    out.append((ln, m.group(1)))
        return out

    def nie_lines(self, start: int, end: int) -> list[int]:
        return [ln for ln in range(start, end + 1) if _NIE_RE.match(self.lines[ln - 1])]

    def body_layout(self, d: Definition, body: cst.BaseSuite) -> Definition:
        """Record where the body and the docstring are (fix-citations edits there)."""
        if isinstance(body, cst.IndentedBlock) and body.body:
            first = body.body[0]
            r = self.pos[first]
            # a decorated first statement starts at its first decorator (libcst starts it at `def`)
            decorators = getattr(first, "decorators", ())
            head = self.pos[decorators[0]] if decorators else r
            d.body_start, d.body_indent = head.start.line, head.start.column
            if (isinstance(first, cst.SimpleStatementLine) and first.body
                    and isinstance(first.body[0], cst.Expr)
                    and isinstance(first.body[0].value, (cst.SimpleString, cst.ConcatenatedString))):
                d.doc_span = self.line_range(first)
        return d

    def docstring_citations(self, body: cst.BaseSuite, start: int) -> list:
        cits = []
        c_start, comments = self.leading_comment_block(start)
        if comments:
            cits.extend(parse_citations(comments, c_start))
        if isinstance(body, cst.IndentedBlock) and body.body:
            first = body.body[0]
            if (isinstance(first, cst.SimpleStatementLine) and first.body
                    and isinstance(first.body[0], cst.Expr)
                    and isinstance(first.body[0].value, (cst.SimpleString, cst.ConcatenatedString))):
                s, e = self.line_range(first)
                cits.extend(parse_citations(self.text(s, e), s))
        return cits

    # -- parameters ------------------------------------------------------------------------
    def params(self, p: cst.Parameters) -> list[Param]:
        out: list[Param] = []

        def add(param: cst.Param, kind: str) -> None:
            out.append(Param(
                name=param.name.value, kind=kind,
                default=normalize_source(self.code(param.default)) if param.default is not None else None,
                annotation=(normalize_source(self.code(param.annotation.annotation))
                            if param.annotation is not None else None)))

        for q in p.posonly_params:
            add(q, POSITIONAL_ONLY)
        for q in p.params:
            add(q, POSITIONAL_OR_KEYWORD)
        if isinstance(p.star_arg, cst.Param):
            add(p.star_arg, VAR_POSITIONAL)
        for q in p.kwonly_params:
            add(q, KEYWORD_ONLY)
        if p.star_kwarg is not None:
            add(p.star_kwarg, VAR_KEYWORD)
        return out

    # -- body facts ------------------------------------------------------------------------
    @staticmethod
    def _body_statements(body: cst.BaseSuite) -> list[cst.BaseStatement]:
        stmts = list(body.body) if isinstance(body, cst.IndentedBlock) else [body]
        if stmts and isinstance(stmts[0], cst.SimpleStatementLine) and stmts[0].body \
                and isinstance(stmts[0].body[0], cst.Expr) \
                and isinstance(stmts[0].body[0].value, (cst.SimpleString, cst.ConcatenatedString)):
            stmts = stmts[1:]
        return stmts

    @staticmethod
    def _is_trivial(stmt: cst.CSTNode) -> bool:
        if isinstance(stmt, cst.SimpleStatementLine):
            return all(_ModuleParser._is_trivial(s) for s in stmt.body)
        if isinstance(stmt, cst.SimpleStatementSuite):
            return all(_ModuleParser._is_trivial(s) for s in stmt.body)
        if isinstance(stmt, cst.Pass):
            return True
        if isinstance(stmt, cst.Expr):
            return isinstance(stmt.value, (cst.Ellipsis, cst.SimpleString, cst.ConcatenatedString))
        if isinstance(stmt, cst.Raise) and stmt.exc is not None:
            exc = stmt.exc.func if isinstance(stmt.exc, cst.Call) else stmt.exc
            return _dotted(exc) == "NotImplementedError"
        return False

    @staticmethod
    def _constant_return(stmts: list[cst.BaseStatement]) -> Optional[str]:
        if len(stmts) != 1 or not isinstance(stmts[0], cst.SimpleStatementLine):
            return None
        body = stmts[0].body
        if len(body) != 1 or not isinstance(body[0], cst.Return):
            return None
        value = body[0].value
        literal = (cst.Integer, cst.Float, cst.Imaginary, cst.SimpleString, cst.ConcatenatedString)
        if value is None:
            return None
        if isinstance(value, literal) or (isinstance(value, cst.Name)
                                          and value.value in ("True", "False", "None")):
            return cst.Module([]).code_for_node(value)
        if isinstance(value, (cst.List, cst.Tuple, cst.Dict)) and not value.elements:
            return cst.Module([]).code_for_node(value)
        # `return None, None, None`: a tuple of literals (a backward that returns no gradients)
        if isinstance(value, cst.Tuple) and all(_is_literal(el.value) for el in value.elements):
            return cst.Module([]).code_for_node(value)
        return None

    @staticmethod
    def _stand_in(stmts: list[cst.BaseStatement], params: Sequence[str]) -> Optional[str]:
        """The returned value when the body is one ``return`` of an argument unchanged, a fresh
        constant tensor (``torch.zeros_like(q)``), or a tuple of those and literals with at least one
        of them, after nothing but guards (asserts, raises, warnings, checks that only do those): the
        shapes of a stand-in that computes nothing."""
        if not stmts or not isinstance(stmts[-1], cst.SimpleStatementLine) \
                or not all(_is_guard(g) for g in stmts[:-1]):
            return None
        body = stmts[-1].body
        if len(body) != 1 or not isinstance(body[0], cst.Return) or body[0].value is None:
            return None
        value = body[0].value
        names = set(params)

        def placeholder(node: cst.BaseExpression) -> bool:
            return (isinstance(node, cst.Name) and node.value in names) or _is_tensor_factory(node)

        parts = [el.value for el in value.elements] if isinstance(value, cst.Tuple) else [value]
        if any(placeholder(p) for p in parts) and all(placeholder(p) or _is_literal(p) for p in parts):
            return cst.Module([]).code_for_node(value)
        return None

    def facts(self, body: cst.BaseSuite, start: int, end: int, is_function: bool,
              comment_start: int, params: Sequence[str] = ()) -> BodyFacts:
        stmts = self._body_statements(body)
        return BodyFacts(
            is_stub=all(self._is_trivial(s) for s in stmts),
            not_implemented=self.nie_lines(start, end),
            markers=self.markers(comment_start, end),
            constant_return=self._constant_return(stmts) if is_function else None,
            stand_in=self._stand_in(stmts, params) if is_function else None,
            class_literals=[] if is_function else self._class_literals(stmts),
            statements=len(stmts))

    def _class_literals(self, stmts: list[cst.BaseStatement]) -> list[tuple[str, str]]:
        """``name = <literal>`` statements directly in a class body (``model_type = 'kda'``)."""
        out = []
        for stmt in stmts:
            if not isinstance(stmt, cst.SimpleStatementLine):
                continue
            for small in stmt.body:
                if isinstance(small, cst.Assign) and len(small.targets) == 1:
                    target, value = small.targets[0].target, small.value
                elif isinstance(small, cst.AnnAssign) and small.value is not None:
                    target, value = small.target, small.value
                else:
                    continue
                if not isinstance(target, cst.Name):
                    continue
                src = normalize_source(self.code(value))
                try:
                    ast.literal_eval(src)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
                out.append((target.value, src))
        return out

    # -- definitions -----------------------------------------------------------------------
    def add(self, d: Definition) -> None:
        self._touched.append(d.name)
        prev = self.info.definitions.get(d.name)
        if prev is None:
            d.spans = [(d.start, d.end)]
            self.info.definitions[d.name] = d
            return
        # the same name defined again (e.g. in both branches of an `if`): one symbol, many spans
        prev.spans.append((d.start, d.end))
        prev.start, prev.end = min(prev.start, d.start), max(prev.end, d.end)
        prev.citations.extend(c for c in d.citations if c not in prev.citations)
        prev.facts.markers.extend(d.facts.markers)
        prev.facts.not_implemented.extend(d.facts.not_implemented)
        prev.uses.extend(u for u in d.uses if u not in prev.uses)

    def function(self, node: cst.FunctionDef, qual: str, kind: str) -> Definition:
        start, end = self.line_range(node, node.decorators)
        decorators = [normalize_source(self.code(d.decorator)) for d in node.decorators]
        if kind == FUNCTION and any(d == "triton.jit" or d.startswith("triton.jit(") or d == "jit"
                                    for d in decorators):
            kind = KERNEL
        c_start, _ = self.leading_comment_block(start)
        uses = _collect_uses([d.decorator for d in node.decorators] + [node.params, node.body])
        return self.body_layout(Definition(
            name=qual, kind=kind, start=start, end=end, params=self.params(node.params),
            returns=normalize_source(self.code(node.returns.annotation)) if node.returns else None,
            decorators=decorators, docstring=node.get_docstring(clean=True),
            citations=self.docstring_citations(node.body, start),
            facts=self.facts(node.body, start, end, True, c_start, _param_names(node.params)), uses=uses),
            node.body)

    def klass(self, node: cst.ClassDef) -> None:
        start, end = self.line_range(node, node.decorators)
        bases = [normalize_source(self.code(b.value)) for b in node.bases if b.keyword is None]
        kind = CLASS
        for b in bases:
            if b in ("torch.autograd.Function", "autograd.Function", "Function") \
                    or b.endswith("autograd.Function"):
                kind = AUTOGRAD
            elif b.startswith(("nn.", "torch.nn.")) or b == "Module":
                kind = NN_MODULE
        c_start, _ = self.leading_comment_block(start)
        uses = _collect_uses([d.decorator for d in node.decorators] + [b.value for b in node.bases]
                             + [node.body])
        cls = Definition(
            name=node.name.value, kind=kind, start=start, end=end,
            decorators=[normalize_source(self.code(d.decorator)) for d in node.decorators],
            docstring=node.get_docstring(clean=True),
            citations=self.docstring_citations(node.body, start),
            facts=self.facts(node.body, start, end, False, c_start), bases=bases, uses=uses)
        self.body_layout(cls, node.body)
        methods = []
        for stmt, _ in self._walk_block(node.body):
            if isinstance(stmt, cst.FunctionDef):
                m = self.function(stmt, f"{node.name.value}.{stmt.name.value}", METHOD)
                m.kind = METHOD
                methods.append(stmt.name.value)
                self.add(m)
        cls.methods = list(dict.fromkeys(methods))
        self.add(cls)

    def _walk_block(self, body: cst.BaseSuite, guards: tuple = ()):
        """(statement, guarding if-tests) of a block, descending into if/else/try bodies."""
        stmts = body.body if isinstance(body, cst.IndentedBlock) else []
        for stmt in stmts:
            if isinstance(stmt, cst.If):
                if _is_type_checking(stmt.test):
                    if stmt.orelse is not None:
                        yield from self._walk_else(stmt.orelse, guards)
                    continue
                inner = guards + (stmt.test,)
                yield from self._walk_block(stmt.body, inner)
                if stmt.orelse is not None:
                    yield from self._walk_else(stmt.orelse, inner)
            elif isinstance(stmt, cst.Try):
                yield from self._walk_block(stmt.body, guards)
                for h in stmt.handlers:
                    yield from self._walk_block(h.body, guards)
                if stmt.orelse is not None:
                    yield from self._walk_block(stmt.orelse.body, guards)
                if stmt.finalbody is not None:
                    yield from self._walk_block(stmt.finalbody.body, guards)
            elif isinstance(stmt, cst.With):
                yield from self._walk_block(stmt.body, guards)
            else:
                yield stmt, guards

    def _walk_else(self, orelse, guards: tuple):
        if isinstance(orelse, cst.If):
            yield from self._walk_block(cst.IndentedBlock(body=[orelse]), guards)
        else:
            yield from self._walk_block(orelse.body, guards)

    def assignment(self, line: cst.SimpleStatementLine) -> None:
        start, end = self.line_range(line)
        for small in line.body:
            targets: list[cst.BaseExpression] = []
            value = None
            if isinstance(small, cst.Assign):
                targets = [t.target for t in small.targets]
                value = small.value
            elif isinstance(small, cst.AnnAssign) and small.value is not None:
                targets = [small.target]
                value = small.value
            elif isinstance(small, (cst.Import, cst.ImportFrom)):
                self.imports(small)
                continue
            else:
                continue
            names = []
            for t in targets:
                if isinstance(t, cst.Name):
                    names.append(t.value)
                elif isinstance(t, (cst.Tuple, cst.List)):
                    names.extend(el.value.value for el in t.elements if isinstance(el.value, cst.Name))
            if "__all__" in names and isinstance(value, (cst.List, cst.Tuple)):
                self.info.dunder_all = [ast.literal_eval(self.code(el.value)) for el in value.elements
                                        if isinstance(el.value, cst.SimpleString)]
                continue
            c_start, comments = self.leading_comment_block(start)
            literal = None
            if value is not None:
                src = normalize_source(self.code(value))
                try:
                    ast.literal_eval(src)
                    literal = src
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    literal = None
            # computed once per statement: `a = b = ... = 1` names many constants on one line
            citations = parse_citations(comments, c_start) if comments else []
            markers = self.markers(c_start, end)
            uses = _collect_uses([value]) if value is not None else []
            for name in names:
                self.add(Definition(
                    name=name, kind=CONSTANT, start=start, end=end, decorators=[], citations=list(citations),
                    facts=BodyFacts(markers=list(markers), literal_value=literal), uses=list(uses)))

    def imports(self, node: cst.CSTNode) -> None:
        info = self.info
        if isinstance(node, cst.Import):
            for alias in node.names:
                full = _dotted(alias.name)
                if alias.asname is not None:
                    info.imports[alias.asname.name.value] = ImportRef(full)
                else:
                    top = full.split(".")[0]
                    info.imports.setdefault(top, ImportRef(top))
        elif isinstance(node, cst.ImportFrom):
            target = _dotted(node.module) if node.module is not None else None
            level = len(node.relative)
            absolute = _absolute(info.module, info.is_package, level, target)
            if isinstance(node.names, cst.ImportStar):
                info.star_imports.append(absolute)
                return
            for alias in node.names:
                name = alias.name.value
                local = alias.asname.name.value if alias.asname is not None else name
                info.imports[local] = ImportRef(absolute, name)

    def attach_bodies(self) -> None:
        try:
            bodies = definition_bodies(self.source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return    # a syntax this interpreter cannot read: bodies are not compared (PA602)
        for name, d in self.info.definitions.items():
            d.body_src = bodies.get(name)

    def run(self) -> ModuleInfo:
        for stmt, guards in self._walk_block(cst.IndentedBlock(body=self.tree.body)):
            self._touched: list[str] = []
            if isinstance(stmt, cst.FunctionDef):
                self.add(self.function(stmt, stmt.name.value, FUNCTION))
            elif isinstance(stmt, cst.ClassDef):
                self.klass(stmt)
            elif isinstance(stmt, cst.SimpleStatementLine):
                self.assignment(stmt)
            if guards:
                # a conditional definition needs the names its guarding conditions read
                guard_uses = _collect_uses(list(guards))
                for k in self._touched:
                    d = self.info.definitions[k]
                    d.uses.extend(u for u in guard_uses if u not in d.uses)
        self.attach_bodies()
        # a class deriving from a local nn.Module / autograd.Function is one too
        defs = self.info.definitions
        for _ in range(3):
            for d in defs.values():
                if d.kind == CLASS:
                    for b in d.bases:
                        if b in defs and defs[b].kind in (NN_MODULE, AUTOGRAD):
                            d.kind = defs[b].kind
        return self.info


def parse_module_source(source: str, module: str, path: str, sha: str, is_package: bool) -> ModuleInfo:
    return _ModuleParser(source, module, path, sha, is_package).run()


def parse_module_bytes(data: bytes, module: str, path: str, sha: str, is_package: bool) -> ModuleInfo:
    """Decode (PEP 263), check the parser's limits, parse; every failure is one SourceError line
    naming the file (exit 2), never a crash of the interpreter."""
    text = decode_source(data, path).text
    check_parse_limits(text, path)
    try:
        return parse_module_source(text, module, path, sha, is_package)
    except cst.ParserSyntaxError as exc:
        detail = exc.message.split(": error at ", 1)[-1] if exc.message else "syntax error"
        raise SourceError(f"{path}:{exc.editor_line}:{exc.editor_column}: cannot parse the module "
                          f"({detail.splitlines()[0][:200]}); fix the syntax error") from None
    except RecursionError:
        raise SourceError(f"{path}: nested too deeply for the parser; refusing it") from None
    except MemoryError:
        raise SourceError(f"{path}: too large for the parser; refusing it") from None
