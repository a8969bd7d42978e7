"""Fixtures shared by every test package."""
from __future__ import annotations

from typing import Any, Callable, ContextManager

import pytest


@pytest.fixture(scope="session")
def serving() -> Callable[[Any], ContextManager[str]]:
    """serving(app): runs an ASGI app under uvicorn in a thread on a free loopback port; yields its base URL."""
    from evaluation.reward_model.server import serving_in_thread

    return serving_in_thread
