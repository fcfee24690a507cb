"""Find known raw values in stored data: Parquet cells, text and binary files, Redis values.

A :class:`Needle` is one raw value of one person (e.g. the email of C00000042).
Matching is case-insensitive. A value of at least :data:`SUBSTRING_LENGTH`
characters is found anywhere, inside any text (a name inside a log line, an
email inside a JSON blob); a shorter one only as a whole token (not next to a
letter or digit), so that a 5-digit zip code is not "found" inside a hex
digest or a longer number. Values shorter than :data:`MIN_LENGTH` are not
searched: they would match noise. Matching runs in Arrow's RE2 over the
distinct values of each column or line set, so a large file costs one pass.

Hits name the needle's origin and subject, never the value itself, so an
audit report does not become a leak of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

MIN_LENGTH = 4
SUBSTRING_LENGTH = 8
_CHUNK = 200  # needles per RE2 pattern: keeps each automaton small
_RE2_SPECIAL = set("\\.^$|?*+()[]{}")
_BOUNDARY = "[^0-9a-z]"


@dataclass(frozen=True)
class Needle:
    """One raw value to look for; ``origin`` is ``<source>.<column>``, ``subject`` the entity key."""

    text: str
    subject: str
    origin: str

    @property
    def label(self) -> str:
        """How a hit names the value: never the value itself."""
        return f"raw {self.origin} of {self.subject}"


def _re2_escape(text: str) -> str:
    return "".join("\\" + char if char in _RE2_SPECIAL else char for char in text)


class Matcher:
    """Compiled search for a set of needles."""

    def __init__(self, needles: Iterable[Needle], *, whole_tokens: bool = False) -> None:
        """``whole_tokens``: match every needle as a whole token only (for ids such as C00000042)."""
        self.by_text: dict[str, list[Needle]] = {}
        for needle in needles:
            text = needle.text.strip().lower()
            if len(text) >= MIN_LENGTH:
                self.by_text.setdefault(text, []).append(needle)
        substring = 10**9 if whole_tokens else SUBSTRING_LENGTH
        self.long = sorted(t for t in self.by_text if len(t) >= substring)
        self.short = {
            t: re.compile(r"(?<![0-9a-z])" + re.escape(t) + r"(?![0-9a-z])")
            for t in sorted(self.by_text)
            if len(t) < substring
        }
        self.patterns: list[str] = []
        for low in range(0, len(self.long), _CHUNK):
            self.patterns.append("(?:" + "|".join(_re2_escape(t) for t in self.long[low : low + _CHUNK]) + ")")
        short = sorted(self.short)
        for low in range(0, len(short), _CHUNK):
            alternatives = "|".join(_re2_escape(t) for t in short[low : low + _CHUNK])
            self.patterns.append(f"(?:^|{_BOUNDARY})(?:{alternatives})(?:{_BOUNDARY}|$)")

    def __len__(self) -> int:
        return len(self.by_text)

    def confirm(self, values: Iterable[str]) -> set[Needle]:
        """Needles found in ``values`` (exact check, for the few values RE2 flagged)."""
        found: set[Needle] = set()
        for value in values:
            low = value.lower()
            for text in self.long:
                if text in low:
                    found.update(self.by_text[text])
            for text, pattern in self.short.items():
                if text in low and pattern.search(low):
                    found.update(self.by_text[text])
        return found

    def find_in_array(self, values: pa.Array | pa.ChunkedArray) -> set[Needle]:
        """Needles found in a string array."""
        if not self.patterns or len(values) == 0:
            return set()
        unique = pc.unique(values)
        unique = unique.filter(pc.is_valid(unique))
        if len(unique) == 0:
            return set()
        mask = None
        for pattern in self.patterns:
            hit = pc.match_substring_regex(unique, pattern=pattern, ignore_case=True)
            mask = hit if mask is None else pc.or_(mask, hit)
        flagged = unique.filter(mask).to_pylist()
        return self.confirm(flagged) if flagged else set()

    def find_in_text(self, text: str) -> set[Needle]:
        """Needles found in a text (searched line by line)."""
        return self.find_in_array(pa.array(text.splitlines(), type=pa.large_string()))

    def find_in_bytes(self, data: bytes) -> set[Needle]:
        """Needles found in bytes: UTF-8 when it decodes, else each byte as one character (Latin-1)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        return self.find_in_text(text)


def string_arrays(array: pa.Array | pa.ChunkedArray) -> Iterator[pa.Array]:
    """Every string-like leaf of ``array``: strings, binaries (as Latin-1), dates, and inside structs,
    lists and maps. Numbers and timestamps are not searched."""
    if isinstance(array, pa.ChunkedArray):
        for chunk in array.chunks:
            yield from string_arrays(chunk)
        return
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        yield array
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        distinct = pc.unique(array).to_pylist()
        yield pa.array([value.decode("latin-1") if value is not None else None for value in distinct])
    elif pa.types.is_date(kind):
        yield pc.cast(array, pa.string())
    elif pa.types.is_struct(kind):
        for index in range(kind.num_fields):
            yield from string_arrays(array.field(index))
    elif pa.types.is_map(kind):
        yield from string_arrays(array.keys)
        yield from string_arrays(array.items)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        yield from string_arrays(array.flatten())
    elif pa.types.is_dictionary(kind):
        yield from string_arrays(array.dictionary)


def scan_parquet(path: Path, matcher: Matcher) -> dict[str, set[Needle]]:
    """Needles per column of one Parquet file (all row groups, all columns)."""
    import pyarrow.parquet as pq

    found: dict[str, set[Needle]] = {}
    table = pq.read_table(path)
    for name, column in zip(table.column_names, table.columns, strict=True):
        hits: set[Needle] = set()
        for leaf in string_arrays(column):
            hits |= matcher.find_in_array(leaf)
        if hits:
            found[name] = hits
    return found


def scan_file(path: Path, matcher: Matcher) -> dict[str, set[Needle]]:
    """Needles in one file: per column for Parquet, ``{"": ...}`` for any other file."""
    if path.suffix == ".parquet":
        try:
            return scan_parquet(path, matcher)
        except (pa.ArrowInvalid, OSError):
            pass  # not readable as Parquet (e.g. truncated): search its bytes instead
    hits = matcher.find_in_bytes(path.read_bytes())
    return {"": hits} if hits else {}
