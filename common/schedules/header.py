"""The comment lines every exported schedule file starts with."""

from __future__ import annotations

from common.spec import UseCase


def generated_header(spec: UseCase, target: str, usecase: str) -> list[str]:
    """Lines (without the comment sign) saying the file is generated and how to generate it again."""
    return [
        f"Loom schedules of use case {spec.name!r}; generated, do not edit: change the metadata and run",
        f"  loom schedule export --usecase {usecase} --target {target}",
        "Times are UTC.",
    ]
