# Databricks notebook source
# MAGIC %md
# MAGIC # 5 · Monitoring
# MAGIC
# MAGIC Runtime metrics by day (every logged prediction, batch, stream and REST, against the outcomes that
# MAGIC arrived since), drift per feature (PSI and KS against the training set) and the retraining policy's
# MAGIC verdict. The same functions as `loom evaluate` and `loom retrain --dry-run`.
# MAGIC
# MAGIC **Locally:** `loom notebook run notebooks/05_monitoring.py [--param date=2026-01-14]`.

# COMMAND ----------

from common.notebooks import notebook

nb = notebook(globals(), "05_monitoring", usecase="churn", model="churn", date="now")
spark, work, plan = nb.spark, nb.work, nb.plan
model = plan.model(nb.model)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Runtime metrics by day
# MAGIC Predictions matched with their outcomes, per model version, path and time bucket (`evaluation.bucket`),
# MAGIC written to Delta and logged to the version's MLflow run.

# COMMAND ----------

import pandas as pd

from common.monitoring import plots
from common.monitoring.evaluate import evaluate_model

evaluation = evaluate_model(spark, plan, model.name, work)
print(evaluation.render())
every = evaluation.rows[evaluation.rows["path"] == "all"]
nb.show(every[["model_version", "bucket_start", "volume", "matched", "roc_auc", "precision", "recall"]])
empty_calibration = pd.DataFrame(columns=["mean_score", "rate"])
metrics_plot = nb.figure(
    plots.evaluation(evaluation.rows, empty_calibration, f"{model.name}: runtime metrics by bucket"),
    "runtime_metrics",
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Drift per feature (PSI and KS)
# MAGIC The champion's features and scores over the drift window ending at the `date` widget, against the
# MAGIC profile of its training set.

# COMMAND ----------

from common.monitoring.drift import compute_drift
from common.monitoring.settings import settings_of

settings = settings_of(model.spec)
drift = compute_drift(spark, plan, model.name, work, at=nb.at)
print(drift.render())
drift_plot = nb.figure(
    plots.drift(drift.rows, settings.drift.psi, settings.drift.ks, f"{model.name} v{drift.version}: drift"), "drift"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The retraining policy's verdict
# MAGIC `models.<model>.retrain` in the metadata: drift, a metric under its floor, or the schedule. A dry run:
# MAGIC the verdict only (`loom retrain` trains the challenger).

# COMMAND ----------

from common.monitoring.retrain import retrain

verdict = retrain(spark, plan, model.name, work, at=nb.at, dry_run=True)
print(verdict.render())
