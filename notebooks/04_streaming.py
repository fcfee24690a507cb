# Databricks notebook source
# MAGIC %md
# MAGIC # 4 · Streaming and triggers
# MAGIC
# MAGIC The streaming pipeline run available-now (landing -> bronze -> features -> Redis + Delta, and bronze ->
# MAGIC triggers -> scores with the model's @champion), the firings with their features and scores, and one
# MAGIC firing's score checked against batch scoring at the same time and against the REST service.
# MAGIC The same functions as `loom stream --available-now`.
# MAGIC
# MAGIC **Locally:** `loom notebook run notebooks/04_streaming.py` (after `02_training`: triggers score @champion).

# COMMAND ----------

from common.notebooks import notebook

nb = notebook(globals(), "04_streaming", usecase="churn", model="churn", date="now")
spark, work, plan = nb.spark, nb.work, nb.plan
model = plan.model(nb.model)
key = model.entity_key
triggers = [t for t in plan.triggers.values() if t.model == model.name]
print(f"triggers of {model.name}: {[t.name for t in triggers]}; online store {nb.redis_url.split('@')[-1]}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Start the stream (available-now)
# MAGIC Each query processes what has landed since its checkpoint, in micro-batches, then stops. On Databricks,
# MAGIC a scheduled `loom stream --available-now` task (or a continuous one) does the same.

# COMMAND ----------

from common.ingest.report import render_reports
from common.pipeline import catch_up

reports = catch_up(spark, plan, work, nb.redis_url)
print(render_reports(reports))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Firings, their features and scores

# COMMAND ----------

from pyspark.sql import functions as F

from common.lake.paths import predictions_path

firings = spark.read.format("delta").load(predictions_path(work, plan.usecase, "stream"))
firings = firings.where(F.col("model_name") == model.name)
nb.show(
    firings.groupBy("trigger", "model_version")
    .agg(
        F.count("*").alias("firings"),
        F.sum(F.col("action").cast("int")).alias("actions"),
        F.round(F.avg("score"), 4).alias("mean_score"),
    )
    .orderBy("trigger", "model_version")
)
nb.show(firings.select(key, "trigger", "firing_ts", "score", "action").orderBy(F.desc("score")), rows=5)

# COMMAND ----------

import matplotlib.pyplot as plt

fired = firings.select("firing_ts", "score", "action").toPandas()
per_day = fired.groupby([fired["firing_ts"].dt.floor("D"), "action"]).size().unstack(fill_value=0)
figure, (days_axes, scores_axes) = plt.subplots(1, 2, figsize=(11, 3.5))
per_day.plot.bar(stacked=True, ax=days_axes, color={False: "tab:blue", True: "tab:red"})
days_axes.set_xticklabels([f"{day:%m-%d}" for day in per_day.index], rotation=45)
days_axes.set_title("firings per day (red: actions)")
scores_axes.hist(fired["score"].dropna(), bins=20, range=(0, 1))
for trigger in triggers:
    scores_axes.axvline(
        trigger.threshold, color="tab:red", linestyle=":", label=f"{trigger.name} >= {trigger.threshold}"
    )
scores_axes.legend(fontsize=7)
scores_axes.set_title("scores of the firings")
firings_plot = nb.figure(figure, "firings")

# COMMAND ----------

# MAGIC %md
# MAGIC ## One firing: stream = batch = REST
# MAGIC A firing on a customer's newest event: its stream score, the batch score of the same model version as
# MAGIC of the firing time, and the REST service's score now (the online store holds the same values).

# COMMAND ----------

from datetime import UTC

import pandas as pd

from common.compile.plan import FEATURE_TS
from common.errors import DataError
from common.features.offline import read_history
from common.serving.local_client import rest_scores
from common.models.scoring import score_batch

newest = None
for name in model.groups:
    times = read_history(spark, work, plan.group(name)).groupBy(key).agg(F.max(FEATURE_TS).alias(f"_{name}"))
    newest = times if newest is None else newest.join(times, key, "left")
on_newest = firings.where(F.col("score").isNotNull()).join(newest, key)
for name in model.groups:
    on_newest = on_newest.where(F.col(f"_{name}").isNull() | (F.col(f"_{name}") <= F.col("firing_ts")))
firing = on_newest.orderBy(F.desc("firing_ts"), key).first()
if firing is None:
    raise DataError("no firing is on its customer's newest event, so REST cannot be compared. Fix: land more events")
at = firing["firing_ts"].replace(tzinfo=UTC)
entity = spark.createDataFrame([(firing[key],)], f"{key} string")
_, batch_rows, _ = score_batch(spark, plan, f"{model.name}/{firing['model_version']}", at, work, entity)
batch_score = batch_rows.first()["score"]
rest = rest_scores(plan.usecase, model.name, work, nb.redis_url, key, [firing[key]])
rest_score = rest.scores[firing[key]]
print(f"{firing[key]} fired {firing['trigger']} at {at:%Y-%m-%d %H:%M:%S} UTC:")
print(f"  stream {firing['score']:.9f} (v{firing['model_version']})")
print(f"  batch  {batch_score:.9f} (as of the firing)")
print(f"  REST   {rest_score:.9f} (v{rest.version}, as of {rest.as_of})")
parity = (
    rest.version == firing["model_version"]
    and abs(batch_score - firing["score"]) <= 1e-9
    and abs(rest_score - firing["score"]) <= 1e-9
)
print("parity:", "OK" if parity else "FAILED")
nb.show(pd.Series(firing["features"], name="value").to_frame(), rows=40)
