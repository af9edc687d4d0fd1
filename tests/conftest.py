"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from servers import S3Server, ray_auth_env, ray_node, seaweedfs

#: The longest test files, longest first (CI's ``--durations``). `make test` runs two files at a
#: time (pytest-xdist, ``--dist loadfile --no-loadscope-reorder``, which keeps this order): started
#: first, they end near each other instead of one of them running alone at the end.
LONGEST_FIRST = ("test_pipeline_e2e.py", "test_containers.py", "test_experiments.py", "test_ray_stages.py", "test_ray_data.py",
                 "test_benchmarks.py", "test_rgb_pipeline.py", "test_infra.py", "test_model_registry.py",
                 "test_team_stack.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order

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
    """One Ray auth token and temp folder for every cluster, driver and ``ray.init()`` of this test session.

    Set in this process' environment, so that stage subprocesses inherit it; nothing is read from
    or written to ``~/.ray`` (a fresh machine has no token there).
    """
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_TMPDIR")}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(ray_auth_env(tmp_path_factory.mktemp("ray-auth")))
    # Ray's own /tmp/ray (local instances, and the `address="auto"` file) private to this session:
    # a second pytest worker's Ray is not found by "auto" (short: it holds unix sockets)
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    yield
    shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value



@pytest.fixture(scope="module")
def ray_node_env() -> dict[str, str]:
    """Extra environment for the module's Ray head, which its workers inherit: none by default; a
    module overrides this fixture where its workers need more (test_team_stack.py: S3 keys)."""
    return {}


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory, ray_node_env: dict[str, str]) -> Iterator[str]:
    """One local Ray head (2 CPUs) per test module, started and stopped as ``infra/local/with-ray``
    does (``servers.ray_node``); stages attach to it through ``RAY_ADDRESS``."""
    with ray_node(tmp_path_factory.mktemp("ray"), num_cpus=2, env=ray_node_env) as address:
        yield address


# --- end of infrastructure fixtures -------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: tiny test models on a shared 2-core box run ~10x faster than with two."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
