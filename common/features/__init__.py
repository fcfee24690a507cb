"""Feature engines: the compiled plan applied to DataFrames.

``prepare`` -> ``tiles`` -> ``history`` (every event time, for the offline
store) or ``latest`` (the value at each entity's newest event, for Redis).
Batch backfill calls these functions; the streaming job prepares its rows with
the same ``prepare`` and row values and folds them into per-entity tiles in
Spark's state store (``tile_state``: the same partials, merged in Python).
"""
