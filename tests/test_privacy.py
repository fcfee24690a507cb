"""Privacy at ingestion: keys, pseudonyms, encryption, generalization and audited decryption."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os

import pytest
from pyspark.sql import functions as F

from common.errors import ConfigError, LoomError, PrivacyError
from common.privacy import (
    DecryptError,
    apply_policies,
    decrypt,
    encrypt,
    load_keyring,
    protected_columns,
    protected_type,
    pseudonym,
    require_keys,
)
from common.privacy.keys import key_id, key_uses
from common.spec import load_usecase
from common.spec.sources import Column, Source
from tests.key_helpers import b64, set_key

AUDIT = "loom.privacy.audit"
SPARK_TYPES = {"long": "bigint"}


def _source(columns: dict[str, dict]) -> Source:
    return Source.model_validate(
        {"kind": "table", "format": "csv", "path": "{landing}/x", "entity": "customer", "columns": columns}
    )


def _customers(count: int = 40) -> list[tuple]:
    """Rows of the churn customers schema; two share an email, one has null PII."""
    rows = []
    for i in range(count):
        rows.append(
            (
                f"C{i:05d}",
                f"Person Number{i} Lastname",
                f"person.{i}@example.org",
                f"+1 (415) 555-{i:04d}",
                f"{100 + i} Market Street Apt {i}",
                f"{94100 + i}",
                dt.date(1950 + i, 1 + i % 12, 2 + i % 27),
                f"ACCT/{i:08d}/X",
                "residential" if i % 2 else "business",
                "basic",
                20.0 + i,
                dt.date(2020, 1, 1) + dt.timedelta(days=i),
                dt.datetime(2024, 5, 1, 12, 0) + dt.timedelta(minutes=i),
            )
        )
    rows[1] = (*rows[1][:2], rows[0][2], *rows[1][3:])  # same email as row 0
    rows[2] = (rows[2][0], None, None, None, None, None, None, None, *rows[2][8:])
    return rows


CUSTOMER_SCHEMA = (
    "customer_id string, full_name string, email string, phone string, street_address string, zip string, "
    "date_of_birth date, account_number string, segment string, plan string, monthly_fee double, "
    "signup_date date, updated_at timestamp"
)
PII = ("full_name", "email", "phone", "street_address", "zip", "date_of_birth", "account_number")


# --- keys ---------------------------------------------------------------------------------------


def test_single_key_gets_its_hash_id(monkeypatch):
    material = os.urandom(32)
    set_key(monkeypatch, "k_single", b64(material))
    ring = load_keyring("k_single", "encryption")
    assert ring.active_id == hashlib.sha256(material).hexdigest()[:8]
    assert ring.active == material
    assert b64(material) not in repr(ring)


def test_key_from_file(monkeypatch, tmp_path):
    material = os.urandom(24)
    secret = tmp_path / "hmac.key"
    secret.write_text(b64(material) + "\n")
    monkeypatch.delenv("LOOM_KEY_K_FILE_TEST", raising=False)
    monkeypatch.setenv("LOOM_KEY_K_FILE_TEST_FILE", str(secret))
    assert load_keyring("k_file_test", "hmac").active == material


def test_raw_text_is_accepted_for_hmac_only(monkeypatch):
    set_key(monkeypatch, "k_raw", "a long passphrase, not base64!")
    assert load_keyring("k_raw", "hmac").active == b"a long passphrase, not base64!"
    with pytest.raises(ConfigError, match="LOOM_KEY_K_RAW") as error:
        load_keyring("k_raw", "encryption")
    assert "passphrase" not in str(error.value)


@pytest.mark.parametrize(
    ("purpose", "size"),
    [("hmac", 8), ("encryption", 16), ("encryption", 31)],
)
def test_short_key_is_refused_without_showing_it(monkeypatch, purpose, size):
    value = b64(os.urandom(size))
    set_key(monkeypatch, "k_short", value)
    with pytest.raises(ConfigError) as error:
        load_keyring("k_short", purpose)
    message = str(error.value)
    assert "LOOM_KEY_K_SHORT" in message
    assert f"{size} bytes" in message
    assert "Fix:" in message
    assert value not in message


def test_keyring_entry_that_is_not_base64_is_refused(monkeypatch):
    set_key(monkeypatch, "k_bad", f"new={b64(os.urandom(32))},old=abcde")
    with pytest.raises(ConfigError, match=r"LOOM_KEY_K_BAD: keyring entry 'old' is not valid base64"):
        load_keyring("k_bad", "encryption")


def test_require_keys_names_key_columns_and_variable(monkeypatch):
    usecase = load_usecase("churn")
    monkeypatch.delenv("LOOM_KEY_PII_HMAC", raising=False)
    monkeypatch.delenv("LOOM_KEY_PII_HMAC_FILE", raising=False)
    with pytest.raises(ConfigError) as error:
        require_keys(usecase.sources)
    message = str(error.value)
    assert "'pii_hmac'" in message
    assert "sources.customers.columns.phone" in message
    assert "sources.customers.columns.account_number" in message
    assert "export LOOM_KEY_PII_HMAC=" in message
    assert "pii_encryption" not in message  # set by conftest, so not a problem


def test_require_keys_passes_when_all_keys_are_valid(monkeypatch):
    sources = load_usecase("churn").sources
    # The check must cover both purposes the churn policies use, or "passes" would prove nothing.
    assert {(name, purpose) for name, purpose, _ in key_uses(sources)} == {
        ("pii_hmac", "hmac"),
        ("pii_encryption", "encryption"),
    }
    set_key(monkeypatch, "pii_hmac", b64(os.urandom(32)))
    set_key(monkeypatch, "pii_encryption", f"new={b64(os.urandom(32))},old={b64(os.urandom(32))}")
    assert require_keys(sources) is None  # no ConfigError: every key is set and valid


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("pii_encryption", b64(os.urandom(16)), "16 bytes"),
        ("pii_encryption", f"new={b64(os.urandom(32))},old=abcde", "not valid base64"),
        ("pii_hmac", b64(os.urandom(8)), "8 bytes"),
    ],
    ids=["short-encryption-key", "bad-keyring-entry", "short-hmac-key"],
)
def test_require_keys_fails_on_an_invalid_key(monkeypatch, name, value, reason):
    """The negative twin: the same sources with one key set but invalid are refused, naming that key only."""
    set_key(monkeypatch, "pii_hmac", b64(os.urandom(32)))
    set_key(monkeypatch, "pii_encryption", b64(os.urandom(32)))
    set_key(monkeypatch, name, value)
    with pytest.raises(ConfigError) as error:
        require_keys(load_usecase("churn").sources)
    message = str(error.value)
    assert f"key {name!r}" in message
    assert f"LOOM_KEY_{name.upper()}" in message
    assert reason in message
    other = "pii_hmac" if name == "pii_encryption" else "pii_encryption"
    assert f"key {other!r}" not in message


# --- policy types -------------------------------------------------------------------------------


def test_protected_types_of_churn_customers():
    customers = load_usecase("churn").sources["customers"]
    assert protected_type(customers.columns["full_name"]) is None
    assert protected_type(customers.columns["email"]) == "string"
    assert protected_type(customers.columns["date_of_birth"]) == "date"
    assert protected_type(customers.columns["monthly_fee"]) == "double"
    assert "street_address" not in protected_columns(customers, "customers")


def test_year_rule_on_a_string_column_is_refused():
    column = Column.model_validate({"type": "string", "pii": {"method": "generalize", "rule": "year"}})
    with pytest.raises(PrivacyError, match=r"sources\.s\.columns\.born\.pii\.rule: .*date or timestamp"):
        protected_type(column, where="sources.s.columns.born")


def test_pii_without_policy_is_refused(spark):
    source = _source({"id": {"type": "string"}, "ssn": {"type": "string", "pii": True}})
    df = spark.createDataFrame([("1", "123-45-6789")], "id string, ssn string")
    with pytest.raises(PrivacyError) as error:
        apply_policies(df, source, "people")
    message = str(error.value)
    assert "sources.people.columns.ssn.pii" in message
    assert "Fix:" in message


# --- pseudonymization ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 64, 100])  # shorter than, equal to and longer than the HMAC block
def test_spark_pseudonym_equals_python_hmac(spark, monkeypatch, size):
    material = os.urandom(size)
    set_key(monkeypatch, "k_hmac", b64(material))
    source = _source({"v": {"type": "string", "pii": {"method": "pseudonymize", "key": "k_hmac"}}})
    values = ["alice@example.org", "", "héllo wörld ✓", None, "x" * 300]
    df = spark.createDataFrame([(v,) for v in values], "v string")
    tokens = [r.v for r in apply_policies(df, source, "s").collect()]
    kid = key_id(material)
    expected = [
        None if v is None else f"{kid}:{hmac.new(material, v.encode(), hashlib.sha256).hexdigest()}" for v in values
    ]
    assert tokens == expected
    assert tokens[0] == pseudonym(values[0], "k_hmac")


def test_conftest_raw_text_hmac_key_matches_python(spark):
    material = os.environ["LOOM_KEY_PII_HMAC"].encode()
    source = _source({"phone": {"type": "string", "pii": {"method": "pseudonymize", "key": "pii_hmac"}}})
    [row] = apply_policies(spark.createDataFrame([("+1 555 0100",)], "phone string"), source, "s").collect()
    assert row.phone.split(":")[1] == hmac.new(material, b"+1 555 0100", hashlib.sha256).hexdigest()


def test_keys_never_appear_in_the_query_plan(spark, monkeypatch, capsys):
    from common.privacy.crypto import hmac_pads, subkey

    material = os.urandom(32)
    set_key(monkeypatch, "k_plan", b64(material))
    source = _source(
        {
            "v": {"type": "string", "pii": {"method": "pseudonymize", "key": "k_plan"}},
            "w": {"type": "string", "pii": {"method": "encrypt", "mode": "deterministic", "key": "k_plan"}},
        }
    )
    protected = apply_policies(spark.createDataFrame([("a", "b")], "v string, w string"), source, "s")
    protected.explain(mode="extended")
    plan = capsys.readouterr().out.lower()
    assert "sha2" in plan and "loom_encrypt_siv" in plan  # the plan was printed
    for secret in (material, *hmac_pads(material), subkey(material, "siv")):
        assert secret.hex() not in plan
    assert protected.columns == ["v", "w"]


# --- encryption ---------------------------------------------------------------------------------


def test_spark_encryption_deterministic_and_randomized(spark):
    source = _source(
        {
            "id": {"type": "long"},
            "det": {"type": "string", "pii": {"method": "encrypt", "mode": "deterministic", "key": "pii_encryption"}},
            "rnd": {"type": "string", "pii": {"method": "encrypt", "mode": "randomized", "key": "pii_encryption"}},
        }
    )
    plain = ["same", "same", "other", None, ""]
    df = spark.createDataFrame([(i, v, v) for i, v in enumerate(plain)], "id long, det string, rnd string")
    rows = sorted(apply_policies(df, source, "s").collect(), key=lambda r: r.id)
    det = [r.det for r in rows]
    rnd = [r.rnd for r in rows]

    assert det[0] == det[1] != det[2]
    assert det[0] == encrypt("same", "pii_encryption", mode="deterministic")
    assert rnd[0] != rnd[1]
    assert det[3] is None and rnd[3] is None
    kid = load_keyring("pii_encryption", "encryption").active_id
    for i, value in enumerate(plain):
        if value is None:
            continue
        assert det[i].startswith(f"{kid}:siv:") and rnd[i].startswith(f"{kid}:gcm:")
        assert decrypt(det[i], "pii_encryption", reason="test", actor="pytest") == value
        assert decrypt(rnd[i], "pii_encryption", reason="test", actor="pytest") == value


def test_randomized_encryption_differs_each_time():
    tokens = {encrypt("same value", "pii_encryption") for _ in range(20)}
    assert len(tokens) == 20
    assert {decrypt(t, "pii_encryption", reason="test", actor="pytest") for t in tokens} == {"same value"}


def test_rotation_writes_with_first_key_and_reads_with_all(monkeypatch):
    old, new = os.urandom(32), os.urandom(32)
    set_key(monkeypatch, "k_rot", b64(old))
    before = {mode: encrypt("rotate me", "k_rot", mode=mode) for mode in ("deterministic", "randomized")}
    pseudonym_before = pseudonym("rotate me", "k_rot")
    assert before["deterministic"].startswith(key_id(old) + ":")

    set_key(monkeypatch, "k_rot", f"k2={b64(new)},k1={b64(old)}")
    for token in before.values():  # the old key now answers to both 'k1' and its hash id
        assert decrypt(token, "k_rot", reason="rotation test", actor="pytest") == "rotate me"
    after = encrypt("rotate me", "k_rot", mode="deterministic")
    assert after.startswith("k2:siv:")
    assert after != before["deterministic"]
    assert decrypt(after, "k_rot", reason="rotation test", actor="pytest") == "rotate me"
    assert pseudonym("rotate me", "k_rot").startswith("k2:")
    assert pseudonym("rotate me", "k_rot", kid=key_id(old)) == pseudonym_before

    set_key(monkeypatch, "k_rot", b64(new))  # old key retired: its tokens no longer read
    with pytest.raises(ConfigError, match=r"key id 'k1' is not in LOOM_KEY_K_ROT"):
        decrypt("k1" + before["randomized"][8:], "k_rot", reason="rotation test", actor="pytest")


def test_decrypt_writes_an_audit_record_without_the_plaintext(caplog):
    token = encrypt("secret@example.org", "pii_encryption", mode="deterministic")
    caplog.set_level(logging.INFO, logger=AUDIT)
    assert decrypt(token, "pii_encryption", reason="ticket SUP-42", actor="alice") == "secret@example.org"
    [record] = [r for r in caplog.records if r.name == AUDIT]
    text = record.getMessage()
    assert "alice" in text and "SUP-42" in text and token.split(":")[0] in text
    assert "secret@example.org" not in text
    assert record.audit["outcome"] == "ok"
    assert "secret@example.org" not in repr(record.__dict__)


def test_decrypt_refuses_and_audits_bad_requests(caplog):
    token = encrypt("secret", "pii_encryption", mode="randomized")
    caplog.set_level(logging.INFO, logger=AUDIT)
    with pytest.raises(DecryptError, match="reason"):
        decrypt(token, "pii_encryption", reason="", actor="alice")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(DecryptError, match="does not authenticate"):
        decrypt(tampered, "pii_encryption", reason="test", actor="alice")
    with pytest.raises(LoomError, match="key id 'nope'"):
        decrypt("nope:gcm:AAAA", "pii_encryption", reason="test", actor="alice")
    with pytest.raises(DecryptError, match="not a Loom ciphertext token"):
        decrypt("plain text", "pii_encryption", reason="test", actor="alice")
    outcomes = [r.audit["outcome"] for r in caplog.records if r.name == AUDIT]
    assert outcomes == ["refused"] * 4


# --- generalization -----------------------------------------------------------------------------


def test_generalize_rules(spark):
    source = _source(
        {
            "zip": {"type": "string", "pii": {"method": "generalize", "rule": "prefix", "keep": 3}},
            "born": {"type": "date", "pii": {"method": "generalize", "rule": "year"}},
            "seen": {"type": "timestamp", "pii": {"method": "generalize", "rule": "year"}},
            "income": {"type": "double", "pii": {"method": "generalize", "rule": "bucket", "size": 10}},
            "age": {"type": "long", "pii": {"method": "generalize", "rule": "bucket", "size": 5}},
        }
    )
    df = spark.createDataFrame(
        [
            ("94107", dt.date(1985, 3, 14), dt.datetime(2021, 7, 9, 13, 5), 47.5, 37),
            ("9", dt.date(2000, 12, 31), dt.datetime(1999, 12, 31, 23, 59), -3.0, 0),
            (None, None, None, None, None),
        ],
        "zip string, born date, seen timestamp, income double, age long",
    )
    out = apply_policies(df, source, "s")
    assert dict(out.dtypes) == {"zip": "string", "born": "date", "seen": "date", "income": "double", "age": "double"}
    assert [tuple(r) for r in out.collect()] == [
        ("941", dt.date(1985, 1, 1), dt.date(2021, 1, 1), 40.0, 35.0),
        ("9", dt.date(2000, 1, 1), dt.date(1999, 1, 1), -10.0, 0.0),
        (None, None, None, None, None),
    ]
    assert out.select(F.year("born")).first()[0] == 1985


# --- the churn customers source, batch and streaming --------------------------------------------


def _check_protected(rows: list, raw_rows: list[tuple], output_columns: list[str]) -> None:
    raw = {}
    for raw_row in raw_rows:
        for name, value in zip(CUSTOMER_SCHEMA.split(", "), raw_row, strict=True):
            if name.split()[0] in PII and value is not None:
                raw[str(value)] = name.split()[0]
    for row in rows:
        for column in output_columns:
            cell = row[column]
            if cell is None:
                continue
            text = str(cell)
            assert text not in raw, f"raw {raw[text]} value in output column {column}"
            leaked = [value for value in raw if len(value) >= 8 and value in text]
            assert not leaked, f"raw PII inside output column {column}"


def test_churn_customers_leave_no_raw_pii(spark):
    customers = load_usecase("churn").sources["customers"]
    raw_rows = _customers()
    df = spark.createDataFrame(raw_rows, CUSTOMER_SCHEMA)
    out = apply_policies(df, customers, "customers")

    expected = protected_columns(customers, "customers")
    assert out.columns == [c for c in df.columns if c in expected]
    assert dict(out.dtypes) == {name: SPARK_TYPES.get(kind, kind) for name, kind in expected.items()}
    rows = sorted(out.collect(), key=lambda r: r.customer_id)
    _check_protected(rows, raw_rows, out.columns)

    assert rows[0].email == rows[1].email  # deterministic: the shared email still joins
    assert decrypt(rows[0].email, "pii_encryption", reason="test", actor="pytest") == raw_rows[0][2]
    assert rows[2].email is None and rows[2].phone is None and rows[2].date_of_birth is None
    assert rows[0].zip == "941"
    assert rows[5].date_of_birth == dt.date(1955, 1, 1)
    assert rows[7].phone == pseudonym(raw_rows[7][3], "pii_hmac")
    assert rows[9].segment == raw_rows[9][8] and rows[9].monthly_fee == raw_rows[9][10]


def test_streaming_gives_the_same_rows_as_batch(spark, tmp_path):
    customers = load_usecase("churn").sources["customers"]
    raw_rows = _customers(30)
    table = str(tmp_path / "landing")
    spark.createDataFrame(raw_rows, CUSTOMER_SCHEMA).write.format("delta").save(table)

    stream = apply_policies(spark.readStream.format("delta").load(table), customers, "customers")
    assert stream.isStreaming
    query = (
        stream.writeStream.format("memory")
        .queryName("privacy_stream_test")
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination(120)
        assert query.exception() is None
        streamed = sorted(spark.table("privacy_stream_test").collect(), key=lambda r: r.customer_id)
    finally:
        query.stop()
        spark.catalog.dropTempView("privacy_stream_test")

    batch = apply_policies(spark.read.format("delta").load(table), customers, "customers")
    # every churn policy is deterministic, so both paths must write identical rows
    assert streamed == sorted(batch.collect(), key=lambda r: r.customer_id)
    assert len(streamed) == 30
    _check_protected(streamed, raw_rows, stream.columns)
