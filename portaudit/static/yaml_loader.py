"""Bounded, strict YAML loading for manifests and implementation files.

A manifest is input from anyone (a pull request, a downloaded example), so loading it must be
cheap and unambiguous whatever it holds:

* only a regular file of at most ``MAX_YAML_BYTES`` is read (a FIFO or ``/dev/zero`` named as a
  manifest is refused at once, see :func:`portaudit.safe_io.read_regular`);
* the document is composed once, and its node graph is measured with aliases expanded before
  anything walks it: more than ``MAX_NODES`` nodes (a 600-byte "billion laughs" alias bomb
  expands to 10^7), nesting deeper than ``MAX_DEPTH`` or a recursive alias is refused;
* a key repeated in one mapping is an error (YAML would silently keep the last value, e.g. drop
  a whole ``stages:`` list);
* every problem is one :class:`portaudit.errors.UsageError` line ``file:line:col: ...``.

Values are built with PyYAML's safe constructor (plain data, never objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from portaudit.errors import UsageError
from portaudit.safe_io import read_regular

MAX_YAML_BYTES = 2 << 20   # the committed manifests are ~12 kB; a 10k-symbol manifest is ~600 kB
MAX_NODES = 200_000        # after alias expansion; ~20 nodes per symbol entry
MAX_DEPTH = 40             # a manifest nests 6 levels deep

_MERGE = "tag:yaml.org,2002:merge"


@dataclass
class YamlDocument:
    data: Any                 # the constructed value (None for an empty document)
    node: Optional[Node]      # the composed node graph, for positions


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.get(key)
                except TypeError:
                    continue   # unhashable: the base class reports it
                if seen is not None:
                    raise ConstructorError(
                        None, None, f"duplicate key '{key}' (first at line {seen.start_mark.line + 1}); "
                        "YAML would keep only the last value", key_node.start_mark)
                first[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _where(file: str, mark) -> str:
    return f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file


def _children(node: Node) -> list:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_node_graph(node: Node, file: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """Expanded size of the node graph (aliases counted every time they are used); a UsageError
    when it exceeds ``max_nodes``, nests deeper than ``max_depth`` or an alias contains itself.

    Sizes are memoised per node, so measuring costs one visit per distinct node however large
    the expansion is; the walk is iterative (no recursion limit to hit)."""
    size: dict = {}
    depth: dict = {}
    on_path: set = set()
    stack: list = [(node, False)]
    while stack:
        current, finished = stack.pop()
        key = id(current)
        if finished:
            on_path.discard(key)
            kids = _children(current)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > max_nodes:
                raise UsageError(f"{_where(file, current.start_mark)}: this YAML expands to more than {max_nodes} "
                                 "values (aliases are expanded every time they are used); refusing it")
            if depth[key] > max_depth:
                raise UsageError(f"{_where(file, current.start_mark)}: YAML nested deeper than {max_depth} "
                                 "levels; refusing it")
            continue
        if key in size:
            continue
        if key in on_path:
            raise UsageError(f"{_where(file, current.start_mark)}: a YAML alias that contains itself; refusing it")
        on_path.add(key)
        stack.append((current, True))
        stack.extend((k, False) for k in _children(current) if id(k) not in size)
    return size[id(node)]


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Compose, measure and construct one YAML document from ``text`` (reported as ``file``)."""
    loader = None
    try:
        loader = _StrictLoader(text)   # the reader refuses unprintable characters (NUL) right here
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, None)
        check_node_graph(node, file)
        return YamlDocument(loader.construct_document(node), node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise UsageError(f"{_where(file, mark)}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{file}: invalid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    except RecursionError:
        raise UsageError(f"{file}: YAML nested too deeply to read; refusing it") from None
    except (ValueError, OverflowError) as exc:
        # a value PyYAML's constructors reject: a 5000-digit integer, a 13th month in a date
        raise UsageError(f"{file}: invalid YAML value: {str(exc).splitlines()[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: Union[str, Path], what: str = "manifest") -> YamlDocument:
    """Read (bounded, regular files only), decode (UTF-8) and parse a YAML file."""
    file = str(path)
    data = read_regular(file, MAX_YAML_BYTES, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UsageError(f"{file}:{line}: the {what} is not UTF-8 (byte {data[exc.start:exc.start + 1]!r}); "
                         "save it as UTF-8") from None
    return parse_yaml(text, file)
