"""TRE: trust-region entropy for PPO on LLMs; the kernel and (in tre.backend) the verl integration.

The kernel (torch) loads on first use, so that torch-free parts such as `python -m tre.backend overrides` stay fast.
"""

import importlib

__all__ = ["trust_region_entropy", "trust_region_stats"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'tre' has no attribute {name!r}")
    value = getattr(importlib.import_module("tre.kernel"), name)
    globals()[name] = value
    return value
