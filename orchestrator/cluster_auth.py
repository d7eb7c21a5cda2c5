"""Ray token authentication for clusters: which token a client of an address uses.

A multi-host cluster runs with ``RAY_AUTH_MODE=token``: every node and every client
(driver, Ray Client, Jobs HTTP) must present the cluster's token or is refused. Ray
reads the token from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``. A local fleet keeps its token in its work directory; a client of
one of its addresses gets that token automatically (and is told so). For any other
cluster the environment decides, as with Ray's own tools.

The embedded single-node Ray (loopback, this process's own) needs no token.
"""
from __future__ import annotations

import os

from orchestrator import fleet_state

TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def client_env(address: str | None) -> tuple[dict[str, str], str | None]:
    """Environment a client of ``address`` needs, and a line saying where its token came from."""
    if not address:
        return {}, None
    state = fleet_state.fleet_for_address(address)
    if state is None:
        return {}, None
    return ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state.token_path},
            f"using the token of fleet {state.name!r} ({state.token_path})")


def apply(address: str | None) -> str | None:
    """Put the token for ``address`` in this process's environment; returns the line to show."""
    env, note = client_env(address)
    if env:
        os.environ.pop("RAY_AUTH_TOKEN", None)  # Ray prefers it over the path: it would win
        os.environ.update(env)
    return note


def token(address: str | None) -> str | None:
    """The token this process would present to ``address`` (None: none configured)."""
    env, _ = client_env(address)
    env = {**os.environ, **env}
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    path = env.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None
