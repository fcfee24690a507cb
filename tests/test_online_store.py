"""The online store: compact encoding, the atomic event-time guard, one-round-trip reads, and the
Spark materializer, all against the real redis-server of the test run."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from redis.crc import key_slot

from common.errors import ConfigError, DataError
from common.online import OnlineGroup, get_online_store, known_backends
from common.online.encoding import (
    FORMAT_V1,
    HEADER_SIZE,
    decode_many,
    decode_one,
    encode_many,
    encode_one,
    schema_fingerprint,
)
from common.online.materialize import write_features_to_online_store
from common.online.redis_store import RedisOnlineStore, escape_entity, redis_key, slot_chunks

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
ACTIVITY = OnlineGroup("activity", ("calls_7d", "avg_payment_30d", "logins_1d"), ttl_seconds=600)
PROFILE = OnlineGroup("profile", ("tenure_months", "age"))


@pytest.fixture()
def store(redis_client, redis_url):
    with RedisOnlineStore(redis_url, usecase="churn", version=1, groups=[ACTIVITY, PROFILE]) as opened:
        yield opened


def stored_time(redis_client, key: str) -> int:
    return decode_one(redis_client.get(key))[0].event_time_us


# -- encoding -----------------------------------------------------------------------------


def test_encoding_round_trip_keeps_values_and_maps_null_and_nan_to_missing():
    version = schema_fingerprint(ACTIVITY.feature_names)
    blob = encode_one([3.0, None, math.inf], T0, version)
    assert len(blob) == HEADER_SIZE + 3 * 8
    header, values = decode_one(blob)
    assert (header.format, header.schema_version, header.event_time_us) == (FORMAT_V1, version, T0)
    assert values[0] == 3.0 and math.isnan(values[1]) and values[2] == math.inf
    # the event time sits at bytes 8..15, little endian: the Lua guard reads it there
    assert int.from_bytes(blob[8:16], "little", signed=True) == T0
    assert blob[HEADER_SIZE:] == np.array([3.0, np.nan, np.inf], dtype="<f8").tobytes()


def test_encode_many_is_the_same_bytes_as_encode_one_and_decodes_back():
    values = np.array([[1.5, np.nan, -2.0], [0.0, 4.25, 1e300]])
    times = np.array([T0, -5], dtype=np.int64)  # before 1970 is fine
    blobs = encode_many(values, times, 7)
    assert blobs == [encode_one(values[0], T0, 7), encode_one(values[1], -5, 7)]
    formats, versions, decoded_times, decoded = decode_many(blobs, 3)
    assert formats.tolist() == [FORMAT_V1, FORMAT_V1] and versions.tolist() == [7, 7]
    assert decoded_times.tolist() == [T0, -5]
    np.testing.assert_array_equal(decoded, values)


def test_schema_fingerprint_changes_with_names_and_order():
    assert schema_fingerprint(["a", "b"]) == schema_fingerprint(("a", "b"))
    assert schema_fingerprint(["a", "b"]) != schema_fingerprint(["b", "a"])
    assert schema_fingerprint(["a", "b"]) != schema_fingerprint(["a", "c"])
    assert 0 <= schema_fingerprint(["a"]) < 2**32


def test_online_group_from_the_metadata_keeps_feature_order_and_ttl():
    from common.spec.features import FeatureGroup

    spec = FeatureGroup(
        entity="customer",
        source="events",
        ttl="2 days",
        features=[
            {"name": "calls_7d", "agg": "count", "window": "7 days"},
            {"name": "spend_1d", "agg": "sum", "expr": "amount", "window": "1 day"},
        ],
    )
    group = OnlineGroup.from_spec("activity", spec)
    assert group == OnlineGroup("activity", ("calls_7d", "spend_1d"), ttl_seconds=2 * 86400)
    assert group.schema_version == schema_fingerprint(["calls_7d", "spend_1d"])


# -- keys ---------------------------------------------------------------------------------


def test_keys_of_one_entity_share_a_cluster_slot_and_braces_are_escaped():
    key = redis_key("loom:churn:v1:", "C-1", "activity")
    assert key == "loom:churn:v1:{C-1}:activity"
    slots = {key_slot(redis_key("loom:churn:v1:", "C-1", g).encode()) for g in ("activity", "profile", "x")}
    assert len(slots) == 1
    assert escape_entity("a{b}%") == "a%7Bb%7D%25"
    tricky = {key_slot(redis_key("loom:churn:v1:", "a}b{", g).encode()) for g in ("activity", "profile")}
    assert len(tricky) == 1
    with pytest.raises(DataError, match="empty"):
        escape_entity("")
    with pytest.raises(ConfigError, match="brace"):
        RedisOnlineStore("redis://unused:1/0", prefix="loom:{x}:")


def test_slot_chunks_for_a_cluster_keep_each_call_in_one_slot():
    keys = [redis_key("p:", f"e{i % 7}", f"g{i}").encode() for i in range(40)]
    chunks = slot_chunks(keys, 3, by_slot=True)
    assert sorted(int(i) for chunk in chunks for i in chunk) == list(range(40))
    assert all(len({key_slot(keys[i]) for i in chunk}) == 1 and len(chunk) <= 3 for chunk in chunks)
    assert slot_chunks(keys, 16, by_slot=False) == [slice(0, 16), slice(16, 32), slice(32, 48)]


# -- the Python writer and the guard --------------------------------------------------------


def test_older_write_after_newer_keeps_the_newer_and_equal_time_overwrites(store, redis_client):
    key = store.key("C1", ACTIVITY)
    assert store.write(ACTIVITY, ["C1"], [[1.0, 2.0, 3.0]], [T0 + 10]) == (1, 0)
    assert store.write(ACTIVITY, ["C1"], [[9.0, 9.0, 9.0]], [T0]) == (0, 1)
    assert stored_time(redis_client, key) == T0 + 10
    assert store.read(["C1"], ["activity"])[("C1", "activity")].values.tolist() == [1.0, 2.0, 3.0]

    # equal event time: overwritten, so a replay is idempotent and a correction lands
    assert store.write(ACTIVITY, ["C1"], [[4.0, None, 6.0]], [T0 + 10]) == (1, 0)
    vector = store.read(["C1"], ["activity"])[("C1", "activity")]
    assert vector.as_dict() == {"calls_7d": 4.0, "avg_payment_30d": None, "logins_1d": 6.0}
    assert vector.event_time == datetime(2026, 1, 1, tzinfo=UTC).replace(microsecond=10)


def test_many_keys_in_one_write_are_guarded_key_by_key(store, redis_client):
    entities = [f"E{i}" for i in range(1200)]  # several script calls of `chunk` keys
    store.write(PROFILE, entities, np.ones((1200, 2)), np.full(1200, T0, dtype=np.int64))
    times = np.where(np.arange(1200) % 2 == 0, T0 - 1, T0 + 1)  # even: older, odd: newer
    result = store.write(PROFILE, entities, np.full((1200, 2), 2.0), times)
    assert result == (600, 600)
    read = store.read(entities, ["profile"])
    assert [read[(e, "profile")].values[0] for e in entities[:4]] == [1.0, 2.0, 1.0, 2.0]


def test_ttl_is_set_from_the_group_and_absent_without_one(store, redis_client):
    store.write(ACTIVITY, ["C1"], [[1.0, 2.0, 3.0]], [T0])
    store.write(PROFILE, ["C1"], [[10.0, 40.0]], [T0])
    assert 0 < redis_client.ttl(store.key("C1", ACTIVITY)) <= 600
    assert redis_client.ttl(store.key("C1", PROFILE)) == -1  # -1: exists without expiry


def test_write_frame_accepts_pandas_and_arrow(store):
    frame = pd.DataFrame(
        {
            "customer_id": ["A", "B"],
            "ts": pd.to_datetime(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"]),
            "tenure_months": [3.0, None],
            "age": [30, 40],
        }
    )
    assert store.write_frame(PROFILE, frame, entity_column="customer_id", event_time_column="ts") == (2, 0)
    table = pa.Table.from_pandas(frame.assign(age=[31, 41]))
    assert store.write_frame("profile", table, entity_column="customer_id", event_time_column="ts") == (2, 0)
    read = store.read(["A", "B"], ["profile"])
    assert read[("B", "profile")].as_dict() == {"tenure_months": None, "age": 41.0}
    assert read[("B", "profile")].event_time_us == T0 + 1_000_000
    with pytest.raises(DataError, match=r"columns \['age'\] are missing"):
        store.write_frame(PROFILE, frame.drop(columns="age"), entity_column="customer_id", event_time_column="ts")


def test_bad_inputs_are_data_errors(store):
    with pytest.raises(DataError, match="one row of values per entity"):
        store.write(PROFILE, ["A", "B"], [[1.0, 2.0]], [T0, T0])
    with pytest.raises(DataError, match="must be numbers"):
        store.write(PROFILE, ["A"], [[1.0, 2.0, 3.0]], [T0])
    with pytest.raises(DataError, match="missing"):
        store.write(PROFILE, [None], [[1.0, 2.0]], [T0])
    with pytest.raises(DataError, match="event time"):
        store.write(PROFILE, ["A"], [[1.0, 2.0]], [pd.NaT])
    with pytest.raises(ConfigError, match=r"unknown feature group 'nope'.*\['activity', 'profile'\]"):
        store.read(["A"], ["nope"])


def test_the_guard_script_is_reloaded_after_the_server_forgets_it(store, redis_client):
    store.write(PROFILE, ["A"], [[1.0, 2.0]], [T0])
    redis_client.script_flush()
    assert store.write(PROFILE, ["A", "B"], [[3.0, 4.0], [5.0, 6.0]], [T0, T0]) == (2, 0)


# -- the reader ---------------------------------------------------------------------------


def test_read_of_many_entities_and_two_groups_is_one_round_trip_and_reports_missing(store, redis_client):
    entities = [f"C{i}" for i in range(50)]
    store.write(ACTIVITY, entities, np.arange(150, dtype=float).reshape(50, 3), np.full(50, T0, dtype=np.int64))
    store.write(PROFILE, entities[:10], np.ones((10, 2)), np.full(10, T0, dtype=np.int64))
    redis_client.config_resetstat()

    read = store.read([*entities, "ghost"], ["activity", "profile"])

    stats = redis_client.info("commandstats")
    data_commands = {
        name: s["calls"] for name, s in stats.items() if not name.startswith(("cmdstat_info", "cmdstat_config"))
    }
    assert data_commands == {"cmdstat_mget": 1}
    assert len(read) == 50 + 10
    assert read[("C7", "activity")].values.tolist() == [21.0, 22.0, 23.0]
    assert read[("C7", "profile")].names == PROFILE.feature_names
    assert set(read.missing) == {("ghost", "activity"), ("ghost", "profile")} | {(e, "profile") for e in entities[10:]}
    assert not read.mismatched


def test_schema_version_mismatch_is_reported_not_decoded(store, redis_url):
    store.write(ACTIVITY, ["C1"], [[1.0, 2.0, 3.0]], [T0])
    renamed = OnlineGroup("activity", ("calls_7d", "avg_payment_30d", "logins_7d"))
    with RedisOnlineStore(redis_url, usecase="churn", version=1, groups=[renamed]) as newer_code:
        read = newer_code.read(["C1"], ["activity"])
    assert ("C1", "activity") not in read
    mismatch = read.mismatched[("C1", "activity")]
    assert (mismatch.expected, mismatch.found) == (renamed.schema_version, ACTIVITY.schema_version)
    assert mismatch.event_time_us == T0


def test_delete_entity_removes_every_group_of_that_entity_only(store, redis_client):
    for entity in ("C1", "C2"):
        store.write(ACTIVITY, [entity], [[1.0, 2.0, 3.0]], [T0])
        store.write(PROFILE, [entity], [[1.0, 2.0]], [T0])
    redis_client.set(store.key("C1", "old_group"), b"x")
    assert store.delete_entity("C1") == 2
    assert redis_client.exists(store.key("C1", "old_group")) == 1
    assert store.delete_entity_everywhere("C1") == 1
    read = store.read(["C1", "C2"], ["activity", "profile"])
    assert set(read) == {("C2", "activity"), ("C2", "profile")}


def test_unknown_backend_names_the_known_ones(redis_url):
    with pytest.raises(ConfigError, match=r"unknown online store backend 'cassandra'.*\['redis'\]"):
        get_online_store("cassandra")
    assert "redis" in known_backends()
    opened = get_online_store("redis", url=redis_url, usecase="churn", version=1)
    assert isinstance(opened, RedisOnlineStore) and opened.prefix == "loom:churn:v1:"
    opened.close()


# -- the Spark materializer ----------------------------------------------------------------


def _frame(spark, rows):
    return spark.createDataFrame(
        rows, "customer_id string, ts timestamp, calls_7d long, avg_payment_30d double, logins_1d double"
    )


@pytest.fixture(params=["executors", "driver"])
def path(request):
    """Where the materializer writes from: Spark's executors (a DataFrame) or the driver (its rows as Arrow,
    a small streaming batch)."""
    return request.param


def _materialize(df, redis_url, path="executors", **kwargs):
    return write_features_to_online_store(
        df.toArrow() if path == "driver" else df,
        usecase="churn",
        version=1,
        group="activity",
        feature_names=ACTIVITY.feature_names,
        entity_column="customer_id",
        event_time_column="ts",
        redis_url=redis_url,
        ttl_seconds=600,
        **kwargs,
    )


def test_materializer_writes_the_expected_bytes(spark, redis_client, redis_url, path):
    t = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [("C1", t, 3, 12.5, None), ("we{ir}d", t, 0, None, 1.0)]
    assert _materialize(_frame(spark, rows), redis_url, path) == (2, 0)
    version = ACTIVITY.schema_version
    assert redis_client.get("loom:churn:v1:{C1}:activity") == encode_one([3.0, 12.5, None], T0, version)
    assert redis_client.get("loom:churn:v1:{we%7Bir%7Dd}:activity") == encode_one([0.0, None, 1.0], T0, version)
    assert 0 < redis_client.ttl("loom:churn:v1:{C1}:activity") <= 600


def test_a_date_as_event_time_is_its_midnight_utc(spark, redis_client, redis_url, path):
    schema = "customer_id string, ts date, calls_7d long, avg_payment_30d double, logins_1d double"
    rows = spark.createDataFrame([("C1", date(2026, 1, 1), 3, 12.5, None)], schema)
    assert _materialize(rows, redis_url, path) == (1, 0)
    expected = encode_one([3.0, 12.5, None], T0, ACTIVITY.schema_version)
    assert redis_client.get("loom:churn:v1:{C1}:activity") == expected


def test_materializer_honours_the_guard_against_newer_values(spark, redis_client, redis_url, store, path):
    store.write(ACTIVITY, ["C1"], [[7.0, 7.0, 7.0]], [T0 + 1])  # e.g. written by the stream
    t = datetime(2026, 1, 1, tzinfo=UTC)
    older = _frame(spark, [("C1", t, 1, 1.0, 1.0), ("C2", t, 2, 2.0, 2.0)])
    assert _materialize(older, redis_url, path) == (1, 1)
    assert store.read(["C1"], ["activity"])[("C1", "activity")].values.tolist() == [7.0, 7.0, 7.0]
    same_time = _frame(spark, [("C1", t.replace(microsecond=1), 8, 8.0, 8.0)])
    assert _materialize(same_time, redis_url, path) == (1, 0)
    assert store.read(["C1"], ["activity"])[("C1", "activity")].values.tolist() == [8.0, 8.0, 8.0]


def test_materializer_reports_rows_without_key_or_time(spark, redis_client, redis_url, path):
    t = datetime(2026, 1, 1, tzinfo=UTC)
    df = _frame(
        spark, [("C1", t, 1, 1.0, 1.0), (None, t, 2, 2.0, 2.0), ("C3", None, 3, 3.0, 3.0), ("", t, 4, 4.0, 4.0)]
    )
    with pytest.raises(DataError, match="3 row"):
        _materialize(df, redis_url, path)
    assert redis_client.exists("loom:churn:v1:{C1}:activity") == 1  # the valid rows were written
    assert _materialize(df, redis_url, path, on_invalid="skip") == (1, 0)
    with pytest.raises(DataError, match=r"columns \['logins_1d'\] are missing"):
        _materialize(df.drop("logins_1d"), redis_url, path)
    with pytest.raises(DataError, match=r"features \['logins_1d \(string\)'\] are not numeric"):
        _materialize(df.withColumn("logins_1d", df.logins_1d.cast("string")), redis_url, path)
