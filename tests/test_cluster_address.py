"""A Ray cluster that is not there is reported in seconds, naming its address, before any work."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from project import make_project, run_stage

from components.config import RayConfig
from components.distributed.runner import ClusterUnreachable, check_cluster


def dead_address() -> str:
    """host:port on loopback where nothing listens (a port just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return f"127.0.0.2:{sock.getsockname()[1]}"


@pytest.mark.parametrize("prefix", ["", "ray://"])
def test_check_cluster_names_a_dead_address(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    address = prefix + dead_address()
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ClusterUnreachable, match=f"no Ray cluster at {address} "):
        check_cluster(RayConfig())


def test_check_cluster_accepts_a_listening_head_and_skips_local(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.2", 0))
        server.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.2:{server.getsockname()[1]}")
        check_cluster(RayConfig())
    for address in ("auto", "local"):
        monkeypatch.setenv("RAY_ADDRESS", address)
        check_cluster(RayConfig())
    monkeypatch.setenv("RAY_ADDRESS", "no-port-here")
    with pytest.raises(ClusterUnreachable, match="is not host:port"):
        check_cluster(RayConfig())


def test_train_stage_reports_a_dead_head_in_seconds(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    address = dead_address()
    # ray.init alone would retry for minutes: the timeout makes that a failure, not a hang
    run = run_stage(project, "train", "--model", "gan", tracking="local", env={"RAY_ADDRESS": address}, check=False,
                    timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: no Ray cluster at {address} ")
    assert not (project / "models" / "gan").exists()
