"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import S3Server, ray_auth_env, seaweedfs

# --- infrastructure fixtures (tests/servers.py) -------------------------------------------------
# One SeaweedFS S3 server per test session (``infra/local/stack start s3``, ~1 s to start, ~175 MB
# RSS); tests isolate themselves by creating their own buckets with ``s3_server.make_bucket(name)``.


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running S3 endpoint (SeaweedFS) accepting only ``S3Server.access_key``/``secret_key`` (the
    keys the stack generated; its state and logs stay in the session's tmp folder)."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(autouse=True, scope="session")
def ray_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Ray auth token for every cluster, driver and ``ray.init()`` of this test session.

    Set in this process' environment, so that stage subprocesses inherit it; nothing is read from
    or written to ``~/.ray`` (a fresh machine has no token there).
    """
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(ray_auth_env(tmp_path_factory.mktemp("ray-auth")))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --- end of infrastructure fixtures -------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: tiny test models on a shared 2-core box run ~10x faster than with two."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
