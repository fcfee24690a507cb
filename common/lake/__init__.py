"""The lake: where every Delta table of a use case lives, and the helpers that read and write them.

* :mod:`~common.lake.paths`: addresses (landing folders, bronze, quarantine, feature history,
  predictions, monitoring tables; pure path arithmetic, no Spark);
* :mod:`~common.lake.delta`: :func:`~common.lake.delta.table_exists`, reading bronze, replacing rows;
* :mod:`~common.lake.files`: a table's data and log files on disk (the privacy audit and ``loom forget``).

Low in the package order (above ``spec`` and ``compile``): every package that stores data uses it.
"""
