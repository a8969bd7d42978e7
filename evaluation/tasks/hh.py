"""HH (UltraFeedback-binarized prompts scored by a reward-model server): data preparation and the HTTP reward client."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from evaluation.tasks import common

NAME = "hh"
DATA_SOURCE = "hh"
HUB_ID = "trl-lib/ultrafeedback_binarized"
VAL_METRIC = f"val-core/{DATA_SOURCE}/reward/mean@1"
MAX_RESPONSE_LENGTH = 1024
ABILITY = "alignment"
FIXTURE = Path(__file__).parent / "fixtures" / "ultrafeedback.jsonl"
SHUFFLE_SEED = 42

URL_ENV = "REWARD_SERVER_URL"
TOKEN_ENV = "REWARD_SERVER_TOKEN"  # shared secret: the server requires it, the client sends it as a Bearer token
DEFAULT_URL = "http://127.0.0.1:8888/predict"
CHUNK_SIZE = 256
TIMEOUT_S = 120.0
RETRIES = 5
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0


# ---------------------------------------------------------------- data


def user_prompt(record: dict[str, Any], where: str) -> str:
    """The user text of a preference record: `chosen[0].content`, as the authors take it."""
    chosen = record.get("chosen")
    if not isinstance(chosen, list) or not chosen or not isinstance(chosen[0], dict):
        raise ValueError(f"chosen: {where} needs 'chosen' as a list of chat messages")
    first = chosen[0]
    if first.get("role") != "user" or not isinstance(first.get("content"), str):
        raise ValueError(f"chosen: {where} must start with a user message with string content")
    return first["content"]


def chosen_response(record: dict[str, Any], where: str) -> str:
    """The preferred assistant reply of a preference record: `chosen[1].content`."""
    chosen = record["chosen"]
    if len(chosen) < 2 or not isinstance(chosen[1], dict) or chosen[1].get("role") != "assistant" \
            or not isinstance(chosen[1].get("content"), str):
        raise ValueError(f"chosen: {where} needs an assistant reply with string content after the user message")
    return chosen[1]["content"]


def make_row(record: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    """One verl RLHFDataset row: the user turn as prompt, and as ground truth for the reward model; the preferred
    reply rides along in extra_info (the warm start's demonstration; the reward never sees it)."""
    where = f"row {index} of {split}"
    prompt = user_prompt(record, where)
    return {
        "data_source": DATA_SOURCE,
        "prompt": common.chat_prompt(prompt),
        "ability": ABILITY,
        "reward_model": {"style": "model", "ground_truth": {"prompt": prompt}},
        "extra_info": {"split": split, "index": index, "chosen": chosen_response(record, where)},
    }


def demonstration(row: dict[str, Any], *, plain: bool = False) -> str:
    """The preferred reply of a prepared row (the warm start's target response); HH has no answer format to slip."""
    if plain:
        raise ValueError("plain: HH replies have no format to slip; warm-start HH with plain_fraction 0")
    return row["extra_info"]["chosen"]


def load_records(source: str | None) -> list[dict[str, Any]]:
    """All preference records of the hub's train split or of a local file (directory: its train.*)."""
    return common.load_source(NAME, source, HUB_ID, ("train",))


def prepare(
    out_dir: str | Path,
    *,
    source: str | None = None,
    train_size: int = 7500,
    test_size: int = 5000,
    seed: int = SHUFFLE_SEED,
) -> dict:
    """Write HH train/test parquet: the source shuffled with `seed` (datasets' permutation), then split in order."""
    records = common.hf_shuffle(load_records(source), seed)
    train = common.take(records, 0, train_size, what="train-size")
    test = common.take(records, train_size, test_size, what="test-size")
    result = common.write_dataset(
        out_dir, common.build_rows(train, make_row, "train"), common.build_rows(test, make_row, "test")
    )
    return {"task": NAME, "source": source or HUB_ID, **result}


# ---------------------------------------------------------------- reward client


class RewardServerError(RuntimeError):
    """The reward-model server could not score a batch; the message names the URL."""


def server_url() -> str:
    """The reward server's /predict URL from env REWARD_SERVER_URL (default http://127.0.0.1:8888/predict)."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def auth_headers() -> dict[str, str]:
    """The Authorization header carrying env REWARD_SERVER_TOKEN, or none when it is unset."""
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _parse_rewards(payload: Any, expected: int, url: str) -> list[float]:
    """The `rewards` list of a server reply, checked for length and finiteness."""
    rewards = payload.get("rewards") if isinstance(payload, dict) else None
    if not isinstance(rewards, list) or len(rewards) != expected:
        raise RewardServerError(f"reward server {url}: reply must be {{\"rewards\": [{expected} numbers]}}, "
                                f"got {str(payload)[:200]}")
    values = []
    for reward in rewards:
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise RewardServerError(f"reward server {url}: reward {reward!r} is not a finite number")
        values.append(float(reward))
    return values


def _post_chunk(
    client, url: str, prompts: list[str], responses: list[str], *, retries: int, backoff_s: float
) -> list[float]:
    """POST one chunk, retrying transport errors and 5xx/429 replies with exponential backoff."""
    import httpx

    last = ""
    for attempt in range(1, retries + 1):
        try:
            reply = client.post(url, json={"prompts": prompts, "responses": responses})
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if reply.status_code == 200:
                try:
                    payload = reply.json()
                except ValueError:
                    raise RewardServerError(f"reward server {url}: reply is not JSON: {reply.text[:200]!r}") from None
                return _parse_rewards(payload, len(prompts), url)
            last = f"HTTP {reply.status_code}: {reply.text[:200]}"
            if reply.status_code in (401, 403):
                raise RewardServerError(f"reward server {url} refused the token ({last}); set {TOKEN_ENV} to the "
                                        f"server's token")
            if reply.status_code < 500 and reply.status_code != 429:
                raise RewardServerError(f"reward server {url} rejected the request ({last})")
        if attempt < retries:
            time.sleep(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
    raise RewardServerError(f"reward server {url} failed after {retries} attempts ({last}); "
                            f"is it running? (set {URL_ENV} to its /predict URL)")


def request_rewards(
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    url: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    timeout_s: float = TIMEOUT_S,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
) -> list[float]:
    """Reward-model scores of (prompt, response) pairs from the server, in chunks of `chunk_size`."""
    import httpx

    if len(prompts) != len(responses):
        raise ValueError(f"responses: need one response per prompt, got {len(responses)} for {len(prompts)} prompts")
    if chunk_size < 1 or retries < 1:
        raise ValueError(f"chunk_size/retries: must be >= 1, got {chunk_size}/{retries}")
    url = url or server_url()
    rewards: list[float] = []
    with httpx.Client(timeout=timeout_s, headers=auth_headers()) as client:
        for start in range(0, len(prompts), chunk_size):
            rewards += _post_chunk(
                client,
                url,
                [str(p) for p in prompts[start : start + chunk_size]],
                [str(r) for r in responses[start : start + chunk_size]],
                retries=retries,
                backoff_s=backoff_s,
            )
    return rewards


def _prompt_of(ground_truth: Any) -> str:
    """The prompt text stored as an HH ground truth ({'prompt': text})."""
    if isinstance(ground_truth, dict) and isinstance(ground_truth.get("prompt"), str):
        return ground_truth["prompt"]
    raise ValueError(f"ground_truth: HH needs {{'prompt': str}}, got {ground_truth!r:.200}")


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    **client_kwargs: Any,
) -> list[float]:
    """verl `batch` reward manager entry point: raw reward-model scores of every response to its prompt."""
    del data_sources, extra_infos  # every item is scored the same way, by the server
    prompts = [_prompt_of(ground_truth) for ground_truth in ground_truths]
    return request_rewards(prompts, list(solution_strs), **client_kwargs)


def score(solution_str: str, ground_truth: Any) -> float:
    """Reward-model score of one response (one HTTP request)."""
    return request_rewards([_prompt_of(ground_truth)], [solution_str])[0]
