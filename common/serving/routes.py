"""The FastAPI routes of the prediction service: the prediction endpoint and the operations endpoints.

:func:`install_routes` adds them to an app with ``add_api_route`` (what ``@app.post`` does), so they
sit directly in the app's router: ``include_router`` of an ``APIRouter`` would put FastAPI's
included-router layer in front of them, matched on every request. Handlers find the worker's objects in ``request.app.state.serving``
(:class:`common.serving.context.ServingContext`). Every 200 prediction is answered by the fast path
(:mod:`common.serving.fast_path`) before FastAPI runs; the route here raises the fast path's error so
that the app's exception handlers render it, checks the key itself for requests the fast path did not
take, and describes the endpoint in OpenAPI.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from common.serving.auth import Client
from common.serving.context import ServingContext
from common.serving.fast_path import FAST_PATH_ERROR
from common.serving.metrics import CONTENT_TYPE
from common.serving.predict_service import PredictService
from common.serving.schemas import ErrorBody, PredictRequest, PredictResponse

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key of LOOM_API_KEYS")
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")
_ERRORS = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown one"},
    403: {"model": ErrorBody, "description": "The API key may not call this model"},
    404: {"model": ErrorBody, "description": "The model is not served, or has no such version"},
    413: {"model": ErrorBody, "description": "More entities (or bytes) than the server accepts"},
    503: {
        "model": ErrorBody,
        "description": "The online store is unreachable or no version is loaded; see Retry-After",
    },
}


def _context(request: Request) -> ServingContext:
    return request.app.state.serving


def authenticate(
    request: Request,
    api_key: str | None = Security(_api_key),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> Client:
    """The client of the presented API key (``X-API-Key`` or ``Authorization: Bearer``); 401 otherwise."""
    return _context(request).service.authenticate(api_key or (bearer.credentials if bearer is not None else None))


async def _read_body(request: Request, service: PredictService) -> bytes:
    """The request body, refused with 413 beyond the service's limit (before reading it when it says its length)."""
    limit = service.body_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise service.too_large(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise service.too_large(None)
        chunks.append(chunk)
    return b"".join(chunks)


async def predict(model: str, request: Request, client: Client = Depends(authenticate)) -> Response:
    """Score entities with the model's version of the served alias (or the version named in the body)."""
    failed = request.scope.get(FAST_PATH_ERROR)
    if failed is not None:  # the fast path answers every 200; its errors are raised (and rendered) here
        raise failed
    service = _context(request).service
    service.check_access(model, client)
    body = await _read_body(request, service)
    answer = await service.predict(model, client, body)
    return Response(answer.body, media_type="application/json", headers={"X-Request-Id": answer.request_id})


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    context = _context(request)
    models = context.holder.status()
    try:
        redis_ok = bool(await run_in_threadpool(context.redis_client.ping))
    except Exception:  # any failure of the PING means not ready; the reason is in the Redis log
        redis_ok = False
    ready = redis_ok and all(v is not None for v in models.values())
    return JSONResponse({"ready": ready, "redis": redis_ok, "models": models}, status_code=200 if ready else 503)


async def prometheus(request: Request, client: Client = Depends(authenticate)) -> Response:
    return Response(_context(request).metrics.render(), media_type=CONTENT_TYPE)


def install_routes(app: FastAPI) -> None:
    """Add the prediction endpoint and the operations endpoints (``/healthz``, ``/readyz``, ``/metrics``)."""
    app.add_api_route(
        "/v1/models/{model}/predict",
        predict,
        methods=["POST"],
        response_model=PredictResponse,
        responses=_ERRORS,
        summary="Score entities",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="The process is up")
    app.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        summary="Every served model is loaded and Redis answers",
        responses={503: {}},
    )
    app.add_api_route(
        "/metrics",
        prometheus,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={401: {"model": ErrorBody}},
    )
