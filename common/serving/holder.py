"""The models a server holds, and the thread that follows their alias.

Each served model has a current version: the one its alias (``@champion`` by
default) points to. A background thread asks the registry every
``reload_interval_s`` seconds; when the alias has moved it loads the new
version (outside any lock, while requests keep using the old one) and then
swaps the reference, so no request waits for a load and none sees a half
loaded model. A version that fails to load is logged and the old one stays.

A request may also name a version: it is loaded on first use and kept in a
small per-model LRU cache (``version_cache``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.compile.feature_spec import FeatureSpec
from common.errors import ConfigError, LoomError
from common.models import registry
from common.models.pyfunc import request_fields
from common.online.base import OnlineStore
from common.serving.config import ServingConfig
from common.settings import Paths

log = logging.getLogger(__name__)


class ModelNotFound(LoomError):
    """The model (or the version) is not served or not in the registry."""


class ModelNotReady(LoomError):
    """The model is served but no version is loaded yet (its alias does not exist yet)."""


@dataclass(frozen=True)
class LoadedModel:
    """One model version ready to score: its pyfunc, feature spec and online store view."""

    name: str
    version: int
    alias: str | None
    python_model: Any  # common.models.pyfunc.LoomModel
    spec: FeatureSpec
    store: OnlineStore
    request_fields: tuple[str, ...] = ()
    loaded_at: float = field(default_factory=time.time)


StoreFactory = Callable[[FeatureSpec], OnlineStore]
Listener = Callable[[LoadedModel], None]


class ModelHolder:
    """Current version per served model (following ``config.alias``) plus recently asked versions."""

    def __init__(
        self,
        config: ServingConfig,
        work: Paths,
        store_factory: StoreFactory,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self.config = config
        self.work = work
        self._store_factory = store_factory
        self._listeners = list(listeners)
        self._current: dict[str, LoadedModel] = {}
        self._versions: dict[str, OrderedDict[int, LoadedModel]] = {name: OrderedDict() for name in config.models}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._warned: set[str] = set()

    # -- registry -------------------------------------------------------------

    def _registry(self) -> Any:
        if self._client is None:
            self._client = registry.client(self.work)
        return self._client

    def _load(self, name: str, version: int, alias: str | None) -> LoadedModel:
        import mlflow

        from common.runtime.tracking import configure

        configure(self.work)
        started = time.perf_counter()
        python_model = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
        spec = getattr(python_model, "feature_spec", None)
        if not isinstance(spec, FeatureSpec) or not hasattr(python_model, "predict_features"):
            raise ConfigError(
                f"model {name!r} v{version} is not a Loom model (no feature spec). Fix: train it with `loom train`"
            )
        loaded = LoadedModel(name, version, alias, python_model, spec, self._store_factory(spec), request_fields(spec))
        log.info("loaded model %s v%d in %.2fs", name, version, time.perf_counter() - started)
        return loaded

    def _version_exists(self, name: str, version: int) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._registry().get_model_version(name, str(version))
        except MlflowException:
            return False
        return True

    # -- following the alias --------------------------------------------------

    def refresh(self) -> list[str]:
        """Check every served model's alias once; load and swap the moved ones. Returns what changed."""
        changes: list[str] = []
        for name in self.config.models:
            try:
                version = registry.version_by_alias(name, self.config.alias, self._registry())
            except Exception as err:  # the registry may be briefly unreachable: keep serving, retry later
                log.warning("cannot read %s@%s from the registry: %s", name, self.config.alias, err)
                continue
            current = self._current.get(name)
            if version is None:
                if name not in self._warned:
                    log.warning("model %s has no @%s yet; it is not served until it has", name, self.config.alias)
                    self._warned.add(name)
                continue
            if current is not None and current.version == version:
                continue
            try:
                loaded = self._load(name, version, self.config.alias)
            except Exception as err:  # a broken version must not take the server down: keep the old one
                log.error("cannot load model %s v%d (keeping %s): %s", name, version, _shown(current), err)
                continue
            with self._lock:
                self._current[name] = loaded
            self._warned.discard(name)
            change = f"{name}@{self.config.alias}: {_shown(current)} -> v{version}"
            log.info("model %s", change)
            changes.append(change)
            for listener in self._listeners:
                listener(loaded)
        return changes

    def start(self) -> None:
        """Follow the aliases in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loom-model-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.reload_interval_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- lookups by requests --------------------------------------------------

    def current(self, name: str) -> LoadedModel | None:
        """The version the alias pointed to at the last check, if loaded."""
        return self._current.get(name)

    def cached(self, name: str, version: int | None) -> LoadedModel | None:
        """The loaded model for a request, when it needs no load (None otherwise)."""
        current = self._current.get(name)
        if version is None or (current is not None and current.version == version):
            return current
        with self._lock:
            versions = self._versions.get(name)
            found = versions.get(version) if versions is not None else None
            if found is not None:
                versions.move_to_end(version)
            return found

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The model to score a request with; loads an explicit version on first use (blocking)."""
        if name not in self._versions:
            raise ModelNotFound(f"model {name!r} is not served here. Fix: use one of {list(self.config.models)}")
        found = self.cached(name, version)
        if found is not None:
            return found
        if version is None:
            raise ModelNotReady(f"model {name!r} has no @{self.config.alias} loaded yet")
        if not self._version_exists(name, version):
            raise ModelNotFound(f"model {name!r} has no version {version} in the registry")
        loaded = self._load(name, version, None)
        with self._lock:
            versions = self._versions[name]
            versions[version] = loaded
            while len(versions) > self.config.version_cache:
                versions.popitem(last=False)
        return loaded

    def status(self) -> dict[str, int | None]:
        """Served model -> its loaded current version (None when not loaded)."""
        return {name: (m.version if (m := self._current.get(name)) else None) for name in self.config.models}


def _shown(model: LoadedModel | None) -> str:
    return f"v{model.version}" if model is not None else "none"
