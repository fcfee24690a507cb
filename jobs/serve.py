"""``loom serve --usecase churn``: the REST prediction service (FastAPI under uvicorn).

Every worker process builds the app from the environment
(:func:`common.serving.app.app_from_env`): this job checks the options, the
API keys and the models, writes the config into ``LOOM_SERVE_*`` variables
and hands over to uvicorn. API keys: ``LOOM_API_KEYS`` or ``LOOM_API_KEYS_FILE``;
Redis: ``REDIS_URL`` (or ``REDIS_URL_FILE``), ``REDIS_USERNAME``,
``REDIS_PASSWORD(_FILE)``, ``REDIS_TLS_*`` (see common.serving.config).

Every answered prediction is logged to ``lake/<usecase>/predictions/rest``
(Delta, off the request path; see common.serving.prediction_log) unless
``--no-log-predictions``; stopping the server (Ctrl-C, SIGTERM) writes what is
still queued.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile

from common.compile import compile_usecase
from common.compile.plan import Plan
from common.errors import ConfigError
from common.serving.limits import MAX_HEADER_BYTES
from common.settings import paths
from common.spec import load_usecase
from jobs.runner import add_usecase_argument, main_for

DESCRIPTION = "Serve predictions over REST: entity keys -> online features -> the model's pyfunc (FastAPI + uvicorn)."
APP_FACTORY = "common.serving.app:app_from_env"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    parser.add_argument(
        "--model", action="append", help="registered model to serve (repeatable; default: every model of the use case)"
    )
    parser.add_argument("--alias", default="champion", help="alias to follow (default champion)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes, each with its own Redis connection pool (default: the number of cores)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="predictions a worker holds at once, waiting or running; beyond, 503 + Retry-After (default 64)",
    )
    parser.add_argument(
        "--reload-interval", type=float, default=10.0, help="seconds between checks of the alias (default 10)"
    )
    parser.add_argument("--max-batch", type=int, default=500, help="most entities per request (default 500)")
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off by default: it costs latency)"
    )
    parser.add_argument(
        "--no-log-predictions",
        dest="log_predictions",
        action="store_false",
        help="do not append predictions to the use case's predictions/rest Delta table (logged by default)",
    )
    parser.add_argument(
        "--log-flush-seconds",
        type=float,
        default=5.0,
        help="most seconds a logged prediction waits before it is written (default 5)",
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from common.runtime.tracking import configure
    from common.serving.app import SUPERVISOR_PID_ENV
    from common.serving.auth import ApiKeys
    from common.serving.config import ServingConfig, resolve_redis_url

    plan = compile_usecase(load_usecase(args.usecase))
    models = args.model or sorted(plan.models)
    if not models:
        raise ConfigError(f"use case {plan.usecase!r} declares no model. Fix: add one under models: in its metadata")
    for name in models:
        plan.model(name)  # a clear error naming the metadata when the model is not declared
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: at least 1. Fix: pass --workers 1 or more")
    config = ServingConfig(
        models=tuple(models),
        usecase=plan.usecase,
        alias=args.alias,
        reload_interval_s=args.reload_interval,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        log_predictions=args.log_predictions,
        log_flush_s=args.log_flush_seconds,
    )
    ApiKeys.from_env()  # fail here, once, rather than in every worker
    work = paths()
    configure(work)
    os.environ.update(config.to_env())
    os.environ["LOOM_HOME"] = str(work.home)
    if not os.environ.get("REDIS_URL") and not os.environ.get("REDIS_URL_FILE"):
        # Loom's local server (started here if needed): every worker must use the same one.
        os.environ["REDIS_URL"] = resolve_redis_url(config, work.home)
    warn_on_empty_online_groups(plan, models, resolve_redis_url(config, work.home))
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # the workers die with this process
    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics of any worker then shows the sum over all workers
        metrics_dir = tempfile.mkdtemp(prefix="loom-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=args.access_log,
            log_config=None,  # keep Loom's log format (common.runtime.log)
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,  # the h11 parser's own header limit (httptools has none;
            # common.serving.limits refuses what is over it in every case)
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def warn_on_empty_online_groups(plan: Plan, models: list[str], url: str) -> list[str]:
    """Log a warning for each feature group of the served models that has no vector in the online store
    (every request would answer ``known: false``): after `loom backfill`, run `loom materialize`.
    Returns those groups; an unreachable store is only logged (the service reports it on /readyz)."""
    from redis.exceptions import RedisError

    from common.errors import LoomError
    from common.online.redis_store import groups_without_vectors
    from common.runtime.redis_server import describe
    from common.serving.config import open_redis

    groups = sorted({g for name in models for g in plan.model(name).groups})
    try:
        client = open_redis(url, 2.0)
        try:
            empty = groups_without_vectors(client, plan.usecase, plan.version, groups)
        finally:
            client.close()
    except (RedisError, OSError, LoomError) as err:  # unreachable or misconfigured: a warning, not a refusal
        log.warning("could not check the online store %s for feature vectors: %s", describe(url), err)
        return []
    for group in empty:
        users = [name for name in models if group in plan.model(name).groups]
        log.warning(
            "the online store %s holds no vector of feature group %r (read by model(s) %s): every prediction "
            "will see its features as missing. Fix: run `loom materialize --usecase %s --group %s` "
            "after `loom backfill`, or `loom stream`",
            describe(url),
            group,
            users,
            plan.usecase,
            group,
        )
    return empty


if __name__ == "__main__":
    raise SystemExit(main_for("serve", __import__(__name__)))
