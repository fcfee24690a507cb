"""Run-time set-up shared by every job: what a process needs before it does any work.

* :mod:`~common.runtime.spark`: the SparkSession (profiles, Delta jars; ``python -m common.runtime.spark``
  fetches the jars and writes the spark-submit properties), with :mod:`~common.runtime.jars` and the quick
  driver JVM of short jobs (:mod:`~common.runtime.jvm`);
* :mod:`~common.runtime.redis_server`: a local redis-server that dies with its owner;
  :mod:`~common.runtime.processes`: the parent-death signal every child server gets;
* :mod:`~common.runtime.tracking`: the MLflow tracking store; :mod:`~common.runtime.secrets`: secrets from
  env or files; :mod:`~common.runtime.log`: the log format;
* :mod:`~common.runtime.smoke`: one round trip through Delta, Redis and MLflow (``loom smoke``).

Only ``common.errors`` and ``common.settings`` are below it: every other package may use it.
"""
