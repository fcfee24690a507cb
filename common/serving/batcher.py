"""Micro-batching: the predictions a worker's event loop holds at once share one Redis round trip and one model call.

Under load, a worker has many requests in flight at once. Scoring each on its own
costs one Redis round trip (a blocking MGET: the worker waits, the loop stalls) and
one model call per request; at one entity those fixed costs are most of a
prediction. :class:`ScoringBatcher` queues each validated request's entities and
scores everything queued in one callback, scheduled with ``call_soon`` by the
first request of a batch: every request the loop has started meanwhile joins it.
So a lone request waits for nothing (one loop turn), and at high rates the fixed
costs are paid once per batch, not once per request: the busier the worker, the
bigger the batches, the cheaper each prediction.

A batch is scored per loaded model version with :func:`common.serving.predict.score_entities`
on the requests' entities put end to end, then cut back into one :class:`Scored` per
request. Every step works row by row (the lookup, the on-demand transforms, the
model), so a request's scores are bit for bit those it gets alone. The lookup time
(``at_us``) is the batch's: when its features are read. A failure (Redis down) is
raised in every request of the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from common.serving.holder import LoadedModel
from common.serving.predict import Scored, score_entities

_Job = tuple[LoadedModel, Sequence[dict[str, Any]], asyncio.Future]


class ScoringBatcher:
    """Scores the requests queued during one turn of the event loop together (see the module docstring).

    ``at_us``: the lookup time of a batch (epoch microseconds), asked once per batch.
    """

    def __init__(self, at_us: Callable[[], int]) -> None:
        self.at_us = at_us
        self._queued: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # batches scored (tests and the bench's profile read them)
        self.requests = 0

    async def score(self, model: LoadedModel, entities: Sequence[dict[str, Any]]) -> tuple[Scored, int]:
        """``entities`` (validated) scored with ``model`` in the next batch; (scores, the lookup time)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run apps on several): what another loop queued is not ours
            self._loop, self._queued = loop, []
        future = loop.create_future()
        self._queued.append((model, entities, future))
        if len(self._queued) == 1:
            loop.call_soon(self._run)
        return await future

    def _run(self) -> None:
        """Score every queued request (a loop callback: whatever the batch raises goes to its requests)."""
        jobs, self._queued = self._queued, []
        jobs = [job for job in jobs if not job[2].done()]  # a cancelled request (client gone) is not scored
        if not jobs:
            return
        self.batches += 1
        self.requests += len(jobs)
        by_model: dict[int, list[_Job]] = {}
        for job in jobs:
            by_model.setdefault(id(job[0]), []).append(job)
        try:
            at_us = self.at_us()
        except Exception as err:  # the clock (a test's) failed: every request learns it
            _fail(jobs, err)
            return
        for same in by_model.values():
            try:
                results = _score_together(same, at_us)
            except Exception as err:  # StoreError (Redis down) and the like: raised in each request
                _fail(same, err)
                continue
            for (_, _, future), scored in zip(same, results, strict=True):
                if not future.done():
                    future.set_result((scored, at_us))


def _score_together(jobs: list[_Job], at_us: int) -> list[Scored]:
    """One :func:`score_entities` call for the jobs of one model version, cut back per job."""
    model = jobs[0][0]
    if len(jobs) == 1:
        return [score_entities(model, jobs[0][1], at_us)]
    entities: list[dict[str, Any]] = []
    for job in jobs:
        entities += job[1]
    scored = score_entities(model, entities, at_us)
    out, start = [], 0
    for job in jobs:
        end = start + len(job[1])
        out.append(
            Scored(
                scored.keys[start:end],
                scored.scores[start:end],
                {group: stamps[start:end] for group, stamps in scored.event_times_us.items()},
                scored.missing[start:end],
            )
        )
        start = end
    return out


def _fail(jobs: list[_Job], err: Exception) -> None:
    for _, _, future in jobs:
        if not future.done():
            future.set_exception(err)
