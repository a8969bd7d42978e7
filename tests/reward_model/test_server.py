"""Tests for the reward server: request validation, replicas, and real uvicorn servers on loopback ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from evaluation.reward_model.scoring import load_reward_model, pair_texts, score_pairs
from evaluation.reward_model.server import (Limits, RequestError, RewardScorer, create_app, parse_predict_body,
                                            split_contiguous)

PROMPTS = [f"Question {i}: how do I stay focused?" for i in range(11)]
RESPONSES = ["Take breaks.", "No.", "Use a timer and remove distractions. " * 3, "", "日本語で答えます 🤖",
             "Sleep well.", "x" * 50, "Plan your day.", "Exercise.", "I don't know.", "Drink water."]


def _free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """Run a FastAPI app under uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def scorer(tiny_rm_dir):
    """One CPU replica with micro-batches of 4."""
    return RewardScorer(str(tiny_rm_dir), ["cpu"], max_batch=4)


@pytest.fixture(scope="module")
def url(scorer):
    """A live server around the scorer, with small limits to test them."""
    with running(create_app(scorer, Limits(max_request=64, max_body_bytes=20_000))) as base:
        yield base


def test_parse_predict_body_messages():
    lim = Limits(max_request=3, max_body_bytes=200)
    assert parse_predict_body(b'{"prompts": ["a", "b"], "responses": ["c", "d"]}', lim) == (["a", "b"], ["c", "d"])
    cases = {
        b'{"prompts": ["a"], "responses": ["c"]': (400, "body: malformed JSON (Expecting ',' delimiter at position 37)"),
        b"\xff\xfe\x00": (400, "body: not UTF-8 text"),
        b'["a"]': (422, 'body: must be a JSON object {"prompts": [str, ...], "responses": [str, ...]}'),
        b'{"prompts": ["a"]}': (422, "responses: missing; expected a list of strings"),
        b'{"prompts": "a", "responses": ["c"]}': (422, "prompts: must be a list of strings, got str"),
        b'{"prompts": [], "responses": []}': (422, "prompts: must not be empty"),
        b'{"prompts": ["a", 3], "responses": ["c", "d"]}': (422, "prompts[1]: must be a string, got int"),
        b'{"prompts": ["a"], "responses": [null]}': (422, "responses[0]: must be a string, got NoneType"),
        b'{"prompts": ["a", "b"], "responses": ["c"]}': (422, "responses: length 1 differs from prompts length 2"),
        b'{"prompts": ["a"], "responses": ["c"], "n": 1}': (422, "n: unknown field; allowed fields are prompts, responses"),
        b'{"prompts": ["a","a","a","a"], "responses": ["c"]}': (413, "prompts: 4 items exceeds the server limit of 3 per request"),
        b'{"prompts": ["' + b"a" * 300 + b'"]}': (413, "body: 317 bytes exceeds the server limit of 200 bytes"),
    }
    for body, (status, message) in cases.items():
        with pytest.raises(RequestError) as exc:
            parse_predict_body(body, lim)
        assert exc.value.status == status, body
        assert str(exc.value).startswith(message), (body, str(exc.value))


def test_split_contiguous():
    assert split_contiguous(10, 3) == [(0, 4), (4, 8), (8, 10)]
    assert split_contiguous(2, 8) == [(0, 1), (1, 2)]
    assert split_contiguous(5, 1) == [(0, 5)]


def test_pair_format_is_the_chat_template(tiny_rm_dir):
    _, tok = load_reward_model(str(tiny_rm_dir))
    assert pair_texts(tok, ["hi"], ["hello"]) == [
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"]


def test_predict_equals_direct_model_scoring(url, tiny_rm_dir):
    model, tok = load_reward_model(str(tiny_rm_dir))
    direct = score_pairs(model, tok, PROMPTS, RESPONSES, batch_size=4)
    single = [score_pairs(model, tok, [p], [r], batch_size=1)[0] for p, r in zip(PROMPTS, RESPONSES)]
    resp = httpx.post(f"{url}/predict", json={"prompts": PROMPTS, "responses": RESPONSES}, timeout=30)
    assert resp.status_code == 200
    rewards = resp.json()["rewards"]
    assert rewards == direct  # same micro-batching (4) as the server: bit-identical
    assert rewards == pytest.approx(single, abs=1e-5)  # padding does not change a pair's reward
    assert len(set(rewards)) == len(rewards)

    # logit[:, 0] of the classification head on the chat-templated pair
    import torch

    enc = tok(pair_texts(tok, PROMPTS[:1], RESPONSES[:1]), return_tensors="pt")
    with torch.no_grad():
        assert rewards[0] == pytest.approx(model(**enc).logits[0, 0].item(), abs=1e-6)


def test_health(url, tiny_rm_dir):
    info = httpx.get(f"{url}/health", timeout=10).json()
    import torch

    assert info.pop("torch_threads") == torch.get_num_threads()
    assert info == {"status": "ok", "model": str(tiny_rm_dir), "devices": ["cpu"], "replicas": 1, "max_batch": 4,
                    "max_length": 2048, "max_request": 64, "max_body_bytes": 20_000}


def test_bad_requests_get_4xx_and_server_keeps_serving(url):
    good = {"prompts": ["a"], "responses": ["b"]}
    ok = httpx.post(f"{url}/predict", json=good, timeout=10).json()["rewards"]
    bad = [
        (b"{not json", 400, "body: malformed JSON (Expecting property name enclosed in double quotes at position 1)"),
        (json.dumps({"prompts": ["a", "b"], "responses": ["c"]}).encode(), 422,
         "responses: length 1 differs from prompts length 2"),
        (json.dumps({"prompts": [], "responses": []}).encode(), 422, "prompts: must not be empty"),
        (json.dumps({"prompts": [1], "responses": ["c"]}).encode(), 422, "prompts[0]: must be a string, got int"),
        (json.dumps({"prompts": ["a"] * 65, "responses": ["c"] * 65}).encode(), 413,
         "prompts: 65 items exceeds the server limit of 64 per request"),
        (json.dumps({"prompts": ["a" * 30_000], "responses": ["c"]}).encode(), 413,
         "body: 30037 bytes exceeds the server limit of 20000 bytes"),
    ]
    for body, status, message in bad:
        resp = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=10)
        assert (resp.status_code, resp.json()) == (status, {"error": message})
    assert httpx.post(f"{url}/predict", json=good, timeout=10).json()["rewards"] == ok
    assert httpx.get(f"{url}/predict", timeout=10).status_code == 405


def test_concurrent_clients_get_their_own_rewards(url, scorer):
    requests = [(PROMPTS[i:] + PROMPTS[:i], RESPONSES) for i in range(8)]
    expected = [scorer.score(p, r) for p, r in requests]

    def call(req):
        p, r = req
        with httpx.Client(timeout=60) as client:
            return client.post(f"{url}/predict", json={"prompts": p, "responses": r}).json()["rewards"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(call, requests))
    assert got == expected


def test_two_replicas_split_a_request(tiny_rm_dir, scorer):
    two = RewardScorer(str(tiny_rm_dir), ["cpu", "cpu"], max_batch=4)
    # 11 pairs -> replicas get [0, 6) and [6, 11); batches of 4 within each
    expected = scorer.score(PROMPTS[:6], RESPONSES[:6]) + scorer.score(PROMPTS[6:], RESPONSES[6:])
    assert two.score(PROMPTS, RESPONSES) == expected
    assert two.score(PROMPTS, RESPONSES) == pytest.approx(scorer.score(PROMPTS, RESPONSES), abs=1e-5)


def test_scoring_failure_is_a_500_line_and_server_survives(tiny_rm_dir):
    class Flaky:
        model_path, devices, max_batch, max_length = "m", ["cpu"], 1, 8
        calls = 0

        def score(self, prompts, responses, cancelled=None):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("CUDA out of memory\nlong trace")
            if Flaky.calls == 2:
                return [float("nan")]
            return [1.5]

    with running(create_app(Flaky())) as base:
        body = {"prompts": ["a"], "responses": ["b"]}
        first = httpx.post(f"{base}/predict", json=body, timeout=10)
        assert (first.status_code, first.json()) == (500, {"error": "scoring failed: RuntimeError: CUDA out of memory"})
        second = httpx.post(f"{base}/predict", json=body, timeout=10)
        assert (second.status_code, second.json()) == (
            500, {"error": "rewards[0]: the reward model produced a non-finite value"})
        assert httpx.post(f"{base}/predict", json=body, timeout=10).json() == {"rewards": [1.5]}


def test_cli_serve_subprocess_on_loopback(tiny_rm_dir):
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "evaluation.reward_model", "serve", "--model", str(tiny_rm_dir),
                             "--port", str(port), "--max-batch", "2", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "server did not come up in 90 s"
                time.sleep(0.2)
        assert (health["devices"], health["max_batch"], health["max_request"], health["torch_threads"]) == (
            ["cpu"], 2, 4096, 1)
        rewards = httpx.post(f"{base}/predict", json={"prompts": PROMPTS[:3], "responses": RESPONSES[:3]},
                             timeout=30).json()["rewards"]
        model, tok = load_reward_model(str(tiny_rm_dir))
        assert rewards == score_pairs(model, tok, PROMPTS[:3], RESPONSES[:3], batch_size=2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_serve_bad_args_exit_2(tmp_path, capsys):
    from evaluation.reward_model.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(tmp_path / "none")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"python -m evaluation.reward_model serve: error: --model {tmp_path / 'none'}: not a directory; expected a "
        "directory written by `python -m evaluation.reward_model train`")
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(tmp_path), "--max-batch", "0"])
    assert exc.value.code == 2
    assert "--max-batch: must be an integer >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(tmp_path), "--device", "tpu"])
    assert exc.value.code == 2
    assert "--device must be auto, cuda, cpu or cuda:N, got 'tpu'" in capsys.readouterr().err


def test_hh_reward_client_against_the_live_server(url, scorer):
    from evaluation.tasks import hh

    truths = [{"prompt": p} for p in PROMPTS]
    got = hh.compute_score_batch(["hh"] * len(PROMPTS), RESPONSES, truths, url=f"{url}/predict", chunk_size=3)
    assert got == scorer.score(PROMPTS[:3], RESPONSES[:3]) + scorer.score(PROMPTS[3:6], RESPONSES[3:6]) + \
        scorer.score(PROMPTS[6:9], RESPONSES[6:9]) + scorer.score(PROMPTS[9:], RESPONSES[9:])
    with pytest.raises(hh.RewardServerError, match="rejected the request"):
        hh.request_rewards(["a"] * 65, ["b"] * 65, url=f"{url}/predict", chunk_size=65, retries=1)
