"""A YAML reader for metadata written by people or by careless tools: hostile input gives one clear error.

``yaml.safe_load`` already refuses Python objects; on top of it this reader refuses:

* bytes that are not UTF-8 (the error names the line);
* nesting deeper than :data:`MAX_DEPTH` (PyYAML's Python composer recursed: 1,000 levels ended in a
  RecursionError; libyaml itself stops at 1,000);
* aliases that expand past :data:`MAX_NODES` values in total ("billion laughs": a few lines that
  expand to billions of values hang whatever walks them) and aliases that contain themselves;
* the same key twice in one mapping (YAML says keys are unique; PyYAML silently keeps the last one).
  Merge keys (``<<: *base``) may still be overridden, as YAML intends.

Errors are :class:`YamlProblem` with a line number; the loader turns them into a ``SpecError``.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists; real metadata stays under 10."""
MAX_NODES = 100_000
"""Most values a document may hold once its aliases are expanded; real metadata has a few thousand."""


class YamlProblem(ValueError):
    """A document this reader refuses, with the 1-based line where it was found (if known)."""

    def __init__(self, message: str, line: int | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.fix = fix


def _line(node_or_mark: Any) -> int | None:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1 if mark is not None and hasattr(mark, "line") else None


try:  # libyaml when PyYAML is built with it: 10x faster than the Python parser
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser as _Parser  # type: ignore[assignment]


class _SafeLoader(_Parser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """Safe constructor (no Python objects) that refuses duplicate keys; libyaml parses and composes."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int | None] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key; PyYAML reports it below
                    continue
                if duplicate:
                    raise YamlProblem(
                        f"key {_short(key)} appears twice in one mapping (first at line {seen[key]})",
                        _line(key_node),
                        "keep one of them; YAML keys must be unique and Loom does not guess which one you meant",
                    )
                seen[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_graph(root: Node) -> None:
    """Refuse nesting past :data:`MAX_DEPTH`, aliases that expand past :data:`MAX_NODES` or into themselves.

    Walks the composed nodes without recursion (a deep document must not hit Python's
    recursion limit); an alias is the same node object met again, so each node's expanded
    size is computed once.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise YamlProblem(
                    f"the document expands to more than {MAX_NODES:,} values (aliases such as *a repeat their anchor)",
                    _line(node),
                    "remove the nested aliases (an 'alias bomb'); write the values out",
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YamlProblem(
                "an alias refers to a mapping or list that contains it (an endless value)",
                _line(node),
                "refer only to anchors defined outside the value that uses them",
            )
        if isinstance(node, ScalarNode):
            sizes[key] = 1
            continue
        if depth > MAX_DEPTH:
            raise YamlProblem(
                f"nesting deeper than {MAX_DEPTH} levels",
                _line(node),
                "flatten the structure; metadata needs only a few levels",
            )
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def decode(data: bytes) -> str:
    """UTF-8 text of ``data``; :class:`YamlProblem` naming the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise YamlProblem(
            f"byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8",
            line,
            "save the file as UTF-8 (and remove stray binary bytes)",
        ) from None


def _check_nesting(text: str) -> None:
    """Refuse nesting past :data:`MAX_DEPTH` from the event stream, before anything recursive runs."""
    parser = _Parser(text)
    depth = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise YamlProblem(
                        f"nesting deeper than {MAX_DEPTH} levels",
                        _line(event),
                        "flatten the structure; metadata needs only a few levels",
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        parser.dispose()


def load(text: str) -> Any:
    """Parse one YAML document safely (see the module docstring)."""
    _check_nesting(text)
    loader = _SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_graph(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()
