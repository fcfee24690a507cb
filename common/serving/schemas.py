"""Request and response bodies of the prediction endpoint.

An entity is a JSON object: the model's entity key (``customer_id`` for churn)
plus the model's request-time fields, if any (numbers or null). Which names
are allowed depends on the model, so :func:`entity_errors` checks them after
the model is known, and reports errors in FastAPI's 422 format (``loc`` names
the field, e.g. ``["body", "entities", 3, "customer_id"]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
MAX_KEY_LENGTH = 512


class PredictRequest(BaseModel):
    """Entities to score and, optionally, the model version to score them with."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"entities": [{"customer_id": "C00000001"}, {"customer_id": "C00000002"}]}]},
    )

    entities: list[dict[str, Scalar]] = Field(
        min_length=1,
        description="One object per entity: the model's entity key (e.g. customer_id) and its request-time fields",
    )
    version: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="A registered version of the model; default: the version of the served alias"
    )


class Prediction(BaseModel):
    """The score of one entity and what it was computed from."""

    key: StrictStr | StrictInt = Field(description="The entity key, as sent")
    score: float | None = Field(description="Probability of the positive class")
    known: bool = Field(description="False when no feature group had a fresh value for this entity")
    feature_times: dict[str, str | None] = Field(
        description="Feature group -> event time of the values used (ISO 8601, UTC); null: absent or older than ttl"
    )
    missing: list[str] = Field(
        description="Features (and request fields) that were missing: passed to the model as NaN"
    )


class PredictResponse(BaseModel):
    """Scores of every requested entity, in request order, all made by one model version."""

    model: str
    version: int
    alias: str | None = Field(description="The alias that selected the version; null when the request named it")
    as_of: str = Field(description="The time the features were looked up at (ISO 8601, UTC)")
    predictions: list[Prediction]


class ErrorBody(BaseModel):
    """Body of a 4xx/5xx answer other than 422."""

    detail: str


def entity_errors(entities: Sequence[dict[str, Any]], entity_key: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    """422 error items for entities without a usable key, with unknown fields or non-numeric field values."""
    errors: list[dict[str, Any]] = []
    allowed = {entity_key, *fields}
    for index, entity in enumerate(entities):
        where = ("body", "entities", index)
        key = entity.get(entity_key)
        if key is None:
            errors.append(_error("missing", (*where, entity_key), f"Field required: the entity key {entity_key!r}"))
        elif isinstance(key, bool) or not isinstance(key, str | int):
            errors.append(_error("string_type", (*where, entity_key), "Input should be a valid string", key))
        elif isinstance(key, str) and not 0 < len(key) <= MAX_KEY_LENGTH:
            errors.append(
                _error("string_length", (*where, entity_key), f"Key must have 1 to {MAX_KEY_LENGTH} characters")
            )
        for name, value in entity.items():
            if name not in allowed:
                hint = f"request fields {list(fields)}" if fields else "no request fields"
                errors.append(
                    _error(
                        "extra_forbidden",
                        (*where, name),
                        f"Extra inputs are not permitted: this model reads {entity_key!r} and {hint}",
                    )
                )
            elif (
                name != entity_key
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value))
            ):  # NaN, Infinity and 1e400 (read as inf) are no measurement: refused, not passed to the model
                errors.append(_error("float_type", (*where, name), "Input should be a finite number or null", value))
    return errors


def _error(kind: str, loc: tuple[Any, ...], msg: str, value: Any = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg}
    if value is not None:
        item["input"] = value
    return item
