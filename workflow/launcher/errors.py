"""The launcher's errors: on the driver (bad arguments, a failed job) and inside the job (the step failed)."""

from __future__ import annotations


class LaunchError(Exception):
    """A step was given bad arguments, could not be submitted, or failed."""


class JobFailed(LaunchError):
    """The submitted job ended without a result: the command failed, was killed or timed out."""


class StepFailed(RuntimeError):
    """The step's command exited non-zero inside the job."""
