"""Feature engines: the compiled plan applied to DataFrames.

``prepare`` -> ``tiles`` -> ``history`` (every event time, for the offline
store) or ``latest`` (the value at each entity's newest event, for Redis).
Batch backfill and the streaming job call these same functions.
"""
