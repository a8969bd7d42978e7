"""HH reward client against a minimal FastAPI scorer (len(prompt) + 2 len(response)) served by uvicorn on loopback."""

import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from common.processes import free_port
from evaluation.tasks import compute_score, hh


def length_scorer_app(calls: list) -> FastAPI:
    """A scorer whose reward is len(prompt) + 2 * len(response); extra routes misbehave on purpose."""
    app = FastAPI()
    flaky_failures = {"left": 2}

    def rewards(body: dict) -> list[float]:
        return [float(len(p) + 2 * len(r)) for p, r in zip(body["prompts"], body["responses"])]

    @app.post("/predict")
    async def predict(request: Request):
        body = await request.json()
        calls.append(("predict", len(body["prompts"])))
        return {"rewards": rewards(body)}

    @app.post("/flaky")
    async def flaky(request: Request):
        body = await request.json()
        calls.append(("flaky", len(body["prompts"])))
        if flaky_failures["left"] > 0:
            flaky_failures["left"] -= 1
            return JSONResponse({"detail": "warming up"}, status_code=503)
        return {"rewards": rewards(body)}

    @app.post("/reject")
    async def reject(request: Request):
        calls.append(("reject", 0))
        return JSONResponse({"detail": "responses: must be strings"}, status_code=422)

    @app.post("/short")
    async def short(request: Request):
        calls.append(("short", 0))
        return {"rewards": [1.0]}

    @app.post("/words")
    async def words(request: Request):
        return {"rewards": ["high"]}

    return app


@pytest.fixture(scope="module")
def server(serving):
    """(base URL, call log) of the length scorer running in a background thread."""
    calls: list = []
    with serving(length_scorer_app(calls)) as base:
        yield base, calls


def test_batches_are_chunked_and_rewards_in_order(server, monkeypatch):
    base, calls = server
    calls.clear()
    monkeypatch.setenv(hh.URL_ENV, base + "/predict")
    prompts = [f"p{i}" for i in range(300)]
    responses = ["r" * (i % 7) for i in range(300)]
    rewards = hh.compute_score_batch(["hh"] * 300, responses, [{"prompt": p} for p in prompts], [None] * 300)
    assert rewards == [float(len(p) + 2 * len(r)) for p, r in zip(prompts, responses)]
    assert calls == [("predict", 256), ("predict", 44)]


def test_single_score_through_verl_entry_point(server, monkeypatch):
    base, _ = server
    monkeypatch.setenv(hh.URL_ENV, base + "/predict")
    assert compute_score("hh", "four", {"prompt": "hello"}) == 13.0
    assert hh.score("", {"prompt": "ab"}) == 2.0


def test_server_errors_are_retried_with_backoff(server):
    base, calls = server
    calls.clear()
    assert hh.request_rewards(["a"], ["bb"], url=base + "/flaky", retries=3, backoff_s=0.01) == [5.0]
    assert calls == [("flaky", 1)] * 3


def test_client_errors_are_not_retried(server):
    base, calls = server
    calls.clear()
    with pytest.raises(hh.RewardServerError, match=r"reward server http://127\.0\.0\.1:\d+/reject rejected the request \(HTTP 422"):
        hh.request_rewards(["a"], ["b"], url=base + "/reject", retries=4, backoff_s=0.01)
    assert calls == [("reject", 0)]


def test_malformed_replies_name_the_url(server):
    base, _ = server
    with pytest.raises(hh.RewardServerError, match=r"/short: reply must be \{\"rewards\": \[2 numbers\]\}"):
        hh.request_rewards(["a", "b"], ["c", "d"], url=base + "/short", retries=1)
    with pytest.raises(hh.RewardServerError, match=r"/words: reward 'high' is not a finite number"):
        hh.request_rewards(["a"], ["b"], url=base + "/words", retries=1)


def test_unreachable_server_fails_after_bounded_retries():
    url = f"http://127.0.0.1:{free_port()}/predict"
    start = time.monotonic()
    with pytest.raises(hh.RewardServerError, match=rf"^reward server {url} failed after 3 attempts \(ConnectError"):
        hh.request_rewards(["a"], ["b"], url=url, retries=3, backoff_s=0.05, timeout_s=2)
    assert time.monotonic() - start < 5


def test_input_validation():
    with pytest.raises(ValueError, match="^responses: need one response per prompt, got 1 for 2 prompts$"):
        hh.request_rewards(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="^ground_truth: HH needs"):
        hh.compute_score_batch(["hh"], ["r"], ["just a string"])
    assert hh.request_rewards([], [], url="http://127.0.0.1:9/unused") == []


def test_default_url(monkeypatch):
    monkeypatch.delenv(hh.URL_ENV, raising=False)
    assert hh.server_url() == "http://127.0.0.1:8888/predict"
    monkeypatch.setenv(hh.URL_ENV, "http://rm:9000/predict")
    assert hh.server_url() == "http://rm:9000/predict"


def test_verl_batch_manager_entry_point_by_file_path(server, monkeypatch):
    import numpy as np
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    base, _ = server
    monkeypatch.setenv(hh.URL_ENV, base + "/predict")
    config = OmegaConf.create({"custom_reward_function": {"path": hh.__file__, "name": "compute_score_batch"}})
    fn = get_custom_reward_fn(config)
    # The keyword names and containers verl 0.4.1's batch reward manager passes.
    rewards = fn(data_sources=np.array(["hh", "hh"], dtype=object), solution_strs=["ok", "longer"],
                 ground_truths=[{"prompt": "q"}, {"prompt": "qq"}], extra_infos=np.array([None, None], dtype=object))
    assert rewards == [5.0, 14.0]


def test_token_from_the_environment_is_sent_as_a_bearer_header(monkeypatch, serving):
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request):
        if request.headers.get("authorization") != "Bearer t0k3n":
            return JSONResponse({"error": "authorization: missing or wrong token"}, status_code=401)
        body = await request.json()
        return {"rewards": [float(len(r)) for r in body["responses"]]}

    with serving(app) as base:
        url = f"{base}/predict"
        monkeypatch.setenv(hh.TOKEN_ENV, "t0k3n")
        assert hh.request_rewards(["a"], ["bcd"], url=url) == [3.0]
        monkeypatch.delenv(hh.TOKEN_ENV)
        start = time.monotonic()
        with pytest.raises(hh.RewardServerError, match=r"refused the token \(HTTP 401.*set REWARD_SERVER_TOKEN"):
            hh.request_rewards(["a"], ["b"], url=url, retries=5, backoff_s=1.0)
        assert time.monotonic() - start < 1.0  # not retried
