"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import S3Server, seaweedfs

# --- infrastructure fixtures (tests/servers.py) -------------------------------------------------
# One SeaweedFS S3 server per test session (~1 s to start, ~175 MB RSS); tests isolate themselves
# by creating their own buckets with ``s3_server.make_bucket(name)``.


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running S3 endpoint (SeaweedFS) accepting only ``S3Server.access_key``/``secret_key``."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


# --- end of infrastructure fixtures -------------------------------------------------------------
