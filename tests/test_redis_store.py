"""Redis is real: a round trip, and the helper starts and stops its own server."""

from __future__ import annotations

import pytest
import redis

from common.runtime.redis_server import RedisServer, connect, describe


def test_round_trip(redis_client):
    redis_client.set("loom:test:key", b"\x00\x01vector", ex=30)
    assert redis_client.get("loom:test:key") == b"\x00\x01vector"
    assert 0 < redis_client.ttl("loom:test:key") <= 30


def test_helper_starts_and_stops_its_own_server():
    server = RedisServer().start()
    client = connect(server.url)
    assert client.ping()
    folder = server.directory
    assert folder is not None and folder.exists()
    server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5).ping()
    assert not folder.exists(), "the temporary folder is removed at stop"


def test_describe_hides_credentials():
    assert describe("redis://user:s3cret@example:6380/0") == "redis://example:6380/0"


def test_a_server_in_a_work_folder_keeps_its_data_across_restarts(tmp_path):
    first = RedisServer(directory=tmp_path / "redis", persistent=True, stop_at_exit=True).start()
    connect(first.url).set("loom:test:kept", b"vector", ex=600)
    first.stop()
    second = RedisServer(directory=tmp_path / "redis", persistent=True, stop_at_exit=True).start()
    try:
        client = connect(second.url)
        assert client.get("loom:test:kept") == b"vector"
        assert client.ttl("loom:test:kept") > 0
    finally:
        second.stop()
