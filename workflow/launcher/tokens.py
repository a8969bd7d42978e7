"""The launch's shared secret and the secrets derived from it.

It reaches the job through the environment (Slurm exports the submitter's), never through submitit's pickles,
job.json or a log; the reward server's token, Ray's token and the rendezvous MACs come from it."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from workflow.launcher.errors import StepFailed

TOKEN_ENV = "TRE_LAUNCH_TOKEN"


def ensure_launch_token() -> None:
    """Generate this launch's secret unless the workflow exported one (the job inherits the environment)."""
    os.environ.setdefault(TOKEN_ENV, secrets.token_hex(32))


def launch_token() -> str:
    """This job's launch secret from env TRE_LAUNCH_TOKEN (set by `launch` on the submitting side)."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise StepFailed(f"{TOKEN_ENV} is not set in the job; submit it with `python -m workflow.launcher run`")
    return token


def derived_secret(token: str, purpose: str) -> str:
    """A secret for one purpose (Ray's cluster token, ...) derived from the launch token."""
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def reward_token() -> str:
    """The reward server's token for this launch (of server and client), derived from the launch token."""
    return derived_secret(launch_token(), "reward-server")


def child_environ() -> dict[str, str]:
    """This process's environment less the launch token: commands and servers get only what derives from it."""
    return {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
