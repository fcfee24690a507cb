"""Models: training sets, training, the MLflow pyfunc that carries its feature
spec, the registry policy (promotion, rollback) and batch scoring."""
