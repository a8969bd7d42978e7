"""Atomic file writes and checked reads shared by every stage (no heavy imports, so the figure path stays light)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq


class BadFile(ValueError):
    """An input file that is missing or not in its format; the message names the input, the path and the problem."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, private: bool = False) -> None:
    """Write `data` to `path` through a temp file + rename, so readers never see half a file (`private`: 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if not private:
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs are read by other jobs and users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, private: bool = False) -> None:
    """Text version of atomic_write_bytes (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """obj as indented JSON (non-JSON values via str), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def replace_dir(new: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished directory `new` to `out`; an existing `out` (checked by the caller to be ours) goes last."""
    new, out = Path(new), Path(out)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        os.replace(out, old / out.name)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # Arrow repeats the path the caller already names: "Could not open Parquet input source '<path>': <why>"
    return line.split("': ", 1)[-1] if line.startswith("Could not open Parquet input source") else line


def _parquet_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise BadFile(f"{what}: no such file {str(path)!r}")
    if not path.is_file():
        raise BadFile(f"{what}: {str(path)!r} is a directory, not a parquet file")
    return path


def parquet_metadata(path: str | os.PathLike, what: str) -> "pq.FileMetaData":
    """A parquet file's footer (row count, schema), read without its data; BadFile when it is not parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _parquet_file(path, what)
    try:
        return pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadFile(f"{what}: {str(path)!r} is not a readable parquet file ({_first_line(exc)})") from None


def parquet_columns(path: str | os.PathLike, what: str) -> list[str]:
    """The top-level column names of a parquet file, from its footer only; BadFile when it is not parquet."""
    return list(parquet_metadata(path, what).schema.to_arrow_schema().names)


def read_parquet(path: str | os.PathLike, what: str, columns: Optional[Sequence[str]] = None,
                 filters: Any = None) -> "pa.Table":
    """A parquet file as an Arrow table; BadFile (naming `what`) when it is missing, corrupt or lacks `columns`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _parquet_file(path, what)
    if columns is not None:
        missing = [c for c in columns if c not in parquet_columns(path, what)]
        if missing:
            raise BadFile(f"{what}: {str(path)!r} lacks the column(s) {', '.join(missing)}")
    try:
        return pq.read_table(path, columns=None if columns is None else list(columns), filters=filters)
    except (pa.ArrowException, OSError) as exc:
        raise BadFile(f"{what}: {str(path)!r} is not a readable parquet file ({_first_line(exc)})") from None


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON file holding an object; BadFile (naming `what`) when it is missing, not JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadFile(f"{what}: no such file {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadFile(f"{what}: cannot read {str(path)!r} ({_first_line(exc)})") from None
    except json.JSONDecodeError as exc:
        raise BadFile(f"{what}: {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise BadFile(f"{what}: {str(path)!r} must hold a JSON object, got a {type(data).__name__}")
    return data
