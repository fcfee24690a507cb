"""Synthetic churn data for a cable and telecom operator, written as landing files.

Seeded and deterministic: the same options give byte-identical files. The run is
a simulation hour by hour; all customers are numpy arrays and every hour's events
are generated vectorized, so memory holds one hour (plus late events in flight),
never the whole event log.

The model, i.e. the signal a churn model can learn:

* every customer has a hidden frustration in [0, 1] that raises support calls;
* outages hit a region (customers sharing a zip prefix); 60% of its customers
  send an ``outage_report``, and each of those calls support within 30 minutes
  with probability 0.25 + 0.6 * frustration;
* 10% of customers are short of money: 40% of their payments fail. A failed
  payment is a ``payment`` event with ``amount`` 0.0 (nothing was collected);
* each customer gets one outcome at ``label_ts`` (in the second half of the
  period). ``churned`` is drawn with
  ``logit = -3.2 + 2.6·min(outage→call, 2) + 0.3·min(support calls, 6)
  + 0.8·min(failed payments, 3) + 0.4·[plan = basic]``, counting only events
  before ``label_ts``. A churned customer sends nothing after it.

The drift switch (``GenerateOptions.drift_at``): from 00:00 UTC of that day the
world changes, and everything before it stays byte-identical to the run
without the switch (the drift draws its own random numbers):

* concept: outages stop mattering (the operator now credits every outage
  automatically) and failed payments matter much more (a price rise): labels
  with ``label_ts`` at or after the switch use ``LOGIT_OUTAGE_THEN_CALL_AFTER``
  and ``LOGIT_FAILED_PAYMENT_AFTER``;
* features: another ``SHORT_OF_MONEY_SHARE_AFTER`` of the customers become short
  of money (more failed payments: ``failed_payments_30d`` shifts), and streaming
  sessions get ``STREAMING_FACTOR_AFTER`` times as long (``streaming_minutes_1d``
  shifts).

Files (names sort in arrival order; folders come from the use case's source paths, ``<out>/events`` for an
events source of ``format: kafka``, whose records ``loom generate --to kafka`` publishes):

* ``customers/customers-<time>-NNN.csv``: the snapshot before the first day, then
  one file per day with a new row version for each ``plan_change`` (``updated_at``
  = the event's time), so the table source keeps several versions per customer;
* ``events/events-<hour>-NNN.json``: JSON lines, one file per simulated hour of
  arrival, rows shuffled (out of order). Most events arrive within a minute;
  ``late_rate`` of them arrive 1–30 minutes late, and a tenth of those 1–6
  hours late, so they land in a later hour's file than their ``ts``;
* ``outcomes/outcomes-<day>-NNN.csv``: the labels decided that day.

Malformed records are extra records (valid data stays complete) injected at
``malformed_rate`` into events and customers files: bad JSON / a CSV row with
the wrong number of fields, a value of the wrong type, a missing required
value, a value outside ``allowed``, and a replay of an earlier file's record.
Each one is logged with its kind in ``_malformed.jsonl``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import ConfigError
from common.generate.landing import LandingWriter, records_folder
from common.generate.options import GenerateOptions, GenerateSummary
from common.lake.paths import is_local
from common.spec.usecase import UseCase

EVENT_TYPES = np.array(
    ["payment", "support_call", "outage_report", "plan_change", "device_reboot", "streaming_session"], dtype=object
)
PAYMENT, CALL, OUTAGE, PLAN_CHANGE, REBOOT, STREAMING = range(6)
CHANNELS = np.array(["phone", "chat", "app", "web", "store"], dtype=object)
# Channel probabilities per event type (rows in EVENT_TYPES order, columns in CHANNELS order).
CHANNEL_P = np.array(
    [
        [0.0, 0.0, 0.4, 0.4, 0.2],
        [0.75, 0.25, 0.0, 0.0, 0.0],
        [0.2, 0.0, 0.5, 0.3, 0.0],
        [0.2, 0.0, 0.0, 0.5, 0.3],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.6, 0.4, 0.0],
    ]
)
# Everyday events that are not support calls, and their shares.
BACKGROUND_TYPES = np.array([STREAMING, REBOOT, PAYMENT, PLAN_CHANGE])
BACKGROUND_P = np.array([0.64, 0.20, 0.15, 0.01])

PLANS = np.array(["basic", "standard", "premium", "gigabit"], dtype=object)
PLAN_P = np.array([0.30, 0.35, 0.20, 0.15])
PLAN_FEES = np.array([29.99, 49.99, 79.99, 109.99])
SEGMENTS = np.array(["residential", "business"], dtype=object)
BUSINESS_SHARE = 0.2
BUSINESS_FEE_FACTOR = 1.25

OUTAGES_PER_REGION_DAY = 0.3
REPORT_P = 0.6
REPORT_DELAY_MEAN_S = 600
FOLLOW_UP_BASE, FOLLOW_UP_FRUSTRATION = 0.25, 0.6
CALL_BASE, CALL_FRUSTRATION = 0.03, 0.12
SHORT_OF_MONEY_SHARE, FAIL_P_POOR, FAIL_P = 0.1, 0.4, 0.03

LOGIT_BASE = -3.2
LOGIT_OUTAGE_THEN_CALL = 2.6
LOGIT_SUPPORT_CALL = 0.3
LOGIT_FAILED_PAYMENT = 0.8
LOGIT_BASIC_PLAN = 0.4

# after GenerateOptions.drift_at
LOGIT_OUTAGE_THEN_CALL_AFTER = 0.0
LOGIT_FAILED_PAYMENT_AFTER = 2.0
SHORT_OF_MONEY_SHARE_AFTER = 0.5
STREAMING_FACTOR_AFTER = 0.25
DRIFT_SEED_SALT = 1  # the drift's own random stream: [seed, salt]

VERY_LATE_SHARE = 0.1
REPLAY_RESERVOIR = 256

# fmt: off
FIRST_NAMES = np.array([
    "Ada", "Alan", "Alice", "Amara", "Ana", "Ben", "Carla", "Chen", "David", "Elena", "Emma", "Farid", "Grace",
    "Hana", "Ivan", "James", "Jun", "Kofi", "Lea", "Liam", "Lucia", "Maya", "Mei", "Mohamed", "Nadia", "Noah",
    "Olga", "Omar", "Priya", "Raj", "Rosa", "Sam", "Sara", "Sofia", "Tariq", "Tom", "Uma", "Victor", "Yara", "Zoe",
], dtype=object)
LAST_NAMES = np.array([
    "Adams", "Baker", "Chen", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jones", "Kim",
    "Kowalski", "Lopez", "Martin", "Meyer", "Nguyen", "Novak", "Okafor", "Patel", "Petrov", "Quinn", "Rossi",
    "Sato", "Schmidt", "Silva", "Smith", "Tanaka", "Weber", "Wong",
], dtype=object)
STREETS = np.array([
    "Oak Street", "Maple Avenue", "Cedar Lane", "Pine Road", "Elm Street", "Harbor Way", "Mill Road", "Park Avenue",
    "River Drive", "Hill Street", "Station Road", "Church Lane", "Lake View", "Market Street", "Orchard Way",
], dtype=object)
# fmt: on
FIRST_LOWER = np.array([name.lower() for name in FIRST_NAMES], dtype=object)
LAST_LOWER = np.array([name.lower() for name in LAST_NAMES], dtype=object)
EMAIL_DOMAINS = np.array(["example.com", "example.net", "example.org"], dtype=object)

# fmt: off
CUSTOMER_COLUMNS = [
    "customer_id", "full_name", "email", "phone", "street_address", "zip", "date_of_birth", "account_number",
    "segment", "plan", "monthly_fee", "signup_date", "updated_at",
]
# fmt: on
EVENT_COLUMNS = ["event_id", "customer_id", "event_type", "ts", "amount", "duration_s", "channel"]
OUTCOME_COLUMNS = ["customer_id", "label_ts", "churned"]
SOURCES = {
    "customers": ("csv", CUSTOMER_COLUMNS),
    "events": ("json", EVENT_COLUMNS),
    "outcomes": ("csv", OUTCOME_COLUMNS),
}

# Malformed values per column; each one fails its column's type (never a value Spark would accept).
BAD_EVENT_VALUES = {
    "amount": ["abc", "12,50 EUR", "N/A"],
    "ts": ["yesterday", "2026-13-45T10:00:00Z", "01/02/2026 10:00"],
    "duration_s": ["long", "5 min"],
}
BAD_EVENT_ALLOWED = {"event_type": ["teleport", "unknown"], "channel": ["pigeon", "fax"]}
EVENT_REQUIRED = ["event_id", "customer_id", "event_type", "ts"]
BAD_CUSTOMER_VALUES = {
    "monthly_fee": ["abc", "free"],
    "signup_date": ["someday", "2020-02-30"],
    "updated_at": ["yesterday", "2026-01-01 25:00:00"],
    "date_of_birth": ["31/02/1980", "unknown"],
}
BAD_CUSTOMER_ALLOWED = {"segment": ["government"], "plan": ["platinum", "ultra"]}
CUSTOMER_REQUIRED = ["customer_id", "segment", "plan", "monthly_fee", "signup_date", "updated_at"]


def source_folders(spec: UseCase, out: Path) -> dict[str, Path]:
    """Landing folder of each churn source under ``out``; checks the metadata matches what is written."""
    folders: dict[str, Path] = {}
    for name, (fmt, columns) in SOURCES.items():
        source = spec.sources.get(name)
        if source is None:
            raise ConfigError(
                f"use case {spec.name!r} has no source {name!r}, which the churn generator writes. "
                f"Fix: declare sources.{name} (see metadata/churn/sources.yaml) or use another generator"
            )
        # a Kafka source of JSON-shaped events: the generator writes its records as JSON lines to publish
        kafka_twin = fmt == "json" and source.format == "kafka"
        if (source.format != fmt and not kafka_twin) or set(source.columns) != set(columns):
            raise ConfigError(
                f"sources.{name} of use case {spec.name!r} (format {source.format}, columns "
                f"{sorted(source.columns)}) does not match what the churn generator writes "
                f"(format {fmt}, columns {sorted(columns)}). "
                "Fix: align metadata/churn/sources.yaml and common/generate/churn.py"
            )
        folder = records_folder(name, source, out)
        if not is_local(folder):
            raise ConfigError(
                f"sources.{name}.path expands to {folder}, not a local folder; the generator writes local files. "
                "Fix: pass --out with a local folder and copy the files afterwards"
            )
        folders[name] = Path(folder)
    return folders


def generate(spec: UseCase, out: Path, options: GenerateOptions, *, overwrite: bool = False) -> GenerateSummary:
    """Write the churn landing files for ``spec`` under ``out`` (the ``{landing}`` root)."""
    folders = source_folders(spec, out)
    writer = LandingWriter(out, folders, overwrite=overwrite)
    columns = {name: list(spec.sources[name].columns) for name in SOURCES}
    simulation = _Simulation(options, writer, columns)
    simulation.run()
    return writer.finish(simulation.facts())


# --- vectorized rendering ----------------------------------------------------


def _iso(seconds: np.ndarray) -> np.ndarray:
    """Epoch seconds -> ``2026-01-01T00:05:13Z`` strings."""
    text = np.datetime_as_string(np.asarray(seconds, dtype="int64").astype("datetime64[s]"), unit="s")
    return np.char.add(text, "Z").astype(object)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(np.asarray(numbers).astype(str), width)).astype(object)


def _stamp(epoch: int) -> str:
    return time.strftime("%Y%m%dT%H%M", time.gmtime(epoch))


def _csv_line(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()


def _csv_fields(line: str) -> list[str]:
    return next(csv.reader([line]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _Population:
    """Per-customer attributes and running state as numpy arrays (no per-customer Python objects)."""

    def __init__(self, rng: np.random.Generator, options: GenerateOptions, start: int) -> None:
        n = options.customers
        self.n = n
        self.regions = int(np.clip(n // 10, 1, 900))
        self.region = rng.integers(0, self.regions, n)
        self.zip_tail = rng.integers(0, 100, n)
        self.first = rng.integers(0, FIRST_NAMES.size, n)
        self.last = rng.integers(0, LAST_NAMES.size, n)
        self.street_no = rng.integers(1, 9999, n)
        self.street = rng.integers(0, STREETS.size, n)
        self.area = rng.integers(201, 990, n)
        self.line = rng.integers(0, 10_000_000, n)
        dob_low = (np.datetime64("1940-01-01") - np.datetime64("1970-01-01")).astype(int)
        dob_high = (np.datetime64("2005-12-31") - np.datetime64("1970-01-01")).astype(int)
        self.dob = rng.integers(dob_low, dob_high, n)
        self.account = rng.integers(10**9, 10**10, n, dtype=np.int64)
        self.segment = (rng.random(n) < BUSINESS_SHARE).astype(np.int8)
        self.plan = rng.choice(PLAN_FEES.size, n, p=PLAN_P).astype(np.int8)
        start_day = start // 86400
        self.signup = start_day - rng.integers(30, 8 * 365, n)
        self.snapshot_at = start - rng.integers(3600, 30 * 86400, n)
        self.frustration = rng.beta(2.0, 5.0, n)
        self.fail_p = np.where(rng.random(n) < SHORT_OF_MONEY_SHARE, FAIL_P_POOR, FAIL_P)
        self.activity = rng.gamma(2.0, 0.5, n)
        period = options.days * 86400
        self.label_ts = start + rng.integers(period // 2, period, n)
        self.active = np.ones(n, dtype=bool)
        self.churned = np.full(n, -1, dtype=np.int8)
        self.outage_then_call = np.zeros(n, dtype=np.int32)
        self.calls = np.zeros(n, dtype=np.int32)
        self.failed = np.zeros(n, dtype=np.int32)
        order = np.argsort(self.region, kind="stable")
        self.region_members = order
        self.region_starts = np.searchsorted(self.region[order], np.arange(self.regions + 1))

    def fee(self, customers: np.ndarray, plan: np.ndarray | None = None) -> np.ndarray:
        plan = self.plan[customers] if plan is None else plan
        factor = np.where(self.segment[customers] == 1, BUSINESS_FEE_FACTOR, 1.0)
        return np.round(PLAN_FEES[plan] * factor, 2)

    def members(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Customers of ``regions`` and, for each, the index of its region in ``regions``."""
        lows, highs = self.region_starts[regions], self.region_starts[regions + 1]
        chunks = [self.region_members[lo:hi] for lo, hi in zip(lows, highs, strict=True)]
        owner = np.repeat(np.arange(regions.size), highs - lows)
        return (np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)), owner

    def churn_probability(self, customers: np.ndarray, after_drift: np.ndarray | bool = False) -> np.ndarray:
        """P(churn) at the label; ``after_drift`` (per customer) switches to the drifted coefficients."""
        outage = np.where(after_drift, LOGIT_OUTAGE_THEN_CALL_AFTER, LOGIT_OUTAGE_THEN_CALL)
        failed = np.where(after_drift, LOGIT_FAILED_PAYMENT_AFTER, LOGIT_FAILED_PAYMENT)
        logit = (
            LOGIT_BASE
            + outage * np.minimum(self.outage_then_call[customers], 2)
            + LOGIT_SUPPORT_CALL * np.minimum(self.calls[customers], 6)
            + failed * np.minimum(self.failed[customers], 3)
            + LOGIT_BASIC_PLAN * (self.plan[customers] == 0)
        )
        return _sigmoid(logit)

    def customer_frame(self, customers: np.ndarray, updated_at: np.ndarray, plan: np.ndarray) -> pd.DataFrame:
        """CSV rows (all strings) of ``customers`` with the given plan and ``updated_at``."""
        number = customers + 1
        first, last = FIRST_NAMES[self.first[customers]], LAST_NAMES[self.last[customers]]
        line = self.line[customers]
        zip3 = 100 + (self.region[customers] * 7) % 900
        return pd.DataFrame(
            {
                "customer_id": _ids("C", number, 8),
                "full_name": first + " " + last,
                "email": FIRST_LOWER[self.first[customers]]
                + "."
                + LAST_LOWER[self.last[customers]]
                + "."
                + number.astype(str).astype(object)
                + "@"
                + EMAIL_DOMAINS[number % EMAIL_DOMAINS.size],
                "phone": np.char.add(
                    np.char.add(np.char.add("+1-", self.area[customers].astype(str)), "-"),
                    np.char.add(
                        np.char.add(np.char.zfill((line // 10_000).astype(str), 3), "-"),
                        np.char.zfill((line % 10_000).astype(str), 4),
                    ),
                ).astype(object),
                "street_address": self.street_no[customers].astype(str).astype(object)
                + " "
                + STREETS[self.street[customers]],
                "zip": np.char.zfill((zip3 * 100 + self.zip_tail[customers]).astype(str), 5).astype(object),
                "date_of_birth": np.datetime_as_string(self.dob[customers].astype("datetime64[D]")).astype(object),
                "account_number": np.char.add("AC", self.account[customers].astype(str)).astype(object),
                "segment": SEGMENTS[self.segment[customers]],
                "plan": PLANS[plan],
                "monthly_fee": np.char.mod("%.2f", self.fee(customers, plan)).astype(object),
                "signup_date": np.datetime_as_string(self.signup[customers].astype("datetime64[D]")).astype(object),
                "updated_at": _iso(updated_at),
            }
        )


class _Simulation:
    """Hour-by-hour simulation; writes files as simulated time passes."""

    def __init__(self, options: GenerateOptions, writer: LandingWriter, columns: dict[str, list[str]]) -> None:
        self.options = options
        self.writer = writer
        self.columns = columns
        self.rng = np.random.default_rng(options.seed)
        self.start = int(datetime(options.start.year, options.start.month, options.start.day, tzinfo=UTC).timestamp())
        self.pop = _Population(self.rng, options, self.start)
        self.pending: dict[int, list[pd.DataFrame]] = {}
        self.plan_updates: list[pd.DataFrame] = []
        self.outcomes: list[pd.DataFrame] = []
        self.next_event = 1
        self.event_reservoir: list[str] = []
        self.customer_reservoir: list[str] = []
        self.valid_events = 0
        self.late_events = 0
        self.drift_ts: int | None = None
        if options.drift_at is not None:
            at = options.drift_at
            self.drift_ts = int(datetime(at.year, at.month, at.day, tzinfo=UTC).timestamp())

    # --- the loop ---

    def run(self) -> None:
        self._write_customers(np.arange(self.pop.n), self.pop.snapshot_at, self.pop.plan.copy(), self.start - 60)
        hours = self.options.days * 24
        for hour in range(hours):
            self._route(self._hour_events(hour))
            self._flush_events(hour)
            if hour % 24 == 23:
                self._flush_day(hour // 24)
        for hour in sorted(self.pending):
            self._flush_events(hour)

    def facts(self) -> dict[str, float]:
        pop = self.pop
        decided = pop.churned >= 0
        with_signal = decided & (pop.outage_then_call > 0)
        without = decided & (pop.outage_then_call == 0)
        return {
            "customers": float(pop.n),
            "valid_events": float(self.valid_events),
            "late_events": float(self.late_events),
            "churn_rate": float(pop.churned[decided].mean()) if decided.any() else math.nan,
            "churn_rate_outage_then_call": float(pop.churned[with_signal].mean()) if with_signal.any() else math.nan,
            "churn_rate_other": float(pop.churned[without].mean()) if without.any() else math.nan,
            **self._drift_facts(decided),
        }

    def _drift_facts(self, decided: np.ndarray) -> dict[str, float]:
        if self.drift_ts is None:
            return {}
        after = decided & (self.pop.label_ts >= self.drift_ts)
        rates = {}
        for name, mask in (("churn_rate_before_drift", decided & ~after), ("churn_rate_after_drift", after)):
            rates[name] = float(self.pop.churned[mask].mean()) if mask.any() else math.nan
        return rates

    # --- one simulated hour ---

    def _drift_population(self) -> None:
        """At the switch: more customers become short of money (own random stream: the main one is untouched)."""
        pop = self.pop
        drift_rng = np.random.default_rng([self.options.seed, DRIFT_SEED_SALT])
        newly = drift_rng.random(pop.n) < SHORT_OF_MONEY_SHARE_AFTER
        pop.fail_p = np.where(newly, FAIL_P_POOR, pop.fail_p)

    def _hour_events(self, hour: int) -> pd.DataFrame:
        rng, pop = self.rng, self.pop
        h0 = self.start + hour * 3600
        if self.drift_ts is not None and h0 == self.drift_ts:
            self._drift_population()

        weights = pop.activity * pop.active
        total = float(weights.sum())
        diurnal = 1.0 + 0.5 * math.sin(2 * math.pi * ((hour % 24) - 14) / 24)  # evening peak
        count = int(rng.poisson(total * self.options.events_per_day / 24 * diurnal)) if total > 0 else 0
        cdf = np.cumsum(weights)
        customers = np.minimum(np.searchsorted(cdf, rng.random(count) * total, side="right"), pop.n - 1)
        ts = h0 + rng.integers(0, 3600, count)
        is_call = rng.random(count) < CALL_BASE + CALL_FRUSTRATION * pop.frustration[customers]
        kinds = np.where(is_call, CALL, BACKGROUND_TYPES[rng.choice(BACKGROUND_P.size, count, p=BACKGROUND_P)])

        hit = np.flatnonzero(rng.random(pop.regions) < OUTAGES_PER_REGION_DAY / 24)
        members, owner = pop.members(hit)
        outage_start = h0 + rng.integers(0, 3600, hit.size)
        reports = rng.random(members.size) < REPORT_P
        reporters = members[reports & pop.active[members]]
        report_owner = owner[reports & pop.active[members]]
        delay = np.minimum(rng.exponential(REPORT_DELAY_MEAN_S, reporters.size), 7200).astype(np.int64)
        report_ts = outage_start[report_owner] + delay
        follows = rng.random(reporters.size) < FOLLOW_UP_BASE + FOLLOW_UP_FRUSTRATION * pop.frustration[reporters]
        callers = reporters[follows]
        call_ts = report_ts[follows] + rng.integers(60, 1800, callers.size)  # within 30 minutes
        early = call_ts < pop.label_ts[callers]
        np.add.at(pop.outage_then_call, callers[early], 1)

        customers = np.concatenate([customers, reporters, callers])
        ts = np.concatenate([ts, report_ts, call_ts])
        kinds = np.concatenate([kinds, np.full(reporters.size, OUTAGE), np.full(callers.size, CALL)])
        n = customers.size

        amount = np.full(n, np.nan)
        pays = kinds == PAYMENT
        failed = pays & (rng.random(n) < pop.fail_p[customers])
        amount[pays] = pop.fee(customers[pays])
        amount[failed] = 0.0
        duration = np.full(n, np.nan)
        calls, streams = kinds == CALL, kinds == STREAMING
        duration[calls] = np.round(rng.lognormal(math.log(360), 0.6, int(calls.sum())), 1)
        duration[streams] = np.round(rng.lognormal(math.log(2400), 0.7, int(streams.sum())), 1)
        if self.drift_ts is not None:  # same draws, scaled: the random stream stays aligned
            shifted = streams & (ts >= self.drift_ts)
            duration[shifted] = np.round(duration[shifted] * STREAMING_FACTOR_AFTER, 1)
        channel = np.zeros(n, dtype=np.int8)
        for kind in range(EVENT_TYPES.size):
            mask = kinds == kind
            channel[mask] = rng.choice(CHANNELS.size, int(mask.sum()), p=CHANNEL_P[kind])

        before = ts < pop.label_ts[customers]
        np.add.at(pop.calls, customers[before & calls], 1)
        np.add.at(pop.failed, customers[before & failed], 1)

        self._decide_labels(h0 + 3600)
        alive = ~((pop.churned[customers] == 1) & (ts >= pop.label_ts[customers]))
        customers, ts, kinds = customers[alive], ts[alive], kinds[alive]
        amount, duration, channel = amount[alive], duration[alive], channel[alive]
        n = customers.size

        changes = np.flatnonzero(kinds == PLAN_CHANGE)
        if changes.size:
            who = customers[changes]
            new_plan = ((pop.plan[who] + rng.integers(1, PLAN_FEES.size, who.size)) % PLAN_FEES.size).astype(np.int8)
            pop.plan[who] = new_plan
            self.plan_updates.append(pd.DataFrame({"customer": who, "ts": ts[changes], "plan": new_plan}))

        lateness = np.where(rng.random(n) < VERY_LATE_SHARE, rng.integers(3600, 6 * 3600, n), rng.integers(60, 1800, n))
        arrival = ts + np.where(rng.random(n) < self.options.late_rate, lateness, rng.integers(0, 60, n))
        arrival_hour = (arrival - self.start) // 3600
        self.late_events += int((arrival_hour > (ts - self.start) // 3600).sum())
        ids = np.arange(self.next_event, self.next_event + n)
        self.next_event += n
        return pd.DataFrame(
            {
                "id": ids,
                "customer": customers,
                "ts": ts,
                "kind": kinds,
                "amount": amount,
                "duration": duration,
                "channel": channel,
                "arrival": arrival_hour,
            }
        )

    def _decide_labels(self, until: int) -> None:
        pop = self.pop
        due = np.flatnonzero((pop.churned < 0) & (pop.label_ts < until))
        if not due.size:
            return
        after = pop.label_ts[due] >= self.drift_ts if self.drift_ts is not None else False
        churned = (self.rng.random(due.size) < pop.churn_probability(due, after)).astype(np.int8)
        pop.churned[due] = churned
        pop.active[due[churned == 1]] = False
        self.outcomes.append(pd.DataFrame({"customer": due, "ts": pop.label_ts[due], "churned": churned}))

    def _route(self, events: pd.DataFrame) -> None:
        for hour, part in events.groupby("arrival", sort=True):
            self.pending.setdefault(int(hour), []).append(part.drop(columns="arrival"))

    # --- files ---

    def _flush_events(self, hour: int) -> None:
        parts = self.pending.pop(hour, [])
        if not parts:
            return
        events = pd.concat(parts, ignore_index=True)
        events = events.iloc[self.rng.permutation(len(events))]  # out of order within the file
        self.valid_events += len(events)
        size = self.options.rows_per_file
        for part, low in enumerate(range(0, len(events), size)):
            chunk = events.iloc[low : low + size]
            frame = pd.DataFrame(
                {
                    "event_id": _ids("E", chunk["id"].to_numpy(), 12),
                    "customer_id": _ids("C", chunk["customer"].to_numpy() + 1, 8),
                    "event_type": EVENT_TYPES[chunk["kind"].to_numpy()],
                    "ts": _iso(chunk["ts"].to_numpy()),
                    "amount": chunk["amount"].to_numpy(),
                    "duration_s": chunk["duration"].to_numpy(),
                    "channel": CHANNELS[chunk["channel"].to_numpy()],
                }
            )[self.columns["events"]]
            lines = frame.to_json(orient="records", lines=True, double_precision=10).splitlines()
            name = f"events-{_stamp(self.start + hour * 3600)}-{part:03d}.json"
            bad = [
                self._bad_event(lines, name) for _ in range(self.rng.binomial(len(lines), self.options.malformed_rate))
            ]
            self.writer.write("events", name, self._shuffled(lines + bad))
            self.event_reservoir = self._sample(lines)

    def _flush_day(self, day: int) -> None:
        day_end = self.start + (day + 1) * 86400 - 60
        if self.plan_updates:
            updates = pd.concat(self.plan_updates, ignore_index=True).drop_duplicates(["customer", "ts"], keep="last")
            self.plan_updates = []
            self._write_customers(
                updates["customer"].to_numpy(),
                updates["ts"].to_numpy(),
                updates["plan"].to_numpy().astype(np.int8),
                day_end,
            )
        if self.outcomes:
            labels = pd.concat(self.outcomes, ignore_index=True)
            self.outcomes = []
            frame = pd.DataFrame(
                {
                    "customer_id": _ids("C", labels["customer"].to_numpy() + 1, 8),
                    "label_ts": _iso(labels["ts"].to_numpy()),
                    "churned": labels["churned"].to_numpy(),
                }
            )[self.columns["outcomes"]]
            size = self.options.rows_per_file
            for part, low in enumerate(range(0, len(frame), size)):
                lines = frame.iloc[low : low + size].to_csv(index=False, header=False, lineterminator="\n").splitlines()
                self.writer.write(
                    "outcomes", f"outcomes-{_stamp(day_end)}-{part:03d}.csv", lines, ",".join(frame.columns)
                )

    def _write_customers(self, customers: np.ndarray, updated_at: np.ndarray, plan: np.ndarray, when: int) -> None:
        size = self.options.rows_per_file
        header = ",".join(self.columns["customers"])
        for part, low in enumerate(range(0, customers.size, size)):
            sl = slice(low, low + size)
            frame = self.pop.customer_frame(customers[sl], updated_at[sl], plan[sl])[self.columns["customers"]]
            lines = frame.to_csv(index=False, header=False, lineterminator="\n").splitlines()
            name = f"customers-{_stamp(when)}-{part:03d}.csv"
            count = self.rng.binomial(len(lines), self.options.malformed_rate)
            bad = [self._bad_customer(lines, name) for _ in range(count)]
            self.writer.write("customers", name, self._shuffled(lines + bad), header)
            self.customer_reservoir = self._sample(lines) + self.customer_reservoir[: REPLAY_RESERVOIR // 2]

    def _shuffled(self, lines: list[str]) -> list[str]:
        return [lines[i] for i in self.rng.permutation(len(lines))]

    def _sample(self, lines: list[str]) -> list[str]:
        if len(lines) <= REPLAY_RESERVOIR:
            return list(lines)
        return [lines[i] for i in self.rng.choice(len(lines), REPLAY_RESERVOIR, replace=False)]

    def _pick(self, values: list[str]) -> str:
        return values[int(self.rng.integers(0, len(values)))]

    # --- malformed records ---

    def _bad_event(self, lines: list[str], file: str) -> str:
        kinds = ["malformed_json", "wrong_type", "missing", "not_allowed"]
        if self.event_reservoir:
            kinds.append("duplicate")
        kind = self._pick(kinds)
        if kind == "duplicate":
            line = self._pick(self.event_reservoir)
            record_id = json.loads(line)["event_id"]
            self.writer.record_malformed("events", file, kind, column="event_id", record_id=record_id)
            return line
        record = json.loads(self._pick(lines))
        record["event_id"] = f"E{self.next_event:012d}"
        self.next_event += 1
        column = value = None
        if kind == "malformed_json":
            text = json.dumps(record)
            line = text[: int(self.rng.integers(1, len(text) - 1))]  # cut before the closing brace
        else:
            if kind == "wrong_type":
                column = self._pick(sorted(BAD_EVENT_VALUES))
                value = record[column] = self._pick(BAD_EVENT_VALUES[column])
            elif kind == "missing":
                column = self._pick(EVENT_REQUIRED)
                del record[column]
            else:
                column = self._pick(sorted(BAD_EVENT_ALLOWED))
                value = record[column] = self._pick(BAD_EVENT_ALLOWED[column])
            line = json.dumps(record)
        self.writer.record_malformed("events", file, kind, column=column, value=value, record_id=record.get("event_id"))
        return line

    def _bad_customer(self, lines: list[str], file: str) -> str:
        kinds = ["malformed_csv", "wrong_type", "missing", "not_allowed"]
        if self.customer_reservoir:
            kinds.append("duplicate")
        kind = self._pick(kinds)
        if kind == "duplicate":
            line = self._pick(self.customer_reservoir)
            self.writer.record_malformed("customers", file, kind, column="customer_id", record_id=_csv_fields(line)[0])
            return line
        fields = _csv_fields(self._pick(lines))
        names = self.columns["customers"]
        column = value = None
        if kind == "malformed_csv":
            fields = fields[:-1] if self.rng.random() < 0.5 else [*fields, "extra"]
        else:
            if kind == "wrong_type":
                column = self._pick(sorted(BAD_CUSTOMER_VALUES))
                value = self._pick(BAD_CUSTOMER_VALUES[column])
            elif kind == "missing":
                column, value = self._pick(CUSTOMER_REQUIRED), ""
            else:
                column = self._pick(sorted(BAD_CUSTOMER_ALLOWED))
                value = self._pick(BAD_CUSTOMER_ALLOWED[column])
            fields[names.index(column)] = value
        record_id = fields[0] if fields and column != "customer_id" else None
        self.writer.record_malformed("customers", file, kind, column=column, value=value or None, record_id=record_id)
        return _csv_line(fields)
