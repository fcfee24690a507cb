"""Entry points. Each job runs as ``loom <job>``, ``python -m jobs.<job>`` and
``spark-submit jobs/<job>.py``; all three go through :mod:`jobs.runner`."""
