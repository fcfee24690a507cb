"""The prediction endpoint's work, without a web framework: key -> model -> body -> scores -> bytes.

:class:`PredictService` is called by the fast ASGI path (:mod:`common.serving.fast_path`)
for every prediction, and by the FastAPI route when the fast path hands a request over.
Errors are raised as FastAPI's ``HTTPException`` / ``RequestValidationError``; they are
rendered in one place, the app's exception handlers.

The body is decoded by orjson and checked by hand for the usual shape (an object
with ``entities``, a list of flat objects, and an optional ``version``); any other
body goes through the pydantic model :class:`common.serving.schemas.PredictRequest`,
which names the faulty field in a 422.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from common.compile.event_time import to_micros
from common.errors import ConfigError, StoreError
from common.serving.auth import ApiKeys, Client
from common.serving.batcher import ScoringBatcher
from common.serving.config import ServingConfig
from common.serving.holder import LoadedModel, ModelHolder, ModelNotFound, ModelNotReady
from common.serving.metrics import ServingMetrics
from common.serving.predict import response_body
from common.serving.prediction_log import PredictionLogger
from common.serving.prediction_rows import LoggedRequest
from common.serving.schemas import PredictRequest, entity_errors

log = logging.getLogger(__name__)

BODY_BASE_BYTES = 64 * 1024
BODY_BYTES_PER_ENTITY = 2 * 1024
_SCALARS = (str, int, float, bool, type(None))
_FIELDS = frozenset(("entities", "version"))


class _Throttled:
    """Logs a recurring failure once per ``every_s`` (a Redis outage at 200 rps must not flood the log)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last = 0.0
        self.failing = False

    def failure(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if not self.failing or now - self._last >= self.every_s:
            log.warning(message, *args)
            self._last = now
        self.failing = True

    def success(self, message: str) -> None:
        if self.failing:
            log.info(message)
            self.failing = False


_ids = random.Random()  # seeded from os.urandom; a worker is a spawned process, so each has its own seed
_VERSION_4 = (0x4 << 76) | (0x2 << 62)  # the version (4) and variant (RFC 4122) bits of a UUID
_NOT_VERSION = ~((0xF << 76) | (0x3 << 62))


def new_request_id() -> str:
    """A random UUID (version 4) as text: unique, not secret.

    ``str(uuid.uuid4())`` reads the kernel's random source and builds a UUID object per request
    (about six times the cost); request ids need uniqueness, which 122 random bits give.
    """
    h = "%032x" % (_ids.getrandbits(128) & _NOT_VERSION | _VERSION_4)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_body(body: bytes) -> tuple[list[dict[str, Any]], int | None]:
    """(entities, version) of a prediction body; ``RequestValidationError`` (422) naming the field otherwise."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if (
        type(data) is dict
        and "entities" in data
        and data.keys() <= _FIELDS
        and type(entities := data["entities"]) is list
        and entities
        and all(type(e) is dict and all(type(v) in _SCALARS for v in e.values()) for e in entities)
        and ((version := data.get("version")) is None or (type(version) is int and version >= 1))
    ):
        return entities, version
    try:  # not the usual shape: the pydantic model says what is wrong
        parsed = PredictRequest.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    return parsed.entities, parsed.version


@dataclass
class Answer:
    """A 200 answer: the JSON body and the request id of its prediction log rows."""

    body: bytes
    request_id: str


class PredictService:
    """Everything a prediction needs, shared by the fast path and the FastAPI route."""

    def __init__(
        self,
        config: ServingConfig,
        keys: ApiKeys,
        holder: ModelHolder,
        metrics: ServingMetrics,
        prediction_log: PredictionLogger | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.keys = keys
        self.holder = holder
        self.metrics = metrics
        self.prediction_log = prediction_log
        self.clock = clock
        self.body_limit = BODY_BASE_BYTES + BODY_BYTES_PER_ENTITY * config.max_batch
        self.outage = _Throttled()
        # the requests this worker's loop holds at once share one Redis round trip and one model call
        self.batcher = ScoringBatcher(lambda: to_micros(self.clock()))

    def authenticate(self, presented: str | None) -> Client:
        """The client of the presented key; 401 otherwise."""
        client = self.keys.authenticate(presented)
        if client is None:
            raise HTTPException(
                401,
                "a valid API key is required: send X-API-Key: <key> or Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return client

    def unavailable(self, detail: str) -> HTTPException:
        """A 503 with Retry-After."""
        return HTTPException(503, detail, headers={"Retry-After": str(self.config.retry_after_s)})

    def check_access(self, model: str, client: Client) -> None:
        """403 when the key may not call ``model``, 404 when it is not served (before the body is read)."""
        if not client.allows(model):
            raise HTTPException(403, f"this API key ({client.name}) may not call model {model!r}")
        if model not in self.config.models:
            raise HTTPException(404, f"model {model!r} is not served here; served: {list(self.config.models)}")

    def too_large(self, size: int | None) -> HTTPException:
        """The 413 of a body over :attr:`body_limit` (``size`` when declared)."""
        if size is not None:
            return HTTPException(413, f"the body has {size} bytes; this server accepts at most {self.body_limit}")
        return HTTPException(413, f"the body is larger than the {self.body_limit} bytes this server accepts")

    async def model_for(self, name: str, version: int | None) -> LoadedModel:
        try:
            found = self.holder.cached(name, version) if name in self.config.models else None
            # loading an explicit version takes a second or more: not on the event loop
            return found if found is not None else await run_in_threadpool(self.holder.get, name, version)
        except (ModelNotFound, ConfigError) as err:  # ConfigError: a registered version that is no Loom model
            raise HTTPException(404, str(err)) from None
        except ModelNotReady as err:
            raise self.unavailable(f"{err}; retry later") from None

    async def predict(self, model: str, client: Client, body: bytes) -> Answer:
        """Score the body's entities (access already checked by :meth:`check_access`)."""
        entities, version = parse_body(body)
        if len(entities) > self.config.max_batch:
            raise HTTPException(
                413, f"{len(entities)} entities in one request; this server accepts at most {self.config.max_batch}"
            )
        loaded = await self.model_for(model, version)
        problems = entity_errors(entities, loaded.spec.entity_key, loaded.request_fields)
        if problems:
            raise RequestValidationError(problems)
        try:
            scored, at_us = await self.batcher.score(loaded, entities)
        except StoreError as err:
            self.outage.failure("online store unavailable (answering 503): %s", err)
            raise self.unavailable("the online feature store is unavailable; retry later") from None
        self.outage.success("online store reachable again")
        self.metrics.scored(model, len(scored.keys), sum(map(len, scored.missing)))
        alias = self.config.alias if version is None else None
        out = response_body(loaded, scored, at_us, alias)
        request_id = new_request_id()
        if self.prediction_log is not None:  # a queue append; the writer thread does the rest
            self.prediction_log.log(
                LoggedRequest(
                    request_id,
                    at_us,
                    client.name,
                    loaded.name,
                    loaded.version,
                    alias,
                    loaded.spec.entity_key,
                    scored.keys,
                    scored.scores,
                    scored.event_times_us,
                    scored.missing,
                )
            )
        return Answer(out, request_id)
