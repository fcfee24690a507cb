"""The one exception hierarchy for errors a user can fix.

Jobs catch :class:`LoomError` at the top level and print its message without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import reprlib

SHOWN_CHARS = 200
"""Longest value or detail an error message shows: a 1 MB value must not make a 1 MB message."""
MAX_LISTED = 5
"""Most problems :class:`SpecErrors` lists; the rest are counted."""

_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxstring = SHOWN_CHARS
_REPR.maxother = 60
_REPR.maxlong = 60


def shorten(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, without building the whole repr first
    (a value may be huge, deeply nested or full of repeated parts)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cut(text: str, limit: int = 2 * SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LoomError(Exception):
    """Base class: a problem the user can fix. The message says what and how."""


class SpecError(LoomError):
    """Metadata that cannot be loaded or validated.

    Carries the file, the YAML path, the bad value and the fix so that every
    message reads the same way.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        path: str | None = None,
        value: object = None,
        fix: str | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.value = value
        self.fix = fix
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or "<metadata>"
        if self.path:
            where = f"{where}: {self.path}"
        text = f"{_cut(where)}: {_cut(self.detail)}"
        if self.value is not None:
            text += f" (got {shorten(self.value)})"
        if self.fix:
            text += f". Fix: {_cut(self.fix)}"
        return text


class SpecErrors(SpecError):
    """Several metadata problems found in one pass, reported together."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        shown = [str(e) for e in errors[:MAX_LISTED]]
        if len(errors) > MAX_LISTED:
            shown.append(f"... and {len(errors) - MAX_LISTED} more problems; fix these first")
        LoomError.__init__(self, "\n".join(shown))
        self.file = errors[0].file if errors else None
        self.path = errors[0].path if errors else None
        self.value = None
        self.fix = None
        self.detail = str(self)


class CompileError(SpecError):
    """A valid spec whose plan would be wrong (cycles, PII leaks, bad refs)."""


class PrivacyError(CompileError):
    """A plan that would let raw PII reach a feature, a store or a log."""


class ConfigError(LoomError):
    """Environment or setup problem: missing key, jar, server or profile."""


class DataError(LoomError):
    """Input data that cannot be processed as a whole (not per-record errors,
    which are quarantined)."""


class StoreError(LoomError):
    """An online or offline store that cannot be reached or used."""
