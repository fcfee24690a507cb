# Databricks notebook source
# MAGIC %md
# MAGIC # 6 · Privacy
# MAGIC
# MAGIC The policy of every PII column (what reaches bronze, features, Redis and MLflow), a PII audit of every
# MAGIC store, and the privacy report: what protection costs the model (raw vs protected features).
# MAGIC The same functions as `loom audit-pii` and `loom privacy-report`.
# MAGIC
# MAGIC **Locally:** `loom notebook run notebooks/06_privacy.py`.

# COMMAND ----------

from common.notebooks import notebook

nb = notebook(globals(), "06_privacy", usecase="churn", model="churn", date="now")
spark, work, plan = nb.spark, nb.work, nb.plan

# COMMAND ----------

# MAGIC %md
# MAGIC ## Policies per column
# MAGIC Applied at ingestion: raw PII never reaches bronze. `bronze type` is the column's type after its policy
# MAGIC (none: dropped).

# COMMAND ----------

import pandas as pd

from common.privacy.policies import protected_columns

policies = pd.DataFrame(
    [
        {
            "source": name,
            "column": column_name,
            "type": column.type,
            "policy": column.policy.method,
            "detail": {k: v for k, v in column.policy.model_dump(exclude_none=True).items() if k != "method"},
            "bronze type": protected_columns(source, name).get(column_name),
        }
        for name, source in nb.spec.sources.items()
        for column_name, column in source.columns.items()
        if column.policy is not None
    ]
)
nb.show(policies, rows=50)

# COMMAND ----------

# MAGIC %md
# MAGIC ## PII audit
# MAGIC The raw PII of sampled people (from the landing files) searched for in every Delta version on disk,
# MAGIC Redis, MLflow and the job logs: any hit is a leak.

# COMMAND ----------

from common.privacy_lifecycle.audit import audit

audit_report = audit(spark, nb.spec, work, redis_url=nb.redis_url, sample=20)
print(audit_report.render())
audit_clean = audit_report.ok

# COMMAND ----------

# MAGIC %md
# MAGIC ## Privacy report: AUC on raw vs protected features
# MAGIC The model fitted on the raw PII features (a sandbox run, never registered) and on the protected ones,
# MAGIC on the same split; both logged to MLflow.

# COMMAND ----------

import matplotlib.pyplot as plt
import numpy as np

from common.privacy_lifecycle.efficacy import privacy_report

report = privacy_report(spark, plan, nb.model, work)
print(report.render())
names = list(report.raw)
figure, axes = plt.subplots(figsize=(7, 3.5))
positions = np.arange(len(names))
axes.bar(positions - 0.2, [report.raw[n] for n in names], 0.4, label="raw (sandbox)")
axes.bar(positions + 0.2, [report.protected[n] for n in names], 0.4, label="protected")
axes.set_xticks(positions, names)
axes.legend()
axes.set_title(f"{report.model}: raw vs protected PII features (cost on {report.metric}: {report.cost:+.4f})")
privacy_plot = nb.figure(figure, "privacy_report")
