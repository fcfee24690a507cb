"""The latest prediction per (entity, model) in Redis, guarded by prediction time.

Key ``<prefix>{<entity>}:prediction:<model>`` (same hash tag as the entity's
feature vectors), a hash with ``ts_us``, ``score``, ``version``, ``trigger``.
A Lua script writes only when the new prediction time is the same or newer,
so replays and out-of-order writers never move it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.errors import StoreError
from common.online.redis_store import escape_entity, key_prefix

_GUARDED_HSET = """
local current = redis.call('HGET', KEYS[1], 'ts_us')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ts_us', ARGV[1], 'score', ARGV[2], 'version', ARGV[3], 'trigger', ARGV[4])
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return 1
"""


@dataclass(frozen=True)
class LatestPrediction:
    entity: str
    model: str
    ts_us: int
    score: float
    version: int
    trigger: str


def prediction_key(usecase: str, version: int, entity: Any, model: str) -> str:
    return f"{key_prefix(usecase, version)}{{{escape_entity(entity)}}}:prediction:{model}"


def write_latest(
    client: Any, usecase: str, usecase_version: int, rows: Iterable[LatestPrediction], ttl_s: int = 0
) -> int:
    """Write each prediction unless a newer one is stored; returns how many were written."""
    from redis.exceptions import RedisError

    rows = list(rows)
    if not rows:
        return 0
    try:
        script = client.register_script(_GUARDED_HSET)
        pipe = client.pipeline(transaction=False)
        for row in rows:
            script(
                keys=[prediction_key(usecase, usecase_version, row.entity, row.model)],
                args=[row.ts_us, repr(float(row.score)), row.version, row.trigger, ttl_s],
                client=pipe,
            )
        return int(sum(pipe.execute()))
    except RedisError as err:
        raise StoreError(f"writing predictions to Redis failed: {err}") from err
