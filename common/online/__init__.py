"""The online feature store: latest feature vector per (entity, group), served in one round trip.

* :mod:`common.online.base`: the :class:`OnlineStore` contract and the backend registry
  (:func:`get_online_store`), plus the value types it returns.
* :mod:`common.online.encoding`: the compact blob (header + float64 vector).
* :mod:`common.online.redis_store`: Redis, with the atomic event-time guard.
* :mod:`common.online.materialize`: Spark DataFrame -> online store, in parallel.
"""

from common.online.base import (
    FeatureVector,
    OnlineGroup,
    OnlineStore,
    ReadResult,
    SchemaMismatch,
    WriteResult,
    get_online_store,
    known_backends,
    register_backend,
)

__all__ = [
    "FeatureVector",
    "OnlineGroup",
    "OnlineStore",
    "ReadResult",
    "SchemaMismatch",
    "WriteResult",
    "get_online_store",
    "known_backends",
    "register_backend",
]
