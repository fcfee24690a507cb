# Databricks notebook source
# MAGIC %md
# MAGIC # 2 · Training
# MAGIC
# MAGIC The point-in-time training set (and the Delta versions it read), its label balance, training with the
# MAGIC metadata's estimator, the ROC and PR curves and feature importances the run logged to MLflow, and the
# MAGIC registry's aliases after the promotion rule. The same functions as `loom train`.
# MAGIC
# MAGIC **Locally:** `loom notebook run notebooks/02_training.py [--param model=churn]`.

# COMMAND ----------

from common.notebooks import notebook

nb = notebook(globals(), "02_training", usecase="churn", model="churn", date="now")
spark, work, plan = nb.spark, nb.work, nb.plan
model = plan.model(nb.model)
print(f"model {model.name}: {model.spec.description}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The point-in-time training set
# MAGIC Each label row with the features as they were at the label's time (never later), every Delta table
# MAGIC read at a pinned version: the versions below rebuild exactly this set (`loom train --from-run`).

# COMMAND ----------

import pandas as pd

from common.models.training_set import LABEL, model_training_set

training = model_training_set(spark, plan, model, work)
frame = training.frame.toPandas()
print(f"{len(frame)} labels x {len(training.features)} features")
nb.show(
    pd.DataFrame([{"table": n, "path": v.path, "version": v.version} for n, v in sorted(training.versions.items())])
)
nb.show(frame.head(5))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Label balance

# COMMAND ----------

import matplotlib.pyplot as plt

balance = frame[LABEL].value_counts().sort_index()
by_day = frame.groupby(frame[model.label_time].dt.floor("D"))[LABEL].agg(["count", "mean"])
print(f"positive rate {frame[LABEL].mean():.3f}; counts {balance.to_dict()}")
figure, (counts_axes, rate_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
counts_axes.bar([str(v) for v in balance.index], balance.to_numpy())
counts_axes.set_title("labels per class")
rate_axes.plot(by_day.index, by_day["mean"], marker="o")
rate_axes.set_title("positive rate per label day")
figure.autofmt_xdate()
balance_plot = nb.figure(figure, "label_balance")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Training with the metadata's estimator
# MAGIC Time split, fit, holdout metrics, an MLflow run (params, metrics, plots, lineage, the pyfunc with its
# MAGIC feature spec), a registered version @challenger, @champion when the promotion rule passes.

# COMMAND ----------

from common.models.train import train_model

print(f"estimator {model.spec.estimator.class_} {model.spec.estimator.params}")
outcome = train_model(spark, plan, model.name, work, versions=training.versions)
print(outcome.render())

# COMMAND ----------

# MAGIC %md
# MAGIC ## ROC and PR curves, feature importances (as logged to MLflow)

# COMMAND ----------

import json
from pathlib import Path

import matplotlib.image as mpimg
import mlflow

logged = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="plots"))
curve_plots = []
for name in ("roc_curve", "pr_curve", "feature_importance"):
    image = mpimg.imread(logged / f"{name}.png")
    figure, axes = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100))
    axes.imshow(image)
    axes.axis("off")
    curve_plots.append(nb.figure(figure, name))
importances = json.loads(
    Path(
        mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="feature_importance.json")
    ).read_text()
)
nb.show(pd.Series(importances, name="importance").sort_values(ascending=False).to_frame(), rows=10)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The registry's aliases

# COMMAND ----------

from common.models import registry

client = registry.client(work)
aliases = dict(client.get_registered_model(model.name).aliases)
nb.show(
    pd.DataFrame(
        [
            {
                "version": int(v.version),
                "aliases": ", ".join(a for a, n in aliases.items() if int(n) == int(v.version)),
                "decision": v.tags.get("loom.decision", ""),
            }
            for v in sorted(client.search_model_versions(f"name = '{model.name}'"), key=lambda v: -int(v.version))
        ]
    )
)
print(f"champions so far: {registry.champion_history(model.name, client)}")
