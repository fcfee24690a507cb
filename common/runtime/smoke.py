"""A round trip through the three real components: Delta, Redis and MLflow.

Used by ``loom smoke`` and as the first step of the demo: if this passes, the
machine is set up (jars, redis-server, MLflow store).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmokeReport:
    delta_table: str
    delta_versions: int
    redis_url: str
    mlflow_uri: str
    model_uri: str


def delta_round_trip(spark, path: str) -> int:
    """Write, overwrite, time-travel and MERGE a Delta table; returns its version count."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from common.errors import StoreError

    spark.createDataFrame([(i, f"v{i}") for i in range(5)], "id long, value string").write.format("delta").mode(
        "overwrite"
    ).save(path)
    spark.range(3).withColumn("value", F.lit("new")).write.format("delta").mode("overwrite").save(path)
    first = spark.read.format("delta").option("versionAsOf", 0).load(path)
    updates = spark.createDataFrame([(1, "merged"), (9, "inserted")], "id long, value string")
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(updates.alias("u"), "t.id = u.id")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
    now = {r.id: r.value for r in spark.read.format("delta").load(path).collect()}
    if first.count() != 5 or now.get(1) != "merged" or now.get(9) != "inserted":
        raise StoreError(f"Delta round trip at {path} returned unexpected rows: {now}")
    return DeltaTable.forPath(spark, path).history().count()


def redis_round_trip(client, key: str) -> None:
    from common.errors import StoreError

    client.set(key, b"loom", ex=60)
    if client.get(key) != b"loom":
        raise StoreError(f"Redis round trip on key {key} failed")
    client.delete(key)


def mlflow_round_trip(experiment_name: str) -> str:
    """Log a tiny sklearn model, load it back and predict; returns its runs:/ URI."""
    import mlflow
    import numpy as np
    import sklearn
    from sklearn.linear_model import LogisticRegression

    from common.errors import StoreError
    from common.runtime.tracking import experiment

    experiment_id = experiment(experiment_name)
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([0, 0, 1, 1])
    model = LogisticRegression().fit(x, y)
    with mlflow.start_run(experiment_id=experiment_id, run_name="smoke") as run:
        mlflow.log_param("kind", "smoke")
        # pinned requirements: MLflow would otherwise infer them in a subprocess that loads the model (seconds)
        mlflow.sklearn.log_model(
            model, name="model", input_example=x[:2], pip_requirements=[f"scikit-learn=={sklearn.__version__}"]
        )
    uri = f"runs:/{run.info.run_id}/model"
    loaded = mlflow.pyfunc.load_model(uri)
    if list(loaded.predict(x)) != list(model.predict(x)):
        raise StoreError(f"MLflow model {uri} predicts differently after loading")
    return uri


def run_smoke(spark, redis_client, redis_url: str, work) -> SmokeReport:
    """Run all three round trips against the work area ``work`` (a Paths)."""
    from common.runtime.redis_server import describe
    from common.runtime.tracking import tracking_uri

    table = work.table("_smoke", "bronze", "roundtrip")
    versions = delta_round_trip(spark, table)
    redis_round_trip(redis_client, "loom:smoke")
    model_uri = mlflow_round_trip("loom-smoke")
    return SmokeReport(table, versions, describe(redis_url), tracking_uri(work), model_uri)
