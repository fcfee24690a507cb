"""Ask the REST service for predictions, started in this process on a free port for the call.

What ``loom demo`` and the streaming notebook use to show that REST scores equal batch and
stream scores: the real app (common.serving.app) behind uvicorn, a throwaway API key, one
POST /v1/models/<model>/predict, then a clean shutdown (which writes the prediction log).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from common.settings import Paths


@dataclass(frozen=True)
class RestAnswer:
    """Scores by entity key, the version that made them and the request id (the prediction log's ``request_id``)."""

    scores: dict[str, float]
    version: int
    request_id: str
    as_of: str


def rest_scores(
    usecase: str, model: str, work: Paths, redis_url: str, entity_key: str, keys: Sequence[str]
) -> RestAnswer:
    """Start the REST service for ``model`` on 127.0.0.1, ask it for ``keys`` (values of ``entity_key``), stop it."""
    import uvicorn

    from common.runtime.processes import free_port
    from common.serving.app import create_app
    from common.serving.auth import ApiKeys
    from common.serving.config import ServingConfig

    api_key = secrets.token_hex(24)  # this call's own client; never printed
    app = create_app(
        ServingConfig(models=(model,), usecase=usecase, redis_url=redis_url),
        work=work,
        keys=ApiKeys.parse(f"local:{api_key}:{model}"),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        body = json.dumps({"entities": [{entity_key: key} for key in keys]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/{model}/predict",
            data=body,
            headers={"Content-Type": "application/json", "X-API-Key": api_key},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
            request_id = response.headers["X-Request-Id"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return RestAnswer(
        {p["key"]: p["score"] for p in answer["predictions"]}, answer["version"], request_id, answer["as_of"]
    )
