"""HTTP reward server: POST /predict {"prompts": [...], "responses": [...]} -> {"rewards": [...]}, GET /health.

One model replica per visible GPU (or one on CPU); each request is split into contiguous chunks, one per
replica, scored in threads in micro-batches of `max_batch`. Bad requests get a 4xx with one line naming the field.
With a token (env REWARD_SERVER_TOKEN) /predict requires `Authorization: Bearer <token>`. A request whose client
disconnects stops being scored at the next micro-batch.
"""

import asyncio
import hmac
import ipaddress
import json
import math
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from evaluation.reward_model.scoring import MAX_LENGTH, ScoringCancelled, load_reward_model, pair_texts, score_texts
from evaluation.tasks.hh import TOKEN_ENV

DEFAULT_PORT = 8888
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_REQUEST = 4096
DEFAULT_MAX_BODY_MB = 64
DISCONNECT_POLL_S = 0.2  # how often a running request checks whether its client is still there
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: JSON can spell it, UTF-8 (and tokenizers) cannot


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
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"body: malformed JSON ({err.msg} at position {err.pos})") from err
    except UnicodeDecodeError as err:
        raise RequestError(400, f"body: not UTF-8 text ({err.reason})") from err
    except RecursionError:
        raise RequestError(400, f"{_too_deep_field(text)}: JSON nested too deeply; expected "
                                '{"prompts": [str, ...], "responses": [str, ...]}') from None
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
            bad = _SURROGATE.search(item)
            if bad:
                raise RequestError(422, f"{field}[{i}]: lone surrogate U+{ord(bad.group()):04X} at character "
                                        f"{bad.start()}; strings must be valid Unicode")
        lists[field] = value
    if len(lists["prompts"]) != len(lists["responses"]):
        raise RequestError(422, f"responses: length {len(lists['responses'])} differs from "
                                f"prompts length {len(lists['prompts'])}")
    return lists["prompts"], lists["responses"]


def _too_deep_field(text: str) -> str:
    """The top-level field whose value nests too deeply for the JSON parser, else 'body' (walked value by value)."""
    decoder, ws = json.JSONDecoder(), json.decoder.WHITESPACE.match
    i = ws(text, 0).end()
    if text[i : i + 1] != "{":
        return "body"
    i = ws(text, i + 1).end()
    while text[i : i + 1] == '"':
        try:
            key, i = json.decoder.scanstring(text, i + 1)
            i = ws(text, i).end()
            if text[i : i + 1] != ":":
                return "body"
            _, i = decoder.raw_decode(text, ws(text, i + 1).end())
        except RecursionError:
            return key
        except ValueError:
            return "body"
        i = ws(text, i).end()
        if text[i : i + 1] != ",":
            return "body"
        i = ws(text, i + 1).end()
    return "body"


def check_model_dir(path: str) -> None:
    """Raise ValueError naming --model unless `path` holds a config, a tokenizer and weights (cheap, before loading)."""
    expected = "expected a directory written by `python -m evaluation.reward_model train`"
    base = Path(path)
    if not base.is_dir():
        raise ValueError(f"--model {path}: not a directory; {expected}")
    try:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--model {path}: no config.json; {expected}") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"--model {path}: config.json is not valid JSON ({err}); {expected}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"--model {path}: config.json has no model_type; {expected}")
    if not any((base / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"--model {path}: no tokenizer (tokenizer.json or tokenizer_config.json); {expected}")
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((base / name).is_file() for name in weights):
        raise ValueError(f"--model {path}: no weights ({' or '.join(weights[::2])}); {expected}")


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

    def _score_on(self, replica: int, texts: list[str], cancelled: Callable[[], bool] | None) -> list[float]:
        """Score texts on one replica, holding its lock."""
        model, tok = self.replicas[replica]
        with self._locks[replica]:
            return score_texts(model, tok, texts, batch_size=self.max_batch, max_length=self.max_length,
                               cancelled=cancelled)

    def score(self, prompts: list[str], responses: list[str],
              cancelled: Callable[[], bool] | None = None) -> list[float]:
        """Rewards for parallel prompts/responses, split across replicas; ScoringCancelled once cancelled()."""
        texts = pair_texts(self.replicas[0][1], prompts, responses)
        ranges = split_contiguous(len(texts), len(self.replicas))
        if len(ranges) == 1:
            return self._score_on(0, texts, cancelled)
        futures = [self._pool.submit(self._score_on, i, texts[s:e], cancelled) for i, (s, e) in enumerate(ranges)]
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


def create_app(scorer: Any, limits: Limits = Limits(), token: str | None = None,
               disconnect_poll_s: float = DISCONNECT_POLL_S):
    """The FastAPI app around a scorer with a `.score(prompts, responses, cancelled)` method.

    With `token`, POST /predict needs `Authorization: Bearer <token>` (GET /health stays open for readiness probes).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    app = FastAPI(title="TRE reward model server")
    expected = f"Bearer {token}".encode() if token else None

    @app.get("/health")
    def health() -> dict[str, Any]:
        import torch

        return {"status": "ok", "torch_threads": torch.get_num_threads(), "model": scorer.model_path, "devices": list(scorer.devices),
                "replicas": len(scorer.devices), "max_batch": scorer.max_batch, "max_length": scorer.max_length,
                "max_request": limits.max_request, "max_body_bytes": limits.max_body_bytes}

    async def read_body(request: Request) -> bytes:
        """The request body, refused with 413 as soon as it passes the limit (a chunked body has no length)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(413, f"body: {declared} bytes exceeds the server limit of {limits.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise RequestError(413, f"body: more than {limits.max_body_bytes} bytes exceeds the server limit of "
                                        f"{limits.max_body_bytes} bytes")
        return bytes(body)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        if expected is not None:
            given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": f"authorization: missing or wrong token; send the header "
                                              f"'Authorization: Bearer <token>' with the server's ${TOKEN_ENV}"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            prompts, responses = parse_predict_body(await read_body(request), limits)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except ClientDisconnect:
            return JSONResponse({"error": "client disconnected while sending the body"}, status_code=499)

        gone = threading.Event()

        async def watch() -> None:
            # the body has been read, so the next ASGI message can only be the client's disconnect
            while not await request.is_disconnected():
                await asyncio.sleep(disconnect_poll_s)
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            rewards = await run_in_threadpool(scorer.score, prompts, responses, gone.is_set)
        except ScoringCancelled:
            return JSONResponse({"error": "client disconnected; scoring stopped"}, status_code=499)
        except Exception as err:  # a failing batch must not take the server down
            return JSONResponse({"error": f"scoring failed: {type(err).__name__}: {err}".splitlines()[0]},
                                status_code=500)
        finally:
            watcher.cancel()
        bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
        if bad:
            return JSONResponse({"error": f"rewards[{bad[0]}]: the reward model produced a non-finite value"},
                                status_code=500)
        return JSONResponse({"rewards": rewards})

    return app


@contextmanager
def serving_in_thread(app: Any, ready_timeout_s: float = 30.0) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a daemon thread of this process on a free loopback port; yields its base URL
    (the benchmarks' and the tests' in-process server; `serve` is the real one)."""
    import uvicorn

    from common.processes import free_port

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class IdleExit:
    """ASGI wrapper that stops a uvicorn server once no HTTP request has been open for `idle_s` seconds (a request
    of any kind, /health included, counts while it runs and restarts the clock when it ends)."""

    def __init__(self, app: Any, idle_s: float) -> None:
        self.app, self.idle_s = app, idle_s
        self.active, self.last = 0, time.monotonic()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.last = time.monotonic()

    def watch(self, server: Any) -> threading.Thread:
        """A daemon thread that sets server.should_exit once the server has been idle for idle_s."""

        def run() -> None:
            while not server.should_exit:
                time.sleep(min(1.0, self.idle_s / 4))
                if self.active == 0 and time.monotonic() - self.last >= self.idle_s:
                    print(f"idle for {self.idle_s:g} s: exiting", file=sys.stderr, flush=True)
                    server.should_exit = True

        thread = threading.Thread(target=run, name="idle-exit", daemon=True)
        thread.start()
        return thread


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, max_batch: int = DEFAULT_MAX_BATCH,
          max_request: int = DEFAULT_MAX_REQUEST, max_body_mb: int = DEFAULT_MAX_BODY_MB, device: str = "auto",
          dtype: str | None = None, cpu_threads: int | None = 1, log_level: str = "info",
          token: str | None = None, idle_exit_s: float | None = None) -> None:
    """Load the replicas (a bad --model raises ValueError before the port is bound) and serve until interrupted, or
    until no request has come for idle_exit_s seconds."""
    check_model_dir(model)  # before the slow imports: a wrong --model fails at once
    import torch
    import uvicorn

    devices = visible_devices(device)
    if cpu_threads and devices == ["cpu"]:
        # On CPU the server shares the cores with the training run it scores for. Oversubscribed OpenMP threads
        # spin: on a busy 2-core box 2 threads ranged from 3x faster to 20x slower than 1, so 1 is the safe default.
        torch.set_num_threads(cpu_threads)
    try:
        scorer = RewardScorer(model, devices, max_batch=max_batch, dtype=dtype)
    except ValueError:
        raise
    except Exception as err:  # corrupt files surface as many error types (OSError, SafetensorError, KeyError, ...)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"--model {model}: cannot load the reward model ({type(err).__name__}: {first}); "
                         f"expected a directory written by `python -m evaluation.reward_model train`") from None
    if not token and not is_loopback(host):
        print(f"warning: serving on {host}:{port} without a token: anyone who can reach this address can use the "
              f"server; set {TOKEN_ENV} (the clients send it too)", file=sys.stderr, flush=True)
    app = create_app(scorer, Limits(max_request=max_request, max_body_bytes=max_body_mb * 1024 * 1024), token=token)
    if idle_exit_s:
        app = IdleExit(app, idle_exit_s)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    if idle_exit_s:
        app.watch(server)
    server.run()
