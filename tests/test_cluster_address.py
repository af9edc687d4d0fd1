"""A Ray cluster that is not there is reported in seconds, naming its address, before any work."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from project import make_project, run_stage

from components.config import RayConfig
from components.distributed import runner
from components.distributed.runner import OWN_CPUS_ENV, ClusterUnreachable, check_cluster, own_cpus, worker_resources


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


def test_a_job_spreads_over_the_cpus_of_a_ray_instance_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the stage's jobs run one at a time on a Ray instance of their own, a job with fewer workers
    than cores gives each worker an equal share (Ray sets torch's threads from it); on a cluster or a
    shared head, and for GPU workers, ``resources_per_worker`` as given."""
    one = RayConfig(num_workers=1)
    assert worker_resources(one, 2) == {"CPU": 2.0}
    assert worker_resources(one.model_copy(update={"num_workers": 2}), 2) == {"CPU": 1.0}
    assert worker_resources(one.model_copy(update={"num_workers": 3}), 2) == {"CPU": 1.0}  # never under the config
    assert worker_resources(one.model_copy(update={"num_workers": 2}), 16) == {"CPU": 8.0}
    assert worker_resources(one, None) == {"CPU": 1.0}
    gpu = RayConfig(num_workers=1, use_gpu=True, resources_per_worker={"CPU": 4, "GPU": 1})
    assert worker_resources(gpu, 16) == {"CPU": 4.0, "GPU": 1.0}

    monkeypatch.setattr(runner, "_OWN_INSTANCE", {})
    monkeypatch.delenv(OWN_CPUS_ENV, raising=False)
    assert own_cpus() is None  # attached, nobody said the head is ours
    monkeypatch.setenv(OWN_CPUS_ENV, "2")  # infra/local/with-ray's private head
    assert own_cpus() == 2
