"""Fixtures shared by every test package."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator

import pytest

from common.processes import free_port


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serving() -> Callable[[Any], ContextManager[str]]:
    """serving(app): runs an ASGI app under uvicorn in a thread on a free loopback port; yields its base URL."""
    return _serving
