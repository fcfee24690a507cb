"""Entry points. Each job runs as ``loom <job>``, ``python -m jobs.<job>`` and
``spark-submit jobs/<job>.py``; all three go through :mod:`jobs.runner`.

spark-submit puts ``jobs/`` first on ``sys.path``: a module here must never be
named like a library (``redis``, ``mlflow``, ...), or it shadows it.
"""
