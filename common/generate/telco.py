"""Synthetic landing data of the ``telco`` use case: one snapshot table, one row per customer.

The shape of the public telco churn data sets a new user arrives with: categorical and numeric
columns, some of them missing, a yes/no label in the same table, and no event stream. Every row
carries the same ``as_of`` time (the snapshot's date), so the model uses a random or entity split.

Signal: the churn probability is a logistic function of the contract (month-to-month churns most),
the tenure (long-standing customers stay), fiber internet, electronic-check payment, the monthly
charges and being a senior citizen. ``facts`` reports the churn rate and the ROC AUC of the true
probabilities against the drawn labels (the best any model can reach on these rows).

Dirt: ``tenure_months``, ``total_charges``, ``internet_service`` and ``payment_method`` are blank
for a share of rows (a model needs an imputer), and ``malformed_rate`` of the records fail a check
(a value outside the allowed ones, a non-number, a missing id), logged to ``_malformed.jsonl``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.generate.landing import LandingWriter
from common.generate.options import GenerateOptions, GenerateSummary
from common.lake.paths import is_local, landing_folder
from common.spec.usecase import UseCase

SOURCE = "customers"
COLUMNS = [
    "customer_id",
    "as_of",
    "gender",
    "senior_citizen",
    "partner",
    "tenure_months",
    "internet_service",
    "contract",
    "payment_method",
    "monthly_charges",
    "total_charges",
    "churn",
]
CONTRACTS = ["Month-to-month", "One year", "Two year"]
INTERNET = ["DSL", "Fiber optic", "No"]
PAYMENTS = ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"]
MISSING = {"tenure_months": 0.05, "total_charges": 0.03, "internet_service": 0.02, "payment_method": 0.03}
BAD_VALUES = {"contract": "Three year", "monthly_charges": "abc", "customer_id": ""}


def _folder(spec: UseCase, out: Path) -> Path:
    source = spec.sources.get(SOURCE)
    if source is None or source.format != "csv" or list(source.columns) != COLUMNS:
        raise ConfigError(
            f"use case {spec.name!r} needs sources.{SOURCE} as CSV with columns {COLUMNS} in this order, which the "
            "telco generator writes. Fix: align metadata/telco/sources.yaml and common/generate/telco.py"
        )
    folder = landing_folder(source, out)
    if not is_local(folder):
        raise ConfigError(f"sources.{SOURCE}.path expands to {folder}, not a local folder. Fix: pass --out")
    return Path(folder)


def _probability(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The customers' attributes and their true churn probability."""
    contract = rng.choice(3, n, p=[0.55, 0.21, 0.24])
    tenure = np.minimum(72, rng.exponential(np.where(contract == 0, 14.0, 40.0), n)).round()
    internet = rng.choice(3, n, p=[0.34, 0.44, 0.22])
    payment = rng.choice(4, n, p=[0.34, 0.23, 0.22, 0.21])
    senior = (rng.random(n) < 0.16).astype(int)
    partner = (rng.random(n) < 0.48).astype(int)
    monthly = np.array([55.0, 85.0, 20.0])[internet] + rng.normal(0, 10, n).round(2)
    monthly = np.maximum(monthly, 18.25).round(2)
    total = (monthly * np.maximum(tenure, 1) * rng.normal(1.0, 0.03, n)).round(2)
    logit = (
        -2.2
        + np.array([1.7, 0.4, -0.6])[contract]
        - 0.035 * tenure
        + np.array([0.0, 0.9, -0.5])[internet]
        + np.where(payment == 0, 0.7, 0.0)
        + 0.4 * senior
        - 0.25 * partner
        + 0.012 * (monthly - 65)
    )
    return {
        "contract": contract,
        "tenure": tenure,
        "internet": internet,
        "payment": payment,
        "senior": senior,
        "partner": partner,
        "monthly": monthly,
        "total": total,
        "p": 1 / (1 + np.exp(-logit)),
    }


def generate(spec: UseCase, out: Path, options: GenerateOptions, *, overwrite: bool = False) -> GenerateSummary:
    """Write the telco snapshot for ``spec`` under ``out`` (the ``{landing}`` root)."""
    from sklearn.metrics import roc_auc_score

    folder = _folder(spec, out)
    writer = LandingWriter(out, {SOURCE: folder}, overwrite=overwrite)
    rng = np.random.default_rng(options.seed)
    n = options.customers
    people = _probability(rng, n)
    churned = (rng.random(n) < people["p"]).astype(int)
    as_of = datetime.combine(options.start, time(0), tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = {
        "customer_id": np.array([f"T{i:07d}" for i in range(n)], dtype=object),
        "as_of": np.full(n, as_of, dtype=object),
        "gender": np.where(rng.random(n) < 0.5, "Female", "Male").astype(object),
        "senior_citizen": people["senior"].astype(str).astype(object),
        "partner": np.where(people["partner"] == 1, "Yes", "No").astype(object),
        "tenure_months": people["tenure"].astype(int).astype(str).astype(object),
        "internet_service": np.array(INTERNET, dtype=object)[people["internet"]],
        "contract": np.array(CONTRACTS, dtype=object)[people["contract"]],
        "payment_method": np.array(PAYMENTS, dtype=object)[people["payment"]],
        "monthly_charges": np.char.mod("%.2f", people["monthly"]).astype(object),
        "total_charges": np.char.mod("%.2f", people["total"]).astype(object),
        "churn": np.where(churned == 1, "Yes", "No").astype(object),
    }
    for column, share in MISSING.items():
        fields[column][rng.random(n) < share] = ""
    bad = np.flatnonzero(rng.random(n) < options.malformed_rate)
    bad_columns = rng.choice(sorted(BAD_VALUES), len(bad))
    for row, column in zip(bad, bad_columns, strict=True):
        fields[column][row] = BAD_VALUES[column]
    lines = [",".join(_quoted(fields[c][i]) for c in COLUMNS) for i in range(n)]
    files = [lines[i : i + options.rows_per_file] for i in range(0, n, options.rows_per_file)]
    names = [writer.write(SOURCE, f"customers-{k:03d}.csv", part, ",".join(COLUMNS)) for k, part in enumerate(files)]
    for row, column in zip(bad, bad_columns, strict=True):
        kind = (
            "missing_required"
            if column == "customer_id"
            else "bad_type"
            if column == "monthly_charges"
            else "bad_allowed"
        )
        writer.record_malformed(
            SOURCE,
            names[row // options.rows_per_file],
            kind,
            column=column,
            value=BAD_VALUES[column],
            record_id=fields["customer_id"][row] or None,
        )
    good = np.setdiff1d(np.arange(n), bad)
    facts = {
        "churn_rate": round(float(churned[good].mean()), 4),
        "true_roc_auc": round(float(roc_auc_score(churned[good], people["p"][good])), 4),
    }
    return writer.finish(facts)


def _quoted(value: str) -> str:
    """A CSV field: quoted when it holds a comma or a quote."""
    return '"' + value.replace('"', '""') + '"' if ("," in value or '"' in value) else value
