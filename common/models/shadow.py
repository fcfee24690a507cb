"""Shadow deployment: a version that won the promotion rule is scored beside @champion first.

When a model's ``promotion.shadow`` is set and a champion exists, training does
not move @champion to a winning version. Instead:

1. ``start_shadow``: the version gets the alias ``@shadow`` and the tag
   ``loom.shadow_until`` (UTC, now + the shadow period);
2. the trigger streams score every firing with @champion as usual *and* with
   @shadow, whose rows go to ``predictions/shadow`` only (no actions, no Redis):
   both are logged for the same firings (``common.triggers.scoring``);
3. ``conclude_shadow`` (:mod:`common.monitoring.shadow`, run by ``loom retrain`` once the
   period is over) applies the promotion rule again, to the shadow period's own evidence: the champion's
   and the shadow's scores of the *same* firings, matched with the outcomes that
   arrived (``common.monitoring.matching``). With at least
   ``promotion.shadow_min_labels`` matched firings the runtime comparison decides;
   with fewer, the holdout verdict that started the shadow stands. Either way
   @shadow is removed and the verdict is recorded on the version
   (``loom.shadow_result``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from common.models import registry
from common.spec.base import duration_seconds

SHADOW = "shadow"
UNTIL_TAG = "loom.shadow_until"
RESULT_TAG = "loom.shadow_result"


@dataclass(frozen=True)
class Shadow:
    """The version under @shadow and when its period ends."""

    model: str
    version: int
    until: datetime

    def over(self, at: datetime) -> bool:
        return at >= self.until


def shadow_until(spec_shadow: str, now: datetime | None = None) -> datetime:
    """When a shadow period starting ``now`` (default now, UTC) ends."""
    return (now or datetime.now(UTC)) + timedelta(seconds=duration_seconds(spec_shadow))


def start_shadow(name: str, version: int, until: datetime, mlflow_client: Any | None = None) -> None:
    """Put ``version`` under @shadow until ``until``; @champion does not move."""
    mlflow_client = mlflow_client or registry.client()
    mlflow_client.set_registered_model_alias(name, SHADOW, str(version))
    mlflow_client.set_model_version_tag(name, str(version), UNTIL_TAG, until.astimezone(UTC).isoformat())


def current_shadow(name: str, mlflow_client: Any | None = None) -> Shadow | None:
    """The running (or finished but not yet concluded) shadow of ``name``, if any."""
    mlflow_client = mlflow_client or registry.client()
    version = registry.version_by_alias(name, SHADOW, mlflow_client)
    if version is None:
        return None
    tags = mlflow_client.get_model_version(name, str(version)).tags
    until = datetime.fromisoformat(tags[UNTIL_TAG]) if UNTIL_TAG in tags else datetime.now(UTC)
    return Shadow(name, version, until)
