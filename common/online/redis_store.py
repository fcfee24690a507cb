"""Redis as the online store: one string key per (entity, feature group).

Key::

    loom:{usecase}:v{version}:{<entity key>}:{group}
    e.g. loom:churn:v1:{C-1042}:activity_7d

The braces around the entity key are a Redis Cluster hash tag: every group of
one entity hashes to the same slot, so one entity's keys can be read (MGET) or
deleted (DEL) in one command even on a cluster. Redis takes the tag from the
first ``{`` to the next ``}``, so the prefix must not contain braces and the
entity key is escaped: ``%`` -> ``%25``, ``{`` -> ``%7B``, ``}`` -> ``%7D``
(reversible, so two entity keys never share a Redis key). An empty entity key
is refused: ``{}`` is not a hash tag.

Value: the blob of :mod:`common.online.encoding` (header with schema version
and event time, then float64 values).

Writes go through one Lua script (:data:`GUARD_LUA`) that takes many keys per
call and, atomically per key, reads the stored event time from the stored
blob's header and writes only if the new event time is >= the stored one
(equal overwrites, so a replay is idempotent), setting the TTL in the same
``SET``. The TTL counts from the accepted write; a refused write changes
nothing, not even the TTL (readers judge staleness by the vector's event time).
Calls are ``EVALSHA`` (the script is loaded once and reloaded after a
``NOSCRIPT``) with ``chunk`` keys each. On a single node they are packed with
numpy (:func:`pack_guard_call`) and streamed on one connection with
``pipeline_depth`` replies outstanding, so packing overlaps Redis' work.

Redis Cluster (``cluster=True``): a script may only touch keys of one slot, so
keys are grouped by slot before chunking and each call goes to its slot's
node through redis-py's cluster pipeline; reads use ``MGET`` per node
(``mget_nonatomic``). As each entity has its own slot, cluster calls are
small (a few keys each): correct, but slower than a single node. The mode
follows the client (:func:`common.runtime.redis_server.connect`, which reads
``LOOM_REDIS_CLUSTER``); tests/test_redis_cluster_jobs.py runs every job's path
on a real 3-master cluster.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import ConfigError, DataError, StoreError
from common.online.base import (
    GroupBlock,
    OnlineGroup,
    OnlineStore,
    ReadResult,
    SchemaMismatch,
    WriteResult,
    check_matrix,
    epoch_micros,
)
from common.online.encoding import (
    FORMAT_V1,
    HEADER_SIZE,
    blob_size,
    decode_many,
    decode_many_joined,
    encode_matrix,
    read_header,
)

log = logging.getLogger(__name__)

# KEYS = the keys; ARGV[1] = TTL in seconds (0 = no expiry), ARGV[1 + i] = blob of KEYS[i].
# The stored event time is read with GETRANGE (8 bytes, not the whole blob): int64 little endian
# at offset 8. Lua 5.1 numbers are doubles, exact for |t| < 2^53 µs (about 285 years around 1970).
# A stored value too short to hold a header (not a Loom vector) is overwritten.
GUARD_LUA = """
local call, unpack = redis.call, struct.unpack
local ttl = tonumber(ARGV[1])
local written = 0
for i = 1, #KEYS do
  local key, new = KEYS[i], ARGV[i + 1]
  local old = call('GETRANGE', key, 8, 15)
  if string.len(old) < 8 or unpack('<i8', new, 9) >= unpack('<i8', old) then
    if ttl > 0 then
      call('SET', key, new, 'EX', ttl)
    else
      call('SET', key, new)
    end
    written = written + 1
  end
end
return written
"""

DEFAULT_CHUNK = 250  # keys per script call: long enough to amortize, short enough not to stall Redis
DEFAULT_PIPELINE_DEPTH = 8  # script calls sent ahead of their replies on one connection


def key_prefix(usecase: str, version: int) -> str:
    """The default prefix of a use case's keys: ``loom:<usecase>:v<version>:``."""
    return f"loom:{usecase}:v{version}:"


def escape_entity(entity_key: Any) -> str:
    """The entity key as it appears inside the hash tag (see the module docstring)."""
    if entity_key is None:
        raise DataError("an entity key is missing (null). Fix: drop rows without an entity key before writing")
    text = entity_key if isinstance(entity_key, str) else str(entity_key)
    if not text:
        raise DataError("an entity key is empty. Fix: drop rows with an empty entity key before writing")
    if "%" in text or "{" in text or "}" in text:
        text = text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return text


def _text(entity_key: Any) -> str:
    if entity_key is None:
        escape_entity(entity_key)  # raises the DataError for a missing key
    return str(entity_key)


def redis_key(prefix: str, entity_key: Any, group: str) -> str:
    """The Redis key of one (entity, group)."""
    return f"{prefix}{{{escape_entity(entity_key)}}}:{group}"


def slot_chunks(keys: Sequence[bytes], chunk: int, *, by_slot: bool) -> list[slice | np.ndarray]:
    """Positions of at most ``chunk`` keys per script call.

    Without ``by_slot``: consecutive slices. With ``by_slot`` (Redis Cluster):
    index arrays whose keys all hash to one cluster slot.
    """
    if not by_slot:
        return [slice(start, start + chunk) for start in range(0, len(keys), chunk)]
    from redis.crc import key_slot

    slots = np.fromiter((key_slot(k) for k in keys), dtype=np.int64, count=len(keys))
    order = np.argsort(slots, kind="stable")
    boundaries = np.flatnonzero(np.diff(slots[order])) + 1
    chunks: list[slice | np.ndarray] = []
    for same_slot in np.split(order, boundaries):
        chunks += [same_slot[start : start + chunk] for start in range(0, len(same_slot), chunk)]
    return chunks


def pack_guard_call(sha: bytes, keys: Sequence[bytes], ttl: int, blobs: np.ndarray) -> bytes:
    """The RESP bytes of ``EVALSHA sha n key... ttl blob...`` for equal-length blobs (one per row).

    Hand-packed because the blobs share one length: their framing
    (``$<len>\\r\\n<blob>\\r\\n``) is built for all rows with one numpy fill,
    which is several times cheaper than packing each argument in Python.
    """
    n, width = blobs.shape
    count = b"%d" % n
    ttl_text = b"%d" % ttl
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (4 + 2 * n, len(sha), sha, len(count), count)
    key_part = b"".join([b"$%d\r\n%s\r\n" % (len(key), key) for key in keys])
    ttl_part = b"$%d\r\n%s\r\n" % (len(ttl_text), ttl_text)
    prefix = b"$%d\r\n" % width
    framed = np.empty((n, len(prefix) + width + 2), dtype=np.uint8)
    framed[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    framed[:, len(prefix) : -2] = blobs
    framed[:, -2:] = np.frombuffer(b"\r\n", dtype=np.uint8)
    return b"".join((head, key_part, ttl_part, framed.tobytes()))


Call = tuple[Sequence[bytes], np.ndarray]  # (keys, encoded blobs: one uint8 row per key)


class RedisOnlineStore(OnlineStore):
    """The online store on one Redis server, or a Redis Cluster (``cluster=True``; default: ``client``'s kind,
    else ``LOOM_REDIS_CLUSTER``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        usecase: str | None = None,
        version: int = 1,
        prefix: str | None = None,
        groups: Sequence[OnlineGroup] = (),
        chunk: int = DEFAULT_CHUNK,
        pipeline_depth: int = DEFAULT_PIPELINE_DEPTH,
        cluster: bool | None = None,
        client: Any = None,
        **connect_kwargs: Any,
    ) -> None:
        super().__init__(groups)
        if prefix is None:
            if usecase is None:
                raise ConfigError("the Redis online store needs usecase= (and version=) or prefix=. Fix: pass one")
            prefix = key_prefix(usecase, version)
        if "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"online store key prefix {prefix!r} contains a brace, which would break the "
                "entity hash tag. Fix: use a prefix without '{' and '}'"
            )
        if chunk < 1 or pipeline_depth < 1:
            raise ConfigError(f"chunk ({chunk}) and pipeline_depth ({pipeline_depth}) must be >= 1")
        self.prefix = prefix
        self.chunk = chunk
        self.pipeline_depth = pipeline_depth
        from common.runtime.redis_server import cluster_mode, is_cluster

        # default: a given client's kind, else LOOM_REDIS_CLUSTER
        if cluster is None:
            cluster = is_cluster(client) if client is not None else cluster_mode()
        self.cluster = cluster
        self._owns_client = client is None
        self.client = client if client is not None else _open(url, cluster, connect_kwargs)
        self._sha: str | None = None

    # -- keys ---------------------------------------------------------------

    def key(self, entity_key: Any, group: OnlineGroup | str) -> str:
        """The Redis key of one (entity, group)."""
        name = group.name if isinstance(group, OnlineGroup) else group
        return redis_key(self.prefix, entity_key, name)

    def encoded_keys(self, entity_keys: Sequence[Any], group: str) -> list[bytes]:
        """The Redis keys of many entities of one group, as bytes (same as :func:`redis_key`)."""
        texts = [k if type(k) is str else _text(k) for k in entity_keys]
        joined = "".join(texts)
        # One scan of all keys instead of a function call per key: escaping is rare.
        if "%" in joined or "{" in joined or "}" in joined or not all(texts):
            texts = [escape_entity(t) for t in texts]
        head, tail = f"{self.prefix}{{", f"}}:{group}"
        return [f"{head}{t}{tail}".encode() for t in texts]

    # -- writes -------------------------------------------------------------

    def write(
        self,
        group: OnlineGroup | str,
        entity_keys: Sequence[Any],
        values: object,
        event_times: object,
    ) -> WriteResult:
        """Encode and write one vector per entity through the event-time guard."""
        spec = self.group(group)
        keys = self.encoded_keys(entity_keys, spec.name)
        matrix = check_matrix(spec, values, len(keys))
        times = epoch_micros(event_times)
        if times.shape[0] != len(keys):
            raise DataError(
                f"group {spec.name!r}: {len(keys)} entity keys but {times.shape[0]} event times. "
                "Fix: pass one event time per entity key"
            )
        return self.write_encoded(spec, keys, matrix, times)

    def write_encoded(
        self, group: OnlineGroup, keys: Sequence[bytes], matrix: np.ndarray, times_us: np.ndarray
    ) -> WriteResult:
        """Write checked inputs: Redis keys, a float64 (n, features) matrix, int64 µs event times."""
        if not len(keys):
            return WriteResult(0, 0)
        blobs = encode_matrix(matrix, times_us, group.schema_version)
        ttl = int(group.ttl_seconds or 0)
        calls: list[Call] = []
        for where in slot_chunks(keys, self.chunk, by_slot=self.cluster):
            chunk_keys = keys[where] if isinstance(where, slice) else [keys[i] for i in where]
            calls.append((chunk_keys, blobs[where]))
        send = self._send_pipelined if self.cluster else self._send_streamed
        written = 0
        for _attempt in range(2):
            done, not_run = send(self._script(), calls, ttl)
            written += done
            if not not_run:
                return WriteResult(written, len(keys) - written)
            # The server lost its script cache (restart, SCRIPT FLUSH): those calls did not run.
            calls, self._sha = not_run, None
        raise StoreError("Redis keeps answering NOSCRIPT to the online store guard script. Fix: check the server")

    def _send_streamed(self, sha: str, calls: list[Call], ttl: int) -> tuple[int, list[Call]]:
        """Single node: stream pre-packed calls on one connection, ``pipeline_depth`` replies outstanding.

        Packing the next call while Redis runs the previous one keeps both busy;
        returns (keys written, calls refused with NOSCRIPT).
        """
        from redis.exceptions import NoScriptError, RedisError, ResponseError

        pool = self.client.connection_pool
        connection = pool.get_connection()
        sha_bytes = sha.encode()
        in_flight: deque[Call] = deque()
        written, not_run, errors = 0, [], []

        def collect() -> None:
            nonlocal written
            call = in_flight.popleft()
            try:
                written += int(connection.read_response())
            except NoScriptError:
                not_run.append(call)
            except ResponseError as err:  # keep reading: the replies of the other calls are still coming
                errors.append(err)

        try:
            for call in calls:
                connection.send_packed_command([pack_guard_call(sha_bytes, call[0], ttl, call[1])])
                in_flight.append(call)
                if len(in_flight) > self.pipeline_depth:
                    collect()
            while in_flight:
                collect()
        except RedisError as err:
            connection.disconnect()  # replies may be half read: never reuse this connection
            raise StoreError(f"writing to the Redis online store failed: {err}") from err
        finally:
            pool.release(connection)
        if errors:
            raise StoreError(f"the online store guard script failed on Redis: {errors[0]}")
        return written, not_run

    def _send_pipelined(self, sha: str, calls: list[Call], ttl: int) -> tuple[int, list[Call]]:
        """Redis Cluster: redis-py pipelines route each call to its slot's node."""
        from redis.exceptions import NoScriptError, RedisError

        written, not_run = 0, []
        try:
            for start in range(0, len(calls), self.pipeline_depth):
                batch = calls[start : start + self.pipeline_depth]
                pipe = self.client.pipeline(transaction=False)
                for chunk_keys, rows in batch:
                    blobs = [row.tobytes() for row in rows]
                    pipe.execute_command("EVALSHA", sha, len(chunk_keys), *chunk_keys, ttl, *blobs)
                for call, result in zip(batch, pipe.execute(raise_on_error=False), strict=True):
                    if isinstance(result, NoScriptError):
                        not_run.append(call)
                    elif isinstance(result, Exception):
                        raise StoreError(f"the online store guard script failed on Redis: {result}")
                    else:
                        written += int(result)
        except RedisError as err:
            raise StoreError(f"writing to the Redis online store failed: {err}") from err
        return written, not_run

    def _script(self) -> str:
        if self._sha is None:
            from redis.exceptions import RedisError

            try:
                self._sha = self.client.script_load(GUARD_LUA)
            except RedisError as err:
                raise StoreError(f"cannot load the online store guard script into Redis: {err}") from err
        return self._sha

    # -- reads --------------------------------------------------------------

    def read(self, entity_keys: Sequence[Any], groups: Sequence[OnlineGroup | str]) -> ReadResult:
        """All (entity, group) vectors in one MGET; missing and mismatched pairs are reported."""
        specs = [self.group(g) for g in groups]
        entities = list(entity_keys)
        keys: list[bytes] = []
        for spec in specs:
            keys += self.encoded_keys(entities, spec.name)
        if not keys:
            return ReadResult()
        from redis.exceptions import RedisError

        try:
            blobs = self.client.mget_nonatomic(keys) if self.cluster else self.client.mget(keys)
        except RedisError as err:
            raise StoreError(f"reading from the Redis online store failed: {err}") from err
        result = ReadResult()
        n = len(entities)
        for position, spec in enumerate(specs):
            _decode_group(spec, entities, blobs[position * n : (position + 1) * n], result)
        return result

    def read_blocks(self, entity_keys: Sequence[Any], groups: Sequence[OnlineGroup | str]) -> dict[str, GroupBlock]:
        """All (entity, group) vectors in one MGET, decoded straight into one array per group."""
        specs = [self.group(g) for g in groups]
        entities = entity_keys if isinstance(entity_keys, list) else list(entity_keys)
        keys: list[bytes] = []
        for spec in specs:
            keys += self.encoded_keys(entities, spec.name)
        if not keys:
            return {spec.name: _empty_block(spec, 0) for spec in specs}
        from redis.exceptions import RedisError

        try:
            blobs = self.client.mget_nonatomic(keys) if self.cluster else self.client.mget(keys)
        except RedisError as err:
            raise StoreError(f"reading from the Redis online store failed: {err}") from err
        n = len(entities)
        return {spec.name: _block(spec, blobs[i * n : (i + 1) * n]) for i, spec in enumerate(specs)}

    # -- deletes ------------------------------------------------------------

    def delete_entity(self, entity_key: Any, groups: Sequence[OnlineGroup | str] | None = None) -> int:
        """Delete the entity's keys of ``groups`` (default: every registered group) in one DEL.

        Keys of groups this store does not know (other code versions) are not
        touched; :meth:`delete_entity_everywhere` sweeps the whole prefix.
        """
        names = [self.group(g).name for g in groups] if groups is not None else list(self._groups)
        if not names:
            return 0
        keys = [self.key(entity_key, name) for name in names]
        return int(self._call("delete", *keys))

    def delete_entity_everywhere(self, entity_key: Any) -> int:
        """Delete every key of the entity under this prefix, known groups or not (a SCAN: O(keyspace))."""
        pattern = f"{_glob_escape(self.prefix)}{{{_glob_escape(escape_entity(entity_key))}}}:*"
        keys = list(self._call("scan_iter", match=pattern, count=1000))
        return int(self._call("delete", *keys)) if keys else 0

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return getattr(self.client, method)(*args, **kwargs)
        except RedisError as err:
            raise StoreError(f"the Redis online store failed ({method}): {err}") from err

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _decode_group(spec: OnlineGroup, entities: list[Any], blobs: list[bytes | None], result: ReadResult) -> None:
    """Decode one group's blobs at once; sort out missing and mismatched ones first."""
    from common.online.base import FeatureVector

    expected = spec.schema_version
    width = blob_size(len(spec.feature_names))
    good: list[int] = []
    for i, blob in enumerate(blobs):
        if blob is None:
            result.missing.append((entities[i], spec.name))
        elif len(blob) == width and blob[0] == FORMAT_V1:
            good.append(i)
        else:
            header = read_header(blob) if len(blob) >= HEADER_SIZE else None
            result.mismatched[(entities[i], spec.name)] = SchemaMismatch(
                expected, header.schema_version if header else None, header.event_time_us if header else None
            )
    if not good:
        return
    _, versions, times, values = decode_many([blobs[i] for i in good], len(spec.feature_names))
    names = spec.feature_names
    for row, i in enumerate(good):
        pair = (entities[i], spec.name)
        if versions[row] != expected:
            result.mismatched[pair] = SchemaMismatch(expected, int(versions[row]), int(times[row]))
        else:
            result.vectors[pair] = FeatureVector(names, values[row], int(times[row]), expected)


def _empty_block(spec: OnlineGroup, rows: int) -> GroupBlock:
    return GroupBlock(np.full((rows, len(spec.feature_names)), np.nan), np.full(rows, -1, dtype=np.int64))


def _block(spec: OnlineGroup, blobs: list[bytes | None]) -> GroupBlock:
    """One group's blobs as arrays; absent, foreign and mismatched vectors are NaN with event time -1."""
    width = blob_size(len(spec.feature_names))
    if all(blob is not None and len(blob) == width for blob in blobs):
        good = None  # the usual case: every vector there, one join and one view
        joined = b"".join(blobs)  # type: ignore[arg-type]
    else:
        good = [i for i, blob in enumerate(blobs) if blob is not None and len(blob) == width]
        joined = b"".join(blobs[i] for i in good)  # type: ignore[misc]
    block = _empty_block(spec, len(blobs))
    if not joined:
        return block
    rows = len(joined) // width
    formats, versions, times, values = decode_many_joined(joined, rows, len(spec.feature_names))
    ok = (formats == FORMAT_V1) & (versions == spec.schema_version)
    where = np.arange(rows) if good is None else np.asarray(good)
    block.values[where[ok]] = values[ok]
    block.event_time_us[where[ok]] = times[ok]
    return block


def groups_without_vectors(
    client: Any, usecase: str, version: int, groups: Sequence[str], max_calls: int = 200
) -> list[str]:
    """The ``groups`` of which Redis holds no vector at all (SCAN, stopping at the first key of each).

    At most ``max_calls`` SCAN calls of 1,000 keys per group and master (a Redis Cluster's SCAN sees one
    master's keys, so each master is scanned): a group not found within them on a huge keyspace is
    reported as empty only if every scan finished.
    """
    from common.runtime.redis_server import masters

    prefix = _glob_escape(key_prefix(usecase, version))
    nodes = masters(client)
    empty = []
    for group in groups:
        pattern = f"{prefix}{{*}}:{_glob_escape(group)}"
        found, finished = False, True
        for node in nodes:
            cursor, calls = 0, 0
            while not found and calls < max_calls:
                cursor, keys = node.scan(cursor=cursor, match=pattern, count=1000)
                calls += 1
                found = bool(keys)
                if int(cursor) == 0:
                    break
            finished &= int(cursor) == 0
            if found:
                break
        if not found and finished:
            empty.append(group)
    return empty


def _glob_escape(text: str) -> str:
    """Escape the glob characters of Redis MATCH patterns."""
    for char in "\\*?[]":
        text = text.replace(char, "\\" + char)
    return text


def _open(url: str | None, cluster: bool, kwargs: dict[str, Any]) -> Any:
    from common.runtime.redis_server import connect, describe, redis_url

    target = url or redis_url()
    client = connect(target, cluster=cluster, **kwargs)
    log.debug("online store on %s", describe(target))
    return client
