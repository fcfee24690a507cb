"""The REST prediction service (``loom serve``): entity keys in, scores out.

One request: API key -> one Redis round trip for every entity and feature group
-> the model's on-demand transforms and estimator (its pyfunc, in process) ->
scores with the model version, the event time of each feature group and the
missing features.

* :mod:`common.serving.config`: settings from the environment (and the Redis connection).
* :mod:`common.serving.auth`: API keys, per-model access, constant-time comparison.
* :mod:`common.serving.holder`: the loaded models; follows the alias in the background.
* :mod:`common.serving.metrics`: Prometheus metrics.
* :mod:`common.serving.schemas`: request and response bodies.
* :mod:`common.serving.predict`: keys -> features -> scores, without HTTP.
* :mod:`common.serving.app`: the FastAPI application factory.
"""
