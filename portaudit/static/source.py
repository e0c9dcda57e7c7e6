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


def decode_source(data: bytes, path: str) -> SourceText:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"{path}: the file is UTF-16; Python source must be UTF-8 (or declare an "
                          "ASCII-compatible encoding, PEP 263)")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        raise SourceError(f"{path}: {exc.msg}; fix the encoding declaration (PEP 263)")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = len(_LINE_END.findall(data[:exc.start].decode("latin-1"))) + 1
        raise SourceError(f"{path}:{line}: byte {data[exc.start:exc.start + 1]!r} is not valid {encoding}; "
                          "Python source must be UTF-8 or declare its encoding (PEP 263)")
    except LookupError:
        raise SourceError(f"{path}: unknown source encoding '{encoding}'")
    nul = text.find("\0")
    if nul >= 0:
        line = len(_LINE_END.findall(text, 0, nul)) + 1
        raise SourceError(f"{path}:{line}: the source contains a NUL byte, which Python refuses")
    return SourceText(path, data, text, encoding)


def read_source(path: Union[str, Path]) -> SourceText:
    """Read and decode one source file (a regular file within MAX_SOURCE_BYTES)."""
    name = str(path)
    return decode_source(read_regular(name, MAX_SOURCE_BYTES, "source file"), name)
