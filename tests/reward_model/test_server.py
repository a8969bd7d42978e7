"""Tests for the reward server: request validation, replicas, and real uvicorn servers on loopback ports."""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from common.processes import free_port
from evaluation.reward_model.lifecycle import ServerNotReady, client_env, running_server
from evaluation.reward_model.scoring import load_reward_model, pair_texts, score_pairs
from evaluation.reward_model.server import (Limits, RequestError, RewardScorer, create_app, parse_predict_body,
                                            split_contiguous)

PROMPTS = [f"Question {i}: how do I stay focused?" for i in range(11)]
RESPONSES = ["Take breaks.", "No.", "Use a timer and remove distractions. " * 3, "", "日本語で答えます 🤖",
             "Sleep well.", "x" * 50, "Plan your day.", "Exercise.", "I don't know.", "Drink water."]


@pytest.fixture(scope="module")
def scorer(tiny_rm_dir):
    """One CPU replica with micro-batches of 4."""
    return RewardScorer(str(tiny_rm_dir), ["cpu"], max_batch=4)


@pytest.fixture(scope="module")
def url(scorer, serving):
    """A live server around the scorer, with small limits to test them."""
    with serving(create_app(scorer, Limits(max_request=64, max_body_bytes=20_000))) as base:
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


def test_scoring_failure_is_a_500_line_and_server_survives(tiny_rm_dir, serving):
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

    with serving(create_app(Flaky())) as base:
        body = {"prompts": ["a"], "responses": ["b"]}
        first = httpx.post(f"{base}/predict", json=body, timeout=10)
        assert (first.status_code, first.json()) == (500, {"error": "scoring failed: RuntimeError: CUDA out of memory"})
        second = httpx.post(f"{base}/predict", json=body, timeout=10)
        assert (second.status_code, second.json()) == (
            500, {"error": "rewards[0]: the reward model produced a non-finite value"})
        assert httpx.post(f"{base}/predict", json=body, timeout=10).json() == {"rewards": [1.5]}


def test_cli_serve_subprocess_on_loopback(tiny_rm_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with running_server(str(tiny_rm_dir), tmp_path / "serve.log", args=["--max-batch", "2", "--log-level", "warning"],
                        env=env, ready_timeout_s=90) as server:
        base = server.url.removesuffix("/predict")
        health = httpx.get(f"{base}/health", timeout=2).json()
        assert (health["devices"], health["max_batch"], health["max_request"], health["torch_threads"]) == (
            ["cpu"], 2, 4096, 1)
        rewards = httpx.post(server.url, json={"prompts": PROMPTS[:3], "responses": RESPONSES[:3]},
                             timeout=30).json()["rewards"]
        model, tok = load_reward_model(str(tiny_rm_dir))
        assert rewards == score_pairs(model, tok, PROMPTS[:3], RESPONSES[:3], batch_size=2)
    assert server.proc is None  # stopped with the block


def test_running_server_hands_out_url_and_token_and_fails_in_one_line(tmp_path):
    from evaluation.tasks import hh

    with pytest.raises(ServerNotReady, match=r"^server behind http://127\.0\.0\.1:\d+/health exited before it was "
                                             r"ready; log: .*serve\.log$"):
        with running_server(str(tmp_path / "none"), tmp_path / "serve.log", token="t0k"):
            pass
    assert "not a directory" in (tmp_path / "serve.log").read_text()
    assert client_env("http://h:1/predict", "t0k") == {hh.URL_ENV: "http://h:1/predict", hh.TOKEN_ENV: "t0k"}
    assert client_env(token="t0k") == {hh.TOKEN_ENV: "t0k"} and client_env() == {}


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


DEEP = "[" * 3000 + "]" * 3000  # deeper than Python's JSON parser recurses


def test_deep_json_and_lone_surrogates_get_4xx_naming_the_field(url):
    expected = '{"prompts": [str, ...], "responses": [str, ...]}'
    cases = [
        (DEEP, 400, f"body: JSON nested too deeply; expected {expected}"),
        ('{"prompts": %s, "responses": ["a"]}' % DEEP, 400, f"prompts: JSON nested too deeply; expected {expected}"),
        ('{"prompts": ["a"], "responses": [{"x": %s}]}' % DEEP, 400,
         f"responses: JSON nested too deeply; expected {expected}"),
        ('{"prompts": ["a\\ud800"], "responses": ["b"]}', 422,
         "prompts[0]: lone surrogate U+D800 at character 1; strings must be valid Unicode"),
        ('{"prompts": ["a", "b"], "responses": ["ok \\ud83d\\ude00", "\\udfff x"]}', 422,
         "responses[1]: lone surrogate U+DFFF at character 0; strings must be valid Unicode"),
    ]
    for body, status, message in cases:
        resp = httpx.post(f"{url}/predict", content=body.encode(), headers={"content-type": "application/json"},
                          timeout=30)
        assert (resp.status_code, resp.json()) == (status, {"error": message}), body[:40]
    # a surrogate pair is one valid character, and the server keeps serving
    ok = httpx.post(f"{url}/predict", json={"prompts": ["a"], "responses": ["ok \U0001F600"]}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1


@pytest.fixture(scope="module")
def token_url(scorer, serving):
    """A live server that requires a bearer token."""
    with serving(create_app(scorer, Limits(max_request=64, max_body_bytes=20_000), token="s3cret-token")) as base:
        yield base


def test_token_is_required_and_sent_by_the_hh_client(token_url, scorer, monkeypatch):
    from evaluation.tasks import hh

    body = {"prompts": ["a"], "responses": ["b"]}
    message = ("authorization: missing or wrong token; send the header 'Authorization: Bearer <token>' with the "
               "server's $REWARD_SERVER_TOKEN")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        resp = httpx.post(f"{token_url}/predict", json=body, headers=headers, timeout=30)
        assert (resp.status_code, resp.json()) == (401, {"error": message})
    good = httpx.post(f"{token_url}/predict", json=body, headers={"Authorization": "Bearer s3cret-token"}, timeout=30)
    assert good.json() == {"rewards": scorer.score(["a"], ["b"])}
    assert httpx.get(f"{token_url}/health", timeout=10).status_code == 200  # readiness probes need no token

    monkeypatch.setenv(hh.TOKEN_ENV, "s3cret-token")
    assert hh.request_rewards(PROMPTS[:2], RESPONSES[:2], url=f"{token_url}/predict") == scorer.score(
        PROMPTS[:2], RESPONSES[:2])
    monkeypatch.setenv(hh.TOKEN_ENV, "stale")
    with pytest.raises(hh.RewardServerError, match=r"refused the token \(HTTP 401.*set REWARD_SERVER_TOKEN"):
        hh.request_rewards(["a"], ["b"], url=f"{token_url}/predict", retries=3, backoff_s=0.01)


def test_a_client_that_disconnects_stops_the_scoring(tiny_rm_dir, serving):
    scorer = RewardScorer(str(tiny_rm_dir), ["cpu"], max_batch=1)
    forwards = []
    # each forward takes at least 10 ms, so the 400 take 4 s or more however fast the machine: the bound below then
    # measures the server's disconnect poll (0.2 s), not how many forwards of the tiny model fit into it
    def slow_forward(*_) -> None:  # a forward hook must return None (a value would replace the output)
        time.sleep(0.01)
        forwards.append(time.monotonic())

    scorer.replicas[0][0].register_forward_hook(slow_forward)
    n = 400
    body = json.dumps({"prompts": ["Tell me a story."] * n, "responses": ["Once upon a time " * 20] * n}).encode()
    with serving(create_app(scorer)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 60
            while len(forwards) < 3:  # scoring has started
                assert time.monotonic() < deadline, "scoring did not start"
                time.sleep(0.01)
        closed_at = len(forwards)
        # wait until no forward pass for a while (bounded): the old server went on to score all n pairs
        quiet_s = max(1.0, 10 * (forwards[-1] - forwards[0]) / (len(forwards) - 1))
        deadline = time.monotonic() + 180
        while time.monotonic() - forwards[-1] < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped_at = len(forwards)
        assert stopped_at - closed_at < n // 4, (closed_at, stopped_at)
        # and the server still answers the next client
        resp = httpx.post(f"{base}/predict", json={"prompts": ["a"], "responses": ["b"]}, timeout=30)
        assert resp.status_code == 200 and len(forwards) == stopped_at + 1


def test_serve_warns_when_bound_beyond_loopback_without_a_token(tiny_rm_dir, monkeypatch, capsys):
    import uvicorn

    from evaluation.reward_model import server

    binds = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: binds.append((self.config.host, self.config.port)))
    warning = ("warning: serving on 0.0.0.0:8899 without a token: anyone who can reach this address can use the "
               "server; set REWARD_SERVER_TOKEN (the clients send it too)\n")
    for host, token, err in [("0.0.0.0", None, warning), ("0.0.0.0", "t", ""), ("127.0.0.1", None, ""),
                             ("::1", None, ""), ("localhost", None, "")]:
        server.serve(str(tiny_rm_dir), host=host, port=8899, device="cpu", token=token)
        assert capsys.readouterr().err == err, host
    assert [h for h, _ in binds] == ["0.0.0.0", "0.0.0.0", "127.0.0.1", "::1", "localhost"]


def test_cli_serve_on_an_empty_or_corrupt_model_dir_is_one_line(tiny_rm_dir, tmp_path, capsys):
    import shutil

    from evaluation.reward_model.__main__ import main

    expected = "expected a directory written by `python -m evaluation.reward_model train`"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_config = tmp_path / "bad_config"
    shutil.copytree(tiny_rm_dir, bad_config)
    (bad_config / "config.json").write_text("{not json")
    cut_weights = tmp_path / "cut_weights"
    shutil.copytree(tiny_rm_dir, cut_weights)
    weights = (cut_weights / "model.safetensors").read_bytes()
    (cut_weights / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_rm_dir, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    cases = [
        (empty, f"--model {empty}: no config.json; {expected}"),
        (bad_config, f"--model {bad_config}: config.json is not valid JSON (Expecting property name enclosed in "
                     f"double quotes: line 1 column 2 (char 1)); {expected}"),
        (cut_weights, f"--model {cut_weights}: cannot load the reward model (SafetensorError: "),
        (no_tokenizer, f"--model {no_tokenizer}: no tokenizer (tokenizer.json or tokenizer_config.json); {expected}"),
    ]
    port = free_port()
    for model, message in cases:
        with pytest.raises(SystemExit) as exc:  # any other exception is a traceback
            main(["serve", "--model", str(model), "--port", str(port), "--device", "cpu"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"python -m evaluation.reward_model serve: error: {message}"), err
        assert err.rstrip().endswith(expected)
    with socket.socket() as s:  # nothing was left bound to the port
        s.bind(("127.0.0.1", port))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(") ")[-1].startswith("Z")  # a zombie has exited


def test_serve_exits_once_idle_and_requests_keep_it_up(tiny_rm_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with running_server(str(tiny_rm_dir), tmp_path / "serve.log", args=["--idle-exit-s", "2", "--log-level", "warning"],
                        env=env, ready_timeout_s=90) as server:
        health = server.url.removesuffix("/predict") + "/health"
        for _ in range(8):  # 4 s of requests, twice the idle limit
            assert httpx.get(health, timeout=2).status_code == 200
            time.sleep(0.5)
        deadline = time.monotonic() + 10
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.proc.poll() == 0
    assert "idle for 2 s: exiting" in (tmp_path / "serve.log").read_text()


def test_shared_server_is_started_once_reused_and_replaced_when_the_model_changes(tiny_rm_dir, tmp_path):
    import shutil

    from evaluation.reward_model.lifecycle import SharedServer, shared_server, shared_state_path, stop_shared_server

    model = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, model)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    kw = dict(env=env, idle_exit_s=60, ready_timeout_s=90, args=["--log-level", "warning"])
    shared_state_path(str(model)).write_text("{torn")  # a corrupt record is no server
    with shared_server(str(model), tmp_path / "a.log", token="t0k", **kw) as first:
        assert isinstance(first, SharedServer) and first.started
        body = {"prompts": PROMPTS[:2], "responses": RESPONSES[:2]}
        assert httpx.post(first.url, json=body, headers={"Authorization": "Bearer t0k"}, timeout=30).status_code == 200
    assert _alive(first.pid)  # the step is over, the server is not
    record = json.loads(shared_state_path(str(model)).read_text())
    assert record["pid"] == first.pid and "t0k" not in json.dumps(record)  # the token is never written down
    assert oct(shared_state_path(str(model)).stat().st_mode & 0o777) == "0o600"
    with shared_server(str(model), tmp_path / "b.log", token="t0k", **kw) as second:
        assert (second.started, second.pid, second.url) == (False, first.pid, first.url)
    (model / "config.json").touch()  # a retrained model: the old server goes, a new one serves the new files
    with shared_server(str(model), tmp_path / "c.log", token="t0k", **kw) as third:
        assert third.started and third.pid != first.pid
    assert not _alive(first.pid)
    assert not stop_shared_server(str(model), "another run's token")
    assert _alive(third.pid)
    assert stop_shared_server(str(model), "t0k") and not _alive(third.pid)
    assert not shared_state_path(str(model)).exists()
    assert not stop_shared_server(str(model), "t0k")  # nothing left to stop
