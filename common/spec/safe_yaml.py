"""A YAML reader for metadata written by people or by careless tools: hostile input gives one clear error.

``yaml.safe_load`` already refuses Python objects; on top of it this reader refuses:

* bytes that are not UTF-8 (the error names the line);
* nesting deeper than :data:`MAX_DEPTH` (PyYAML composes recursively: 1,000 levels end in a RecursionError);
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


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader with a nesting limit and refused duplicate keys."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # Counted here, before PyYAML recurses, so a deep document never reaches Python's recursion limit.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlProblem(
                    f"nesting deeper than {MAX_DEPTH} levels",
                    _line(self.peek_event()),
                    "flatten the structure; metadata needs only a few levels",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

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


def _check_expansion(root: Node) -> None:
    """Refuse a graph of nodes whose aliases expand past :data:`MAX_NODES` or into themselves."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise YamlProblem(
                "an alias refers to a mapping or list that contains it (an endless value)",
                _line(node),
                "refer only to anchors defined outside the value that uses them",
            )
        if isinstance(node, ScalarNode):
            return 1
        on_path.add(key)
        total = 1
        children = node.value if isinstance(node, SequenceNode) else [part for pair in node.value for part in pair]
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise YamlProblem(
                    f"the document expands to more than {MAX_NODES:,} values (aliases such as *a repeat their anchor)",
                    _line(node),
                    "remove the nested aliases (an 'alias bomb'); write the values out",
                )
        on_path.discard(key)
        sizes[key] = total
        return total

    size(root)


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


def load(text: str) -> Any:
    """Parse one YAML document safely (see the module docstring)."""
    loader = _SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()
