"""Python source files as the interpreter reads them: bytes, declared encoding, lines.

Every place that reads or rewrites a port or upstream module goes through here so that they all
agree with libcst (and Python's tokenizer) on two things:

* the text: the encoding is the one the file declares (PEP 263 cookie or UTF-8 BOM, else UTF-8),
  and what cannot be decoded, a UTF-16 file or a NUL byte is one clear error naming the file;
* the lines: only ``\\r\\n``, ``\\r`` and ``\\n`` end a line. ``str.splitlines`` also splits at
  form feeds, U+0085, U+2028 and friends, which may sit inside string constants and comments,
  and would shift every line number after them.
"""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from portaudit.errors import UsageError
from portaudit.safe_io import read_regular

MAX_SOURCE_BYTES = 4 << 20   # the largest module in fla, torch or transformers is under 300 kB
# libcst's parse tree costs ~2 kB and ~0.1 ms per token: a 2M-token file takes minutes and 8 GB.
# The largest modules of fla 0.4.0/0.6.0, torch and transformers have under 50k tokens.
MAX_TOKENS = 200_000
# libcst (a native parser, then recursive visitors) crashes the interpreter (SIGSEGV) on deeply
# nested code: ~2000 nested parentheses, ~10000 chained `and`/`lambda`/`*` ... in one expression.
# The pre-scan's nesting estimate (brackets plus chained operators within one element, see
# nesting_estimate) is at most 33 in fla and 50 in sympy's tests; 200 leaves libcst far from a
# crash (its own recursion limit, a clean RecursionError, comes first).
MAX_NESTING = 200

_LINE_END = re.compile(r"\r\n|\r|\n")


class SourceError(UsageError):
    """A source file that cannot be read as Python source (exit 2, one line naming the file)."""


@dataclass
class SourceText:
    path: str
    data: bytes
    text: str
    encoding: str      # as tokenize.detect_encoding names it: 'utf-8', 'utf-8-sig', 'iso-8859-1', ...

    def encode(self, text: str) -> bytes:
        """``text`` in this file's encoding (a BOM stays a BOM)."""
        try:
            return text.encode(self.encoding)
        except UnicodeEncodeError as exc:
            raise SourceError(f"{self.path}: the new text has {exc.object[exc.start:exc.end]!r}, which the "
                              f"file's declared encoding {self.encoding} cannot hold; nothing was written")


def split_lines(text: str, keepends: bool = False) -> list[str]:
    """Lines as Python counts them (see the module docstring). ``keepends`` keeps each ending."""
    if not keepends:
        lines = _LINE_END.split(text)
        if lines and lines[-1] == "":
            lines.pop()
        return lines
    out, pos = [], 0
    for m in _LINE_END.finditer(text):
        out.append(text[pos:m.end()])
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def line_ending(line: str) -> str:
    """The ending of a line from ``split_lines(..., keepends=True)`` ('' for a last unterminated one)."""
    if line.endswith("\r\n"):
        return "\r\n"
    if line.endswith(("\r", "\n")):
        return line[-1]
    return ""


def _undecodable(path: str, data: bytes, exc: UnicodeDecodeError, encoding: str) -> SourceError:
    line = len(_LINE_END.findall(data[:exc.start].decode("latin-1"))) + 1
    return SourceError(f"{path}:{line}: byte {data[exc.start:exc.start + 1]!r} is not valid {encoding}; "
                       "Python source must be UTF-8 or declare its encoding (PEP 263)")


def decode_source(data: bytes, path: str) -> SourceText:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"{path}: the file is UTF-16; Python source must be UTF-8 (or declare an "
                          "ASCII-compatible encoding, PEP 263)")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except SyntaxError as exc:     # a bad declaration, or undecodable bytes in the first two lines
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as undecodable:
            raise _undecodable(path, data, undecodable, "utf-8") from None
        raise SourceError(f"{path}: {exc.msg}; fix the encoding declaration (PEP 263)") from None
    except UnicodeDecodeError as exc:
        raise _undecodable(path, data, exc, encoding) from None
    except LookupError:
        raise SourceError(f"{path}: unknown source encoding '{encoding}'")
    nul = text.find("\0")
    if nul >= 0:
        line = len(_LINE_END.findall(text, 0, nul)) + 1
        raise SourceError(f"{path}:{line}: the source contains a NUL byte, which Python refuses")
    return SourceText(path, data, text, encoding)


_OPEN = frozenset("([{")
_CLOSE = frozenset(")]}")
_SIBLING = frozenset((",", ";", "=", ":="))              # separate siblings: they do not nest
_FLAT = frozenset((",", ";", ":", "=", "->")) | _CLOSE  # never add a level
_NESTING_WORDS = frozenset(("and", "or", "not", "if", "else", "lambda", "await", "for", "async", "yield",
                            "in", "is", "from"))


def _tokens(text: str):
    # universal newlines: a lone CR ends a line, as Python itself reads it (Python 3.12's tokenizer
    # refuses a CR inside a line, which is what a CR-only file would otherwise be)
    return tokenize.generate_tokens(io.StringIO(text, newline=None).readline)


def check_parse_limits(text: str, path: str) -> None:
    """Refuse, with one line, source that would exhaust libcst (MAX_TOKENS, MAX_NESTING).

    One pass of Python's pure-Python tokenizer estimates the deepest nesting of any expression:
    for each bracket level, the operators, keywords and implicit string concatenations chained
    since the last comma (each can add one level to the tree) plus one per open bracket. The
    estimate is never below the real depth of the tree libcst builds, and commas reset it, so a
    long flat list or argument list costs nothing.
    """
    count = 0
    stack = [0]        # per open bracket: levels chained since its last comma
    total = 0          # sum(stack)
    opened = []        # (bracket, line) of each open bracket
    prev_string = False
    try:
        for tok in _tokens(text):
            count += 1
            if count > MAX_TOKENS:
                raise SourceError(f"{path}: over {MAX_TOKENS} tokens, more than this tool parses "
                                  "(the largest real modules have under 50k); refusing it")
            kind, s = tok.type, tok.string
            if kind == tokenize.NEWLINE:
                stack, total, prev_string = [0], 0, False
                continue
            if kind in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                continue
            is_string = kind == tokenize.STRING or kind == getattr(tokenize, "FSTRING_START", -1)
            if kind == tokenize.OP and s in _OPEN:
                stack[-1] += 1
                total += 1
                stack.append(0)
                opened.append((s, tok.start[0]))
            elif kind == tokenize.OP and s in _CLOSE:
                if len(stack) > 1:
                    total -= stack.pop()
                    opened.pop()
            elif kind == tokenize.OP and s in _SIBLING:
                total -= stack[-1]
                stack[-1] = 0
            elif (kind == tokenize.OP and s not in _FLAT) or (kind == tokenize.NAME and s in _NESTING_WORDS) \
                    or (is_string and prev_string):
                stack[-1] += 1
                total += 1
            prev_string = is_string
            if total + len(stack) > MAX_NESTING:
                raise SourceError(f"{path}:{tok.start[0]}:{tok.start[1] + 1}: expression nested more than "
                                  f"{MAX_NESTING} levels deep, more than this tool parses; refusing it")
    except (tokenize.TokenError, SyntaxError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        line = exc.args[1][0] if isinstance(exc, tokenize.TokenError) and len(exc.args) > 1 else \
            getattr(exc, "lineno", None)
        if isinstance(exc, tokenize.TokenError) and "multi-line statement" in msg and opened:
            # the end of the file inside brackets (Python versions name different lines for it):
            # name the bracket that is never closed
            bracket, line = opened[-1]
            msg = f"'{bracket}' never closed"
        raise SourceError(f"{path}:{line or 1}: cannot tokenize the source: {msg}") from None


def read_source(path: Union[str, Path]) -> SourceText:
    """Read and decode one source file (a regular file within MAX_SOURCE_BYTES)."""
    name = str(path)
    return decode_source(read_regular(name, MAX_SOURCE_BYTES, "source file"), name)
