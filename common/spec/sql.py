"""Static checks of the SQL snippets in metadata, without Spark."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)
def _parse(sql: str):
    import sqlglot

    return sqlglot.parse_one(sql, dialect="spark")


def check_sql(sql: str) -> None:
    """Raise ValueError with the parser's message if ``sql`` is not a valid expression."""
    import sqlglot.errors

    try:
        _parse(sql)
    except sqlglot.errors.ParseError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"invalid SQL expression {sql!r}: {first}") from None


def referenced_columns(sql: str) -> list[str]:
    """Column names an expression reads, in first-seen order."""
    from sqlglot import exp

    check_sql(sql)
    seen: dict[str, None] = {}
    for column in _parse(sql).find_all(exp.Column):
        seen.setdefault(column.name, None)
    return list(seen)
