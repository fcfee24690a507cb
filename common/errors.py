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
MAX_MESSAGE_BYTES = 960
"""Longest metadata error message (UTF-8 bytes): with the job's prefix, one message stays under 1 KB."""

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


def fit_bytes(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` cut so that its UTF-8 form has at most ``limit`` bytes."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


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
        text = f"{_cut(where, SHOWN_CHARS)}: {_cut(self.detail, 300)}"
        if self.value is not None:
            text += f" (got {shorten(self.value)})"
        if self.fix:
            text += f". Fix: {_cut(self.fix, 250)}"
        return fit_bytes(text)


class SpecErrors(SpecError):
    """Several metadata problems found in one pass, reported together."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        shown: list[str] = []
        size = 0
        for error in errors[:MAX_LISTED]:
            line = str(error)
            if shown and size + len(line.encode("utf-8", "backslashreplace")) > MAX_MESSAGE_BYTES - 60:
                break  # one message stays short: the first problems, then how many more
            shown.append(line)
            size += len(line.encode("utf-8", "backslashreplace")) + 1
        if len(errors) > len(shown):
            shown.append(f"... and {len(errors) - len(shown)} more problems; fix these first")
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


class EstimatorError(DataError):
    """A fit or prediction the model's estimator or a preprocessing step refused (e.g. missing values)."""


class StoreError(LoomError):
    """An online or offline store that cannot be reached or used."""


class ModelError(LoomError):
    """A trained model that cannot be served as trained (e.g. its fast predictor disagrees with it)."""
