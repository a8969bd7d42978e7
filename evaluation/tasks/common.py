"""Shared data plumbing for the tasks: read sources, split, write verl RLHFDataset parquet files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable
from collections.abc import Iterable

import numpy as np

from common.files import atomic_write_bytes, read_parquet

SOURCE_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataUnavailable(RuntimeError):
    """The task's data cannot be obtained (no hub access and no local source); the message says how to get it."""


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a .jsonl / .json (list of objects) / .parquet file into a list of plain dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return read_parquet(path, "source").to_pylist()
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"source: file type must be one of {', '.join(SOURCE_SUFFIXES)}, got {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"source: {path} is not UTF-8 text") from None
    if suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"source: {path}:{lineno} is not valid JSON ({exc.msg})") from None
                if not isinstance(records[-1], dict):
                    raise ValueError(f"source: {path}:{lineno} must be a JSON object, got a {type(records[-1]).__name__}")
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"source: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"source: {path} must hold a JSON list of objects")
    return data


def split_file(directory: Path, split: str) -> Path | None:
    """The file for `split` inside a source directory (train.jsonl, test.parquet...), if any."""
    for suffix in SOURCE_SUFFIXES:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_source(task: str, source: str | Path | None, hub_id: str, splits: tuple[str, ...]) -> list[dict[str, Any]]:
    """The records of a task's source, all in one list: the hub's train split (source None or a hub id), a local file,
    or a local directory's `splits` files in order (train.jsonl, test.parquet...)."""
    if source is None or not is_local(source):
        return load_hub(task, str(source or hub_id), "train")
    path = Path(source)
    if not path.is_dir():
        return read_records(path)
    files = [split_file(path, split) for split in splits]
    if None in files:
        wanted = " and ".join(f"{split}.({'|'.join(s.lstrip('.') for s in SOURCE_SUFFIXES)})" for split in splits)
        raise ValueError(f"source: directory {str(path)!r} needs {wanted}")
    return [record for file in files for record in read_records(file)]


def is_local(source: str | Path) -> bool:
    """Whether `source` names a local file or directory (anything else is taken as a hub id)."""
    return Path(source).exists() or Path(source).suffix.lower() in SOURCE_SUFFIXES


def _env_flag(name: str) -> bool:
    """Whether environment variable `name` is set to a true value (1/ON/YES/TRUE)."""
    return os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub endpoint (HF_ENDPOINT honoured) answers at all."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True


def load_hub(task: str, hub_id: str, split: str) -> list[dict[str, Any]]:
    """Load one split of a Hugging Face hub dataset, turning any hub failure into DataUnavailable."""
    how = (
        f"run where the hub is reachable, or pass --source PATH (a .jsonl/.json/.parquet file, or a directory with "
        f"train.* and test.*), or set HF_HUB_OFFLINE=1 with {hub_id!r} in the HF cache"
    )
    offline = _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE")
    # Probe first: huggingface_hub would otherwise retry an unreachable hub for half a minute.
    if not offline and not hub_reachable():
        raise DataUnavailable(f"{task}: cannot reach the Hugging Face hub to load {hub_id!r}; {how}")
    try:
        import datasets

        return datasets.load_dataset(hub_id, split=split).to_list()
    except Exception as exc:  # offline, hub down, missing id: all mean "get the data another way"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataUnavailable(
            f"{task}: cannot load {hub_id!r} (split {split!r}) from the Hugging Face hub "
            f"({type(exc).__name__}: {first_line[:200]}); {how}"
        ) from None


def take(records: list[dict[str, Any]], start: int, size: int, *, what: str) -> list[dict[str, Any]]:
    """records[start:start+size], or a ValueError naming `what` when the source is too small."""
    if size < 0:
        raise ValueError(f"{what}: must be >= 0, got {size}")
    if start + size > len(records):
        raise ValueError(f"{what}: asked for {size} rows from offset {start}, but the source has {len(records)} rows")
    return records[start : start + size]


def hf_shuffle(records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Shuffle exactly like `datasets.Dataset.shuffle(seed=seed)` (a PCG64 permutation), without datasets."""
    permutation = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in permutation]


def build_rows(
    records: Iterable[dict[str, Any]], make_row: Callable[[dict[str, Any], str, int], dict[str, Any]], split: str
) -> list[dict[str, Any]]:
    """Apply a task's row builder to every record, numbering extra_info.index from 0."""
    return [make_row(record, split, index) for index, record in enumerate(records)]


def parquet_bytes(rows: list[dict[str, Any]], name: str) -> bytes:
    """verl RLHFDataset rows as the bytes of a parquet file (nested prompt / reward_model / extra_info columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"{Path(name).stem}-size: must be >= 1 to write {name}")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def write_dataset(out_dir: str | Path, train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]]) -> dict:
    """Write out_dir/train.parquet and out_dir/test.parquet; return their paths and row counts.

    Both files are built before either is written, and each is written atomically, so a bad split leaves an
    existing pair untouched.
    """
    out = Path(out_dir)
    files = {out / "train.parquet": parquet_bytes(train_rows, "train.parquet"),
             out / "test.parquet": parquet_bytes(test_rows, "test.parquet")}
    for path, data in files.items():
        atomic_write_bytes(path, data)
    return {
        "train": str(out / "train.parquet"),
        "test": str(out / "test.parquet"),
        "train_size": len(train_rows),
        "test_size": len(test_rows),
    }


def chat_prompt(content: str) -> list[dict[str, str]]:
    """One user turn, the prompt form verl applies the chat template to."""
    return [{"role": "user", "content": content}]
