"""The paper's tables and figures, rebuilt from the results/ archive only: `python -m figures list|collect|compare|dists|NAME`.

Each artefact is one module with NAME, DESCRIPTION and `build(results, out_dir) -> [paths]`; adding a figure means
adding a module and its name to ARTEFACTS.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ARTEFACTS: tuple[str, ...] = ("table_final", "curves", "entropy_dynamics", "response_length", "figure1")


def artefact(name: str) -> ModuleType:
    """The module that builds artefact `name`; ValueError listing the valid names otherwise."""
    if name not in ARTEFACTS:
        raise ValueError(f"figure name: must be one of {', '.join(ARTEFACTS)}, got {name!r}")
    return importlib.import_module(f"figures.{name}")
