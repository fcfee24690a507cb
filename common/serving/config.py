"""Settings of the prediction service, from the environment.

``loom serve`` writes its options into these variables so that every uvicorn
worker (a separate process with ``--workers N``) builds the same app:

=================================  ===========================================  =========
variable                           meaning                                      default
=================================  ===========================================  =========
``LOOM_SERVE_MODELS``              registered models served, comma-separated    required
``LOOM_SERVE_USECASE``             the use case (names the prediction log)      ``""``
``LOOM_SERVE_ALIAS``               alias followed when a request names no       champion
                                   version
``LOOM_SERVE_RELOAD_INTERVAL_S``   how often the alias is checked (seconds)     10
``LOOM_SERVE_MAX_BATCH``           most entities in one request (else 413)      500
``LOOM_SERVE_RETRY_AFTER_S``       Retry-After of a 503                         1
``LOOM_SERVE_MAX_QUEUE``           predictions a worker holds at once (waiting  64
                                   or running); beyond: 503 + Retry-After
``LOOM_SERVE_REDIS_TIMEOUT_S``     Redis connect and read timeout (seconds)     0.5
``LOOM_SERVE_VERSION_CACHE``       explicit versions kept loaded per model      4
``LOOM_SERVE_THREADS``             OpenMP/BLAS threads per worker (0: leave)    1
``LOOM_SERVE_LOG_PREDICTIONS``     append every prediction to the use case's    1
                                   ``predictions/rest`` Delta table (0: off)
``LOOM_SERVE_LOG_FLUSH_S``         most seconds a logged prediction waits       5
                                   before it is written
=================================  ===========================================  =========

Redis: ``REDIS_URL`` (or ``REDIS_URL_FILE``: the URL may hold a password),
``REDIS_USERNAME`` (ACL user), ``REDIS_PASSWORD`` or ``REDIS_PASSWORD_FILE``;
TLS with a ``rediss://`` URL plus optionally ``REDIS_TLS_CA_FILE``,
``REDIS_TLS_CERT_FILE``, ``REDIS_TLS_KEY_FILE`` and ``REDIS_TLS_VERIFY``
(``required``, the default, ``optional`` or ``none``). API keys:
:mod:`common.serving.auth`. Secrets are read when the connection is opened
and are never part of the config's repr or of a log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError
from common.runtime.secrets import read_secret

PREFIX = "LOOM_SERVE_"
_TLS_FILES = {
    "REDIS_TLS_CA_FILE": "ssl_ca_certs",
    "REDIS_TLS_CERT_FILE": "ssl_certfile",
    "REDIS_TLS_KEY_FILE": "ssl_keyfile",
}
_TLS_VERIFY = ("required", "optional", "none")


@dataclass(frozen=True)
class ServingConfig:
    """What one server process serves and how."""

    models: tuple[str, ...]
    usecase: str = ""
    alias: str = "champion"
    reload_interval_s: float = 10.0
    max_batch: int = 500
    retry_after_s: int = 1
    max_queue: int = 64  # per worker: predictions waiting or running; beyond, 503 at once
    redis_timeout_s: float = 0.5
    version_cache: int = 4
    threads: int = 1  # applied by app_from_env (uvicorn workers), not by create_app
    log_predictions: bool = True  # needs the use case: the table is predictions/rest of it
    log_flush_s: float = 5.0
    redis_url: str | None = field(default=None, repr=False)  # None: REDIS_URL or Loom's local server

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError(f"no model to serve. Fix: pass --model NAME or set {PREFIX}MODELS=churn")
        checks = (
            ("reload_interval_s", self.reload_interval_s > 0),
            ("max_batch", self.max_batch >= 1),
            ("retry_after_s", self.retry_after_s >= 1),
            ("max_queue", self.max_queue >= 1),
            ("redis_timeout_s", self.redis_timeout_s > 0),
            ("version_cache", self.version_cache >= 1),
            ("threads", self.threads >= 0),
            ("log_flush_s", self.log_flush_s > 0),
        )
        for name, ok in checks:
            if not ok:
                raise ConfigError(
                    f"serving setting {name} = {getattr(self, name)!r} is out of range. "
                    f"Fix: set {PREFIX}{name.upper()} to {'0 or more' if name == 'threads' else 'a positive number'}"
                )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServingConfig:
        """The config written by :meth:`to_env` (or by hand) into the environment."""
        env = os.environ if environ is None else environ
        models = tuple(m.strip() for m in env.get(f"{PREFIX}MODELS", "").split(",") if m.strip())
        return cls(
            models=models,
            usecase=env.get(f"{PREFIX}USECASE", ""),
            alias=env.get(f"{PREFIX}ALIAS", "champion"),
            reload_interval_s=_number(env, "RELOAD_INTERVAL_S", 10.0, float),
            max_batch=_number(env, "MAX_BATCH", 500, int),
            retry_after_s=_number(env, "RETRY_AFTER_S", 1, int),
            max_queue=_number(env, "MAX_QUEUE", 64, int),
            redis_timeout_s=_number(env, "REDIS_TIMEOUT_S", 0.5, float),
            version_cache=_number(env, "VERSION_CACHE", 4, int),
            threads=_number(env, "THREADS", 1, int),
            log_predictions=_flag(env, "LOG_PREDICTIONS", True),
            log_flush_s=_number(env, "LOG_FLUSH_S", 5.0, float),
        )

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads (no secrets: the Redis URL stays in REDIS_URL)."""
        return {
            f"{PREFIX}MODELS": ",".join(self.models),
            f"{PREFIX}USECASE": self.usecase,
            f"{PREFIX}ALIAS": self.alias,
            f"{PREFIX}RELOAD_INTERVAL_S": str(self.reload_interval_s),
            f"{PREFIX}MAX_BATCH": str(self.max_batch),
            f"{PREFIX}RETRY_AFTER_S": str(self.retry_after_s),
            f"{PREFIX}MAX_QUEUE": str(self.max_queue),
            f"{PREFIX}REDIS_TIMEOUT_S": str(self.redis_timeout_s),
            f"{PREFIX}VERSION_CACHE": str(self.version_cache),
            f"{PREFIX}THREADS": str(self.threads),
            f"{PREFIX}LOG_PREDICTIONS": "1" if self.log_predictions else "0",
            f"{PREFIX}LOG_FLUSH_S": str(self.log_flush_s),
        }


def _number(env: Any, name: str, default: Any, kind: type) -> Any:
    text = env.get(f"{PREFIX}{name}")
    if text is None or text == "":
        return default
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(
            f"{PREFIX}{name}={text!r} is not a{'n integer' if kind is int else ' number'}. Fix: set a number"
        ) from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(env: Any, name: str, default: bool) -> bool:
    text = env.get(f"{PREFIX}{name}")
    if text is None or text.strip() == "":
        return default
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{PREFIX}{name}={text!r} is not a yes/no value. Fix: set it to 1 or 0")


def redis_connect_kwargs(url: str, timeout_s: float) -> dict[str, Any]:
    """redis-py options for the service: short timeouts, one quick retry, TLS files from the environment.

    A request must fail fast (503) rather than hang while Redis is away; the one
    retry without backoff replaces a pooled connection that died with a restart.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    tls = {option: os.environ[name] for name, option in _TLS_FILES.items() if os.environ.get(name)}
    verify = os.environ.get("REDIS_TLS_VERIFY")
    if (tls or verify) and not url.startswith("rediss://"):
        raise ConfigError(
            "REDIS_TLS_* is set but the Redis URL does not use TLS. Fix: write the URL as rediss://host:port/0"
        )
    for name, option in _TLS_FILES.items():
        if option in tls and not os.path.isfile(tls[option]):
            raise ConfigError(f"{name} points to {tls[option]}, which does not exist. Fix: correct the path")
    if verify:
        if verify not in _TLS_VERIFY:
            raise ConfigError(f"REDIS_TLS_VERIFY={verify!r} is not one of {list(_TLS_VERIFY)}. Fix: use one of them")
        kwargs["ssl_cert_reqs"] = verify
    return {**kwargs, **tls}


def resolve_redis_url(config: ServingConfig, home: Any = None) -> str:
    """The Redis URL to use: the config's, ``REDIS_URL``/``REDIS_URL_FILE``, or Loom's local server."""
    if config.redis_url:
        return config.redis_url
    url = read_secret("REDIS_URL", required=False)
    if url:
        return url
    from common.runtime.redis_server import redis_url

    return redis_url(home)


def open_redis(url: str, timeout_s: float) -> Any:
    """A redis-py client for the service (password and ACL user: :func:`common.runtime.redis_server.connect`)."""
    from common.runtime.redis_server import connect

    return connect(url, **redis_connect_kwargs(url, timeout_s))
