# Databricks notebook source
# MAGIC %md
# MAGIC # 1 · Features
# MAGIC
# MAGIC The use case as metadata, the plan Loom compiles from it (feature groups, transforms, and the
# MAGIC lineage of every PII column to its policy), one customer's feature history over time, and the
# MAGIC consistency report (batch recompute vs the online store).
# MAGIC
# MAGIC Every cell calls Loom's library, the same functions the jobs call (`loom backfill`, `loom consistency`).
# MAGIC **Databricks:** deployed by `loom schedule export --target databricks` (widgets: use case, model, date).
# MAGIC **Locally:** `loom notebook run notebooks/01_features.py [--param usecase=churn]`, after
# MAGIC `loom generate`, `loom stream --available-now` and `loom backfill` (or `make demo`).

# COMMAND ----------

from common.notebooks import notebook

nb = notebook(globals(), "01_features", usecase="churn", model="churn", date="now")
spark, work, plan = nb.spark, nb.work, nb.plan
print(f"use case {nb.spec.name} v{nb.spec.version}: {nb.spec.description.strip()}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The use case
# MAGIC Sources (landing files -> bronze Delta), entities, feature groups, models and triggers, from `metadata/`.

# COMMAND ----------

import pandas as pd

nb.show(
    pd.DataFrame(
        [
            {
                "source": name,
                "kind": source.kind,
                "format": source.format,
                "entity": source.entity,
                "event_time": source.event_time,
                "columns": len(source.columns),
                "pii_columns": sum(1 for c in source.columns.values() if c.policy is not None),
            }
            for name, source in nb.spec.sources.items()
        ]
    )
)
print("models:", sorted(plan.models), " triggers:", sorted(plan.triggers))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The compiled plan
# MAGIC One plan per feature group, shared by batch (`loom backfill`) and streaming (`loom stream`).

# COMMAND ----------

nb.show(
    pd.DataFrame(
        [
            {
                "group": group.name,
                "source": f"{group.source} ({group.source_kind})",
                "slide_s": group.slide_s,
                "ttl_s": group.ttl_s,
                "online": group.online,
                "joins": ", ".join(j.source for j in group.joins),
                "transforms": ", ".join(t.name for t in group.transforms),
                "features": len(group.feature_names),
            }
            for group in plan.groups.values()
        ]
    )
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Lineage: PII columns to their policies
# MAGIC Every source column a feature reads, through which transforms, and the policy that protected it at
# MAGIC ingestion. The compiler refuses a plan where raw PII would reach a feature.

# COMMAND ----------

from common.compile.lineage import feature_origins

lineage = pd.DataFrame(
    [
        {
            "feature": f"{o.group}.{o.feature}",
            "column": f"{o.origin.source}.{o.origin.column}",
            "policy": o.policy,
            "path": o.trail,
        }
        for name in plan.groups
        for o in feature_origins(nb.spec, name)
    ]
)
pii_lineage = lineage[lineage["policy"].notna()].reset_index(drop=True)
nb.show(pii_lineage)
print(f"{len(pii_lineage)} of {len(lineage)} feature inputs come from PII columns, each through its policy")

# COMMAND ----------

# MAGIC %md
# MAGIC ## One customer's feature history
# MAGIC The offline store (Delta) holds each feature's value at every event time: here, the busiest customer.

# COMMAND ----------

from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS
from common.features.offline import read_history

events_group = next(g for g in plan.groups.values() if g.source_kind == "events")
history = read_history(spark, work, events_group)
key = events_group.entity_key
customer = history.groupBy(key).count().orderBy(F.desc("count"), key).first()[key]
shown = [f.name for f in events_group.aggregations][:4]
one = history.where(F.col(key) == customer).orderBy(FEATURE_TS).select(FEATURE_TS, *shown).toPandas()
print(f"{customer}: {len(one)} history rows of group {events_group.name}")
nb.show(one.tail(10))

# COMMAND ----------

import matplotlib.pyplot as plt

figure, axes = plt.subplots(len(shown), 1, figsize=(8, 2 * len(shown)), sharex=True)
for axis, name in zip(axes, shown, strict=True):
    axis.step(one[FEATURE_TS], one[name], where="post")
    axis.set_ylabel(name, fontsize=7)
figure.suptitle(f"{events_group.name} features of {customer} over time")
figure.autofmt_xdate()
history_plot = nb.figure(figure, "feature_history")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Consistency: batch recompute vs the online store
# MAGIC Every entity's features recomputed in batch from bronze and compared with Redis (what `loom consistency` does).

# COMMAND ----------

from common.features.consistency import check_group
from common.features.online_sink import open_store

online = [g for g in plan.groups.values() if g.online]
store = open_store(online, nb.redis_url)
try:
    consistency = {g.name: check_group(spark, work, g, store) for g in online}
finally:
    store.close()
nb.show(
    pd.DataFrame(
        [
            {
                "group": name,
                "entities": r.entities_checked,
                "mismatched": r.entities_mismatched,
                "missing_online": r.missing_online,
                "behind": r.behind,
                "max_abs_diff": max((s.max_abs_diff for s in r.features.values()), default=0.0),
            }
            for name, r in consistency.items()
        ]
    )
)
consistent = all(r.ok for r in consistency.values())
print("consistency:", "OK" if consistent else "FAILED")
