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
    """Write each prediction unless a newer one is stored; returns how many were written.

    ``client`` is a ``redis.Redis`` or a ``redis.RedisCluster`` (:func:`common.runtime.redis_server.connect`):
    the script is loaded (on every master of a cluster), then one ``EVALSHA`` per key is pipelined, each
    routed to its key's master. Calls refused with ``NOSCRIPT`` (a master restarted meanwhile) are sent again once.
    """
    from redis.exceptions import NoScriptError, RedisError

    calls = [
        (prediction_key(usecase, usecase_version, row.entity, row.model), row.ts_us, repr(float(row.score)), row)
        for row in rows
    ]
    written = 0
    try:
        for _attempt in range(2):
            if not calls:
                return written
            sha = client.script_load(_GUARDED_HSET)
            pipe = client.pipeline(transaction=False)
            for key, ts_us, score, row in calls:
                pipe.execute_command("EVALSHA", sha, 1, key, ts_us, score, row.version, row.trigger, ttl_s)
            not_run = []
            for call, result in zip(calls, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(result, NoScriptError):
                    not_run.append(call)
                elif isinstance(result, Exception):
                    raise result
                else:
                    written += int(result)
            calls = not_run
    except RedisError as err:
        raise StoreError(f"writing predictions to Redis failed: {err}") from err
    if calls:
        raise StoreError("Redis keeps answering NOSCRIPT to the predictions script. Fix: check the server")
    return written
