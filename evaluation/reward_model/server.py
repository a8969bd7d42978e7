"""HTTP reward server: POST /predict {"prompts": [...], "responses": [...]} -> {"rewards": [...]}, GET /health.

One model replica per visible GPU (or one on CPU); each request is split into contiguous chunks, one per
replica, scored in threads in micro-batches of `max_batch`. Bad requests get a 4xx with one line naming the field.
"""

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from evaluation.reward_model.scoring import MAX_LENGTH, load_reward_model, pair_texts, score_texts

DEFAULT_PORT = 8888
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_REQUEST = 4096
DEFAULT_MAX_BODY_MB = 64


class RequestError(ValueError):
    """A client error: HTTP status and a one-line message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per-request limits enforced before any scoring."""

    max_request: int = DEFAULT_MAX_REQUEST
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * 1024 * 1024


def parse_predict_body(body: bytes, limits: Limits) -> tuple[list[str], list[str]]:
    """Validate a /predict body and return (prompts, responses); raises RequestError with a one-line message."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"body: {len(body)} bytes exceeds the server limit of {limits.max_body_bytes} bytes")
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"body: malformed JSON ({err.msg} at position {err.pos})") from err
    except UnicodeDecodeError as err:
        raise RequestError(400, f"body: not UTF-8 text ({err.reason})") from err
    if not isinstance(payload, dict):
        raise RequestError(422, 'body: must be a JSON object {"prompts": [str, ...], "responses": [str, ...]}')
    unknown = sorted(set(payload) - {"prompts", "responses"})
    if unknown:
        raise RequestError(422, f"{unknown[0]}: unknown field; allowed fields are prompts, responses")
    lists = {}
    for field in ("prompts", "responses"):
        if field not in payload:
            raise RequestError(422, f"{field}: missing; expected a list of strings")
        value = payload[field]
        if not isinstance(value, list):
            raise RequestError(422, f"{field}: must be a list of strings, got {type(value).__name__}")
        if not value:
            raise RequestError(422, f"{field}: must not be empty")
        if len(value) > limits.max_request:
            raise RequestError(413, f"{field}: {len(value)} items exceeds the server limit of {limits.max_request} per request")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise RequestError(422, f"{field}[{i}]: must be a string, got {type(item).__name__}")
        lists[field] = value
    if len(lists["prompts"]) != len(lists["responses"]):
        raise RequestError(422, f"responses: length {len(lists['responses'])} differs from "
                                f"prompts length {len(lists['prompts'])}")
    return lists["prompts"], lists["responses"]


def split_contiguous(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges cutting n items into at most `parts` contiguous chunks of ceil(n / parts)."""
    size = max(1, math.ceil(n / max(1, parts)))
    return [(s, min(s + size, n)) for s in range(0, n, size)]


class RewardScorer:
    """Reward-model replicas (one per device), each used by one thread at a time."""

    def __init__(self, model_path: str, devices: list[str], *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_length: int = MAX_LENGTH, dtype: str | None = None):
        self.model_path = model_path
        self.devices = devices
        self.max_batch = max_batch
        self.max_length = max_length
        self.replicas = [load_reward_model(model_path, device=d, dtype=dtype) for d in devices]
        self._locks = [threading.Lock() for _ in devices]
        self._pool = ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="rm-replica")

    def _score_on(self, replica: int, texts: list[str]) -> list[float]:
        """Score texts on one replica, holding its lock."""
        model, tok = self.replicas[replica]
        with self._locks[replica]:
            return score_texts(model, tok, texts, batch_size=self.max_batch, max_length=self.max_length)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Rewards for parallel prompts/responses, split across replicas."""
        texts = pair_texts(self.replicas[0][1], prompts, responses)
        ranges = split_contiguous(len(texts), len(self.replicas))
        if len(ranges) == 1:
            return self._score_on(0, texts)
        futures = [self._pool.submit(self._score_on, i, texts[s:e]) for i, (s, e) in enumerate(ranges)]
        return [r for f in futures for r in f.result()]


def visible_devices(device: str) -> list[str]:
    """Replica devices: every visible GPU for 'auto' (else the CPU), or exactly the one named."""
    import torch

    if device == "auto":
        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
    if device == "cuda":
        n = torch.cuda.device_count()
        if not n:
            raise ValueError("--device cuda: no GPU is visible; use --device cpu or auto")
        return [f"cuda:{i}" for i in range(n)]
    return [device]


def create_app(scorer: Any, limits: Limits = Limits()):
    """The FastAPI app around a scorer with a `.score(prompts, responses)` method."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="TRE reward model server")

    @app.get("/health")
    def health() -> dict[str, Any]:
        import torch

        return {"status": "ok", "torch_threads": torch.get_num_threads(), "model": scorer.model_path, "devices": list(scorer.devices),
                "replicas": len(scorer.devices), "max_batch": scorer.max_batch, "max_length": scorer.max_length,
                "max_request": limits.max_request, "max_body_bytes": limits.max_body_bytes}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            return JSONResponse({"error": f"body: {declared} bytes exceeds the server limit of "
                                          f"{limits.max_body_bytes} bytes"}, status_code=413)
        try:
            prompts, responses = parse_predict_body(await request.body(), limits)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        try:
            rewards = await run_in_threadpool(scorer.score, prompts, responses)
        except Exception as err:  # a failing batch must not take the server down
            return JSONResponse({"error": f"scoring failed: {type(err).__name__}: {err}".splitlines()[0]},
                                status_code=500)
        bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
        if bad:
            return JSONResponse({"error": f"rewards[{bad[0]}]: the reward model produced a non-finite value"},
                                status_code=500)
        return JSONResponse({"rewards": rewards})

    return app


def serve(model: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, max_batch: int = DEFAULT_MAX_BATCH,
          max_request: int = DEFAULT_MAX_REQUEST, max_body_mb: int = DEFAULT_MAX_BODY_MB, device: str = "auto",
          dtype: str | None = None, cpu_threads: int | None = 1, log_level: str = "info") -> None:
    """Load the replicas and serve until interrupted."""
    import torch
    import uvicorn

    devices = visible_devices(device)
    if cpu_threads and devices == ["cpu"]:
        # On CPU the server shares the cores with the training run it scores for. Oversubscribed OpenMP threads
        # spin: on a busy 2-core box 2 threads ranged from 3x faster to 20x slower than 1, so 1 is the safe default.
        torch.set_num_threads(cpu_threads)
    scorer = RewardScorer(model, devices, max_batch=max_batch, dtype=dtype)
    app = create_app(scorer, Limits(max_request=max_request, max_body_bytes=max_body_mb * 1024 * 1024))
    uvicorn.run(app, host=host, port=port, log_level=log_level)
