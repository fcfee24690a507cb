"""Entity keys -> features -> scores, for one loaded model version (no HTTP here).

The fast path allocates little and builds no DataFrame:

1. :func:`common.models.online_features.lookup_matrix`: one Redis round trip for
   every entity and feature group, decoded straight into a float64 matrix, with
   the TTL rule of the training set at ``at_us``;
2. request-time fields become float64 columns (NaN when absent);
3. :func:`common.models.pyfunc.model_inputs` (the on-demand transforms on numpy,
   the code batch scoring runs) and the pyfunc's ``predict_matrix`` (its fast
   predictor, checked against the estimator at training time);
4. the answer is encoded by orjson.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from common.compile.event_time import from_micros
from common.models.online_features import lookup_matrix
from common.models.pyfunc import model_inputs
from common.serving.holder import LoadedModel


@dataclass
class Scored:
    """What :func:`score_entities` computed, per entity in request order."""

    keys: list[Any]
    scores: np.ndarray
    event_times_us: dict[str, np.ndarray]  # group -> per entity, -1 when absent or stale
    missing: list[list[str]]


_SECONDS: dict[int, str] = {}  # epoch second -> its ISO text up to the seconds (the answers' as_of repeat them)


def iso_us(micros: int) -> str:
    """Epoch microseconds as ISO 8601 UTC with a ``Z`` (``datetime.isoformat``'s text: no fraction at 0 µs)."""
    second, fraction = divmod(micros, 1_000_000)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) > 4096:  # one per second served: keep it small
            _SECONDS.clear()
        text = _SECONDS[second] = from_micros(second * 1_000_000).isoformat().replace("+00:00", "")
    return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


def score_entities(model: LoadedModel, entities: Sequence[dict[str, Any]], at_us: int) -> Scored:
    """Scores of ``entities`` (validated: each has the entity key) with features as held online at ``at_us``.

    Raises :class:`common.errors.StoreError` when the online store cannot be read.
    """
    spec = model.spec
    key_name = spec.entity_key
    keys = [entity[key_name] for entity in entities]
    online = lookup_matrix(model.store, spec, keys, at_us)
    missing = online.missing
    fields: dict[str, np.ndarray] = {}
    for name in model.request_fields:
        values = [entity.get(name) for entity in entities]
        fields[name] = np.array([np.nan if v is None else float(v) for v in values], dtype="float64")
        for row, value in enumerate(values):
            if value is None:
                missing[row].append(name)
    matrix = model_inputs(spec, online.values, fields)
    scores = np.asarray(model.python_model.predict_matrix(matrix), dtype="float64")
    return Scored(keys, scores, online.event_times_us, missing)


def response_body(model: LoadedModel, scored: Scored, at_us: int, alias: str | None) -> bytes:
    """The JSON of :class:`common.serving.schemas.PredictResponse` for ``scored``.

    ``alias``: the alias that selected the version (None when the request named the version).

    Built as plain JSON (orjson) rather than through pydantic: this is the hot
    path, and the tests check that its output validates against the schema.
    """
    times = {group: stamps.tolist() for group, stamps in scored.event_times_us.items()}
    cache: dict[int, str] = {}  # many entities share an event time (hourly tiles): format each once
    predictions = []
    scores = scored.scores.tolist()
    for row, key in enumerate(scored.keys):
        feature_times: dict[str, str | None] = {}
        known = False
        for group, stamps in times.items():
            stamp = stamps[row]
            if stamp < 0:
                feature_times[group] = None
            else:
                known = True
                text = cache.get(stamp)
                if text is None:
                    text = cache[stamp] = iso_us(stamp)
                feature_times[group] = text
        score = scores[row]
        predictions.append(
            {
                "key": key,
                "score": score if score == score else None,
                "known": known,
                "feature_times": feature_times,
                "missing": scored.missing[row],
            }
        )
    body = {
        "model": model.name,
        "version": model.version,
        "alias": alias,
        "as_of": iso_us(at_us),
        "predictions": predictions,
    }
    return orjson.dumps(body)
