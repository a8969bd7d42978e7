"""The verl 0.4.1 backend: run specs -> Hydra overrides, the external_lib plug-in, CPU shims, run directories.

    python -m tre.backend train --task T --size S --method M [--seed N] [--profile paper|tiny] [key=value ...]
    python -m tre.backend overrides --task T --size S --method M [--profile paper]

Importing this package does not import verl; the plug-in lives in `tre.backend.plugin` (loaded by verl itself).
"""

from tre.backend.profiles import PROFILES, RunSpec, SpecError, overrides

__all__ = ["PROFILES", "RunSpec", "SpecError", "overrides"]
