# Databricks notebook source
# MAGIC %md
# MAGIC # Churn features with Loom
# MAGIC
# MAGIC The same code the jobs run: load the metadata, compile it, and look at the
# MAGIC plan and its output. On Databricks, attach to a cluster with Delta (any
# MAGIC runtime) and `%pip install` this repository; locally, run the jobs instead
# MAGIC (`loom generate`, `loom ingest`, `loom backfill`).

# COMMAND ----------

from common.compile import compile_usecase
from common.settings import paths
from common.spark import build_session
from common.spec import load_usecase

spark = build_session("databricks" if "spark" in globals() else "local")
spec = load_usecase("churn")
plan = compile_usecase(spec)
for name, group in plan.groups.items():
    print(name, "->", list(group.feature_names))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Feature history (offline store)
# MAGIC After `loom backfill --usecase churn`, one row per customer and event time.

# COMMAND ----------

from common.features.offline import read_history

history = read_history(spark, paths(), plan.group("activity"))
display(history.orderBy("customer_id", "feature_ts").limit(20))
