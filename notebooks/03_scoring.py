# Databricks notebook source
# MAGIC %md
# MAGIC # 3 · Scoring
# MAGIC
# MAGIC Batch scoring as of a time (the `date` widget) with the model's @champion, the distribution of the
# MAGIC scores, the customers over the action threshold, and one customer's prediction explained by its
# MAGIC features. The same functions as `loom score`.
# MAGIC
# MAGIC **Locally:** `loom notebook run notebooks/03_scoring.py [--param date=2026-01-14]`.

# COMMAND ----------

from common.notebooks import notebook

nb = notebook(globals(), "03_scoring", usecase="churn", model="churn", date="now")
spark, work, plan = nb.spark, nb.work, nb.plan
model = plan.model(nb.model)
print(f"scoring {model.name}@champion as of {nb.at:%Y-%m-%d %H:%M} UTC")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Batch scoring as of a time
# MAGIC Point-in-time features of every known customer at that time, scored through `mlflow.pyfunc.spark_udf`,
# MAGIC written to the predictions Delta table (re-running replaces the same model version and time).

# COMMAND ----------

from common.models.scoring import score_batch

ref, written, table = score_batch(spark, plan, f"{model.name}@champion", nb.at, work)
key = model.entity_key
scores = written.select(key, "score").toPandas().sort_values("score", ascending=False, kind="stable")
print(f"{len(scores)} customers scored by {ref} -> {table}")
nb.show(scores.head(5))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The distribution of scores

# COMMAND ----------

import matplotlib.pyplot as plt

threshold = model.spec.threshold
figure, axes = plt.subplots(figsize=(7, 3.5))
axes.hist(scores["score"], bins=30, range=(0, 1))
axes.axvline(threshold, color="tab:red", linestyle=":", label=f"threshold {threshold}")
axes.set_xlabel("score")
axes.set_ylabel("customers")
axes.legend()
axes.set_title(f"{ref}: scores as of {nb.at:%Y-%m-%d %H:%M} UTC")
distribution_plot = nb.figure(figure, "score_distribution")
print(scores["score"].describe().round(4).to_dict())

# COMMAND ----------

# MAGIC %md
# MAGIC ## Actions: customers over the threshold
# MAGIC `models.<model>.threshold` in the metadata decides who gets an action (a retention offer, a call).

# COMMAND ----------

actions = scores[scores["score"] >= threshold]
print(f"{len(actions)} of {len(scores)} customers at or over {threshold}")
nb.show(actions, rows=10)

# COMMAND ----------

# MAGIC %md
# MAGIC ## One customer's prediction, explained by its features
# MAGIC The customer closest to the threshold: why it is (or is not) an action. Each feature's contribution
# MAGIC is the score minus the score with that feature at its median over every customer scored at the same
# MAGIC time (`common.models.explain`, through the registered model).

# COMMAND ----------

from common.models import plots
from common.models.explain import explain_prediction

chosen = scores.iloc[int((scores["score"] - threshold).abs().to_numpy().argmin())]
customer = chosen[key]
explanation = explain_prediction(spark, plan, f"{ref.name}/{ref.version}", customer, nb.at, work)
print(explanation.render())
batch_score = float(chosen["score"])
print(f"explained score {explanation.score:.6f} vs batch score {batch_score:.6f}")
explanation_plot = nb.figure(
    plots.contributions(explanation.rows, f"{customer}: {explanation.score:.3f} ({ref})"), "explanation"
)
