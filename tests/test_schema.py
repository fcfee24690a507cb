"""metadata/schema.json is generated from the spec models and must be current."""

from __future__ import annotations

import json

from common.spec.schema import SCHEMA_PATH, is_stale, schema_text


def test_committed_schema_is_current():
    assert not is_stale(), f"{SCHEMA_PATH} is stale: run `loom schema --write` and commit it"


def test_schema_forbids_unknown_keys():
    schema = json.loads(schema_text())
    assert schema["additionalProperties"] is False
    source = schema["$defs"]["Source"]
    assert source["additionalProperties"] is False
    assert "event_time" in source["properties"]
