"""Load a use case's YAML files and validate them into a :class:`UseCase`.

A use case lives in ``metadata/<name>/`` as one or more ``*.yaml`` files whose
top-level sections are merged (``entities``, ``sources`` and ``feature_groups``
item by item). Every error names the file, the YAML path, the value and a fix.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from common.errors import SpecError, SpecErrors, shorten
from common.settings import RESOURCE_ROOT
from common.spec import safe_yaml
from common.spec.avro import check_avro_schemas
from common.spec.references import check_references
from common.spec.usecase import UseCase

BUNDLED_METADATA = RESOURCE_ROOT / "metadata"
"""The example use cases shipped with Loom: searched last."""
METADATA_ROOT = BUNDLED_METADATA  # kept for callers of the old name
METADATA_ENV = "LOOM_METADATA"
"""Folder of the user's use cases (``--metadata-dir`` sets it for the job and the processes it starts)."""
MERGED_SECTIONS = ("entities", "sources", "feature_groups")


def metadata_roots() -> list[tuple[Path, str]]:
    """Folders searched for a use case given by name, in order, each with how it was chosen:
    ``--metadata-dir`` / ``$LOOM_METADATA``, else ``./metadata`` of the current directory; then the
    bundled examples (once, when they are not that same folder)."""
    configured = os.environ.get(METADATA_ENV)
    if configured:
        user = (Path(configured).expanduser().resolve(), f"--metadata-dir / ${METADATA_ENV}")
    else:
        user = (Path.cwd().resolve() / "metadata", "./metadata of the current directory")
    roots = [user]
    bundled = BUNDLED_METADATA.resolve()
    if bundled != user[0]:
        roots.append((bundled, "Loom's bundled examples"))
    return roots


def _use_cases_in(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def usecase_dir(name: str, root: Path | None = None) -> Path:
    """Folder of use case ``name``: the first of :func:`metadata_roots` (or ``root`` alone) that holds it;
    else an error that lists where it looked and how to create it in the user's folder."""
    roots = [(root, "given folder")] if root is not None else metadata_roots()
    for folder, _ in roots:
        candidate = folder / name
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    looked = "; ".join(f"{folder} ({why}: {_use_cases_in(folder) or 'no use cases'})" for folder, why in roots)
    target = roots[0][0] / name / "usecase.yaml"
    raise SpecError(
        f"no use case named {name!r}; looked in {looked}",
        file=str(roots[0][0] / name),
        fix=f"create {target} (run from your project folder, or pass --metadata-dir DIR or set "
        f"{METADATA_ENV}), pass --usecase path/to/{name}, or use one of the names listed",
    )


class Origins:
    """Which file each part of the merged document came from."""

    def __init__(self) -> None:
        self.default: str | None = None
        self._by_key: dict[tuple[str, ...], str] = {}

    def add(self, key: tuple[str, ...], file: str) -> None:
        self._by_key[key] = file

    def as_dict(self) -> dict[tuple[str, ...], str]:
        return dict(self._by_key)

    def file_for(self, path: tuple[Any, ...]) -> str | None:
        for size in (2, 1):
            key = tuple(str(p) for p in path[:size])
            if key in self._by_key:
                return self._by_key[key]
        return self.default


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML file safely (:mod:`common.spec.safe_yaml`); every problem names the line and a fix."""
    try:
        data = safe_yaml.load(safe_yaml.decode(path.read_bytes()))
    except safe_yaml.YamlProblem as err:
        where = f"line {err.line}: " if err.line else ""
        raise SpecError(f"{where}{err}", file=str(path), fix=err.fix) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(
            f"invalid YAML at {where}: {shorten(problem)}",
            file=str(path),
            fix="correct the syntax there (indentation, a missing ':' or an unclosed quote or bracket)",
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            "the top level must be a mapping of sections",
            file=str(path),
            value=type(data).__name__,
            fix="start the file with keys such as name:, entities:, sources:",
        )
    return data


def merge_documents(files: list[Path]) -> tuple[dict[str, Any], Origins]:
    """Merge the top-level sections of several YAML files, refusing duplicates."""
    merged: dict[str, Any] = {}
    origins = Origins()
    origins.default = str(files[0]) if files else None
    for path in files:
        data = read_yaml(path)
        for section, value in data.items():
            if section in MERGED_SECTIONS and isinstance(value, dict):
                target = merged.setdefault(section, {})
                if not isinstance(target, dict):
                    continue
                for item, body in value.items():
                    if item in target:
                        raise SpecError(
                            f"{section} {item!r} is defined twice",
                            file=str(path),
                            path=f"{section}.{item}",
                            fix=f"keep one definition (the other is in {origins.file_for((section, item))})",
                        )
                    target[item] = body
                    origins.add((section, str(item)), str(path))
                origins.add((section,), str(path))
            else:
                if section in merged:
                    raise SpecError(
                        f"section {section!r} is defined twice",
                        file=str(path),
                        path=section,
                        fix=f"keep it in one file (it is also in {origins.file_for((section,))})",
                    )
                merged[section] = value
                origins.add((section,), str(path))
    return merged, origins


def load_usecase(name_or_path: str | Path, root: Path | None = None) -> UseCase:
    """Load and validate a use case by name (``churn``) or by folder or file path."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        files = [candidate]
    elif candidate.is_dir():
        files = sorted(candidate.glob("*.yaml"))
    else:
        files = sorted(usecase_dir(str(name_or_path), root).glob("*.yaml"))
    if not files:
        raise SpecError("no *.yaml files", file=str(candidate), fix="add a usecase.yaml")
    document, origins = merge_documents(files)
    try:
        spec = UseCase.model_validate(document)
    except ValidationError as err:
        raise SpecErrors(translate_errors(err, document, origins)) from None
    spec._origins = origins.as_dict()
    problems = check_references(spec)
    problems = problems or check_avro_schemas(spec)  # the files of sources whose references hold
    if problems:
        raise SpecErrors(
            [
                SpecError(p.message, file=origins.file_for(p.path), path=_dotted(p.path), value=p.value, fix=p.fix)
                for p in problems
            ]
        )
    return spec


# --- turning pydantic errors into messages a user can act on ---------------

_TYPE_FIXES = {
    "missing": "add it",
    "string_type": "write a text value (quote it if YAML reads it as something else)",
    "int_type": "write a whole number",
    "int_parsing": "write a whole number",
    "float_type": "write a number",
    "float_parsing": "write a number",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "dict_type": "write a mapping (key: value lines)",
    "list_type": "write a list ([a, b] or '- item' lines)",
    "too_short": "add at least one entry",
    "string_pattern_mismatch": "use lower-case letters, digits and '_', starting with a letter (at most 63)",
    "greater_than_equal": "use a larger number",
    "greater_than": "use a larger number",
}


def _data_path(loc: tuple[Any, ...], document: Any, kind: str) -> tuple[list[Any], Any]:
    """Follow ``loc`` through the document, skipping pydantic's union tags.

    A last part absent from the document is kept only for a missing key.
    """
    path: list[Any] = []
    node = document
    for index, part in enumerate(loc):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            path.append(part)
            node = node[part]
        elif index == len(loc) - 1 and kind == "missing":
            path.append(part)
            node = None
        # otherwise: a union member or tag name pydantic adds; not in the YAML
    return path, node


def _dotted(path: typing.Sequence[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_keys(loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the model that ``loc`` (minus its last part) points into."""
    node: Any = UseCase
    for part in loc[:-1]:
        node = _step(node, part)
        if node is None:
            return None
    node = _unwrap(node)
    if typing.get_origin(node) in (typing.Union, types.UnionType):
        models = [m for m in map(_unwrap, typing.get_args(node)) if isinstance(m, type) and issubclass(m, BaseModel)]
        node = models[0] if len(models) == 1 else node  # an optional section (``Model | None``)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return sorted(node.model_fields)
    return None


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _step(node: Any, part: Any) -> Any:
    node = _unwrap(node)
    origin = typing.get_origin(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(str(part))
        return field.annotation if field else None
    if origin is dict:
        return typing.get_args(node)[1]
    if origin is list:
        return typing.get_args(node)[0] if isinstance(part, int) else None
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(node):
            member = _unwrap(member)
            if isinstance(member, type) and issubclass(member, BaseModel):
                tag = _tag_of(member)
                if tag == part or member.__name__ == part:
                    return member
        return None
    return None


def _tag_of(model: type[BaseModel]) -> str | None:
    for key in ("fn", "method"):
        field = model.model_fields.get(key)
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            return typing.get_args(field.annotation)[0]
    return None


def translate_errors(err: ValidationError, document: Any, origins: Origins) -> list[SpecError]:
    """One :class:`SpecError` per pydantic error, with file, YAML path, value and fix."""
    raw = err.errors(include_url=False)
    paths = [_data_path(tuple(e["loc"]), document, e["type"])[0] for e in raw]
    out: list[SpecError] = []
    seen: set[str] = set()
    for error, path in zip(raw, paths, strict=True):
        kind = error["type"]
        # A union such as `pii: bool | Policy` reports one error per member; the
        # boolean member's complaint is noise when the user wrote a mapping.
        if kind in ("bool_type", "bool_parsing") and any(
            other_error["type"] not in ("bool_type", "bool_parsing") and other[: len(path)] == path
            for other_error, other in zip(raw, paths, strict=True)
        ):
            continue
        loc = tuple(error["loc"])
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        value = error.get("input")
        fix = _TYPE_FIXES.get(kind)
        if kind == "extra_forbidden":
            message = f"unknown key {path[-1]!r}"
            keys = _model_keys(loc)
            fix = f"remove it or use one of {keys}" if keys else "remove it"
            value = None
        elif kind == "string_pattern_mismatch" and "\\." in str(error.get("ctx", {}).get("pattern", "")):
            fix = "write <feature group>.<feature>, or <feature group>.* for all of a group's features"
        elif kind == "missing":
            message = f"required key {path[-1]!r} is missing"
            value = None
        elif kind in ("literal_error", "enum"):
            fix = "use " + message.split("Input should be ", 1)[-1]
            message = "value not allowed"
        elif kind == "union_tag_invalid":
            tags = error.get("ctx", {}).get("expected_tags", "")
            tag_key = error.get("ctx", {}).get("discriminator", "").strip("'")
            message = f"unknown {tag_key} {error.get('ctx', {}).get('tag')!r}"
            fix = f"use one of {tags}"
        elif kind == "union_tag_not_found":
            tag_key = error.get("ctx", {}).get("discriminator", "").strip("'")
            message = f"key {tag_key!r} is missing"
            fix = f"add {tag_key}: to say which kind this is"
            value = None
        dotted = _dotted(path)
        if dotted in seen:  # the members of a union (str | int | float) each complain: the first says enough
            continue
        seen.add(dotted)
        out.append(SpecError(message, file=origins.file_for(tuple(path)), path=dotted, value=value, fix=fix))
    return out
