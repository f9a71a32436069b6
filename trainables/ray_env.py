"""The environment of the local Ray cluster a launch starts: loopback only, token authentication kept.

Set by ``launch.py`` before Ray is imported (Ray reads these at import and at ``ray.init``); it
imports no Ray itself for that reason. A launch that joins a cluster (``--address`` or
``RAY_ADDRESS``) is left to Ray's own rules: with ``RAY_AUTH_MODE=token`` it sends the token of
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
import secrets

# Ray's single-machine mode (its default on macOS and Windows): the node takes the loopback address,
# so the GCS server, raylet, object manager, workers and runtime-env agent listen on 127.0.0.1 only.
# ``ray.init(_node_ip_address="127.0.0.1")`` does not: Ray replaces a loopback node address by the
# machine's routable one. Read once, when Ray is imported.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
TOKEN_BYTES = 32  # 256 bits, as Ray's own generated tokens


def joins_cluster(address: str | None) -> bool:
    """Whether ``ray.init(address=address)`` joins a running cluster rather than starting one."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def local_cluster_env(address: str | None) -> None:
    """Prepare this process's environment for the local cluster ``ray.init`` will start; nothing for a join.

    The cluster listens on loopback only, and keeps token authentication against other users of this
    machine: unless ``RAY_AUTH_MODE`` is set, a fresh token in ``RAY_AUTH_TOKEN``, which only this
    process and the Ray processes it starts see (Ray then writes no ``~/.ray/auth_token`` and prints no
    notice). Values the user set are kept. Call before Ray is imported.
    """
    if joins_cluster(address):
        return
    for name, value in LOOPBACK.items():
        os.environ.setdefault(name, value)
    if AUTH_MODE in os.environ:
        return
    os.environ[AUTH_MODE] = "token"
    if not (os.environ.get(AUTH_TOKEN) or os.environ.get(AUTH_TOKEN_PATH)):
        os.environ[AUTH_TOKEN] = secrets.token_hex(TOKEN_BYTES)
