"""The privacy jobs that run over stored data, after ingestion applied the policies (:mod:`common.privacy`).

* :mod:`~common.privacy_lifecycle.forget`: ``loom forget`` (erase a person from the lake, Redis and
  the prediction logs);
* :mod:`~common.privacy_lifecycle.audit`: ``loom audit-pii``, which looks for raw values
  (:mod:`~common.privacy_lifecycle.scan`) in every stored file;
* :mod:`~common.privacy_lifecycle.efficacy`: ``loom privacy-report`` (what the protection costs a model);
* :mod:`~common.privacy_lifecycle.landing`: the raw landing records the audit and the report read.

Above ``models`` in the package order: they read what ingestion, training and serving stored.
"""
