"""Real local servers for tests: SeaweedFS (S3), PostgreSQL and an MLflow tracking server.

Every server binds 127.0.0.1 on free ports, keeps its state under a caller-given folder and is
stopped (and waited for) when its context manager exits, so several test sessions can run side
by side on one machine without sharing ports or state.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGION = "us-east-1"
STACK_SCRIPT = Path(__file__).resolve().parents[1] / "infra" / "local" / "stack"


def free_port() -> int:
    """Ask the kernel for a TCP port that is free on 127.0.0.1 right now.

    Returns:
        A port number; another process may still take it before the caller binds it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_tool(name: str) -> str:
    """Find an executable beside this interpreter (the project venv) first, then on PATH.

    Args:
        name: executable name, e.g. ``weed`` or ``mlflow``.

    Returns:
        Absolute path of the executable.

    Raises:
        FileNotFoundError: when it is in neither place.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} or on PATH")
    return found


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a server's log, for an error message ("" without a log)."""
    if path is None or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    return f"\nlast lines of {path}:\n" + "\n".join(text)


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    """Poll ``check`` until it returns True.

    Args:
        check: returns True when the server is ready; exceptions count as "not yet".
        timeout: seconds to wait in total.
        what: name used in the error message.
        proc: the server process; if it exits early we fail at once instead of waiting.
        log: the server's log, whose last lines go into the error.

    Raises:
        TimeoutError: ``check`` never succeeded in time.
        RuntimeError: ``proc`` exited before becoming ready.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited early with code {proc.returncode}{log_tail(log)}")
        try:
            if check():
                return
        except Exception as err:  # noqa: BLE001 - any failure just means "not ready yet"
            last_error = err
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last_error!r}){log_tail(log)}")


def stop_process(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it if still alive after ``grace`` seconds.

    The process must have been started with ``start_new_session=True`` so its group holds only
    it and its children (uvicorn workers, for instance) and nothing of ours.

    Args:
        proc: the process to stop.
        grace: seconds between SIGTERM and SIGKILL.
    """
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _http_status(url: str) -> int:
    """Return the HTTP status of a GET on ``url`` (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


# --------------------------------------------------------------------------------------------
# S3 (SeaweedFS)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    """Connection details of a running S3 endpoint.

    Attributes:
        endpoint_url: e.g. ``http://127.0.0.1:40123``.
        access_key: the only access key the server accepts.
        secret_key: its secret.
    """

    endpoint_url: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        """Return a boto3 S3 client for this server (region us-east-1)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error if this server already has it)."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """Return the environment variables that point boto3, DVC and MLflow at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }


def write_s3_config(path: Path, access_key: str, secret_key: str) -> None:
    """Write a SeaweedFS ``s3.json`` with one identity, so any other key is rejected.

    Args:
        path: file to write.
        access_key: the accepted access key.
        secret_key: its secret.
    """
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    path.write_text(json.dumps({"identities": [identity]}, indent=2))


def weed_mini_command(datadir: Path, config: Path, s3_port: int) -> list[str]:
    """Build the ``weed mini`` command line: everything on 127.0.0.1, every port free.

    ``weed mini`` runs master, volume, filer, S3 and admin servers in one process, each with an
    HTTP and a gRPC port (gRPC defaults to HTTP + 10000). We set all of them explicitly so that
    parallel test sessions never collide, and switch off what we do not use.

    Args:
        datadir: folder for SeaweedFS data and its unix sockets.
        config: the ``s3.json`` identity file.
        s3_port: the S3 HTTP port.

    Returns:
        The argv list.
    """
    ports = {
        "master.port": free_port(), "master.port.grpc": free_port(),
        "volume.port": free_port(), "volume.port.grpc": free_port(),
        "filer.port": free_port(), "filer.port.grpc": free_port(),
        "s3.port": s3_port, "s3.port.grpc": free_port(),
        "admin.port": free_port(), "admin.port.grpc": free_port(),
    }  # fmt: skip
    return [
        find_tool("weed"), "mini",
        f"-dir={datadir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={config}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        f"-filer.localSocket={datadir / 'filer.sock'}", f"-s3.localSocket={datadir / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip


@contextmanager
def seaweedfs(workdir: Path, access_key: str = "testkey", secret_key: str = "testsecret") -> Iterator[S3Server]:
    """Run a SeaweedFS S3 server (``weed mini``) for the duration of the block.

    Args:
        workdir: folder for data, config and log (created if missing).
        access_key: the only accepted access key.
        secret_key: its secret.

    Yields:
        The running server's connection details.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    datadir = workdir / "data"
    datadir.mkdir(exist_ok=True)
    config = workdir / "s3.json"
    write_s3_config(config, access_key, secret_key)
    port = free_port()
    server = S3Server(f"http://127.0.0.1:{port}", access_key, secret_key)
    with open(workdir / "weed.log", "ab") as log:
        proc = subprocess.Popen(
            weed_mini_command(datadir, config, port),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        # An authenticated listing proves both that S3 is up and that the identity file is loaded.
        wait_until(lambda: server.client().list_buckets() is not None, 60, "SeaweedFS S3", proc,
                   log=workdir / "weed.log")
        yield server
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------------------------
# PostgreSQL (Debian package)
# --------------------------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    """Locate a PostgreSQL server binary (``initdb``, ``pg_ctl``) of the newest installed version."""
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise FileNotFoundError(f"{name}: install PostgreSQL (apt-get install -y postgresql)")
    return str(candidates[-1])


def _as_postgres(argv: list[str]) -> list[str]:
    """Prefix ``argv`` so it runs as user ``postgres`` when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """Run a throw-away PostgreSQL server for the duration of the block.

    As root the cluster runs as user ``postgres``; pytest's tmp folders are private to root, so
    then the data folder lives in its own ``/tmp/pg-*`` folder owned by ``postgres`` instead of
    under ``workdir`` (which only receives the log).

    Args:
        workdir: folder for the log (and the data when not root).

    Yields:
        A DSN ``postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="pg-")) if root else workdir / "pg"
    base.mkdir(exist_ok=True)
    datadir, pwfile = base / "data", base / "pwfile"
    password, port = secrets.token_hex(12), free_port()
    pwfile.write_text(password + "\n")
    if root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")

    def run(argv: list[str]) -> None:
        done = subprocess.run(_as_postgres(argv), check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stdout}{done.stderr}"
                               f"{log_tail(log)}")

    log, pg_ctl = base / "postgres.log", postgres_bin("pg_ctl")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {datadir}"
    try:
        run([postgres_bin("initdb"), "-D", str(datadir), "-U", "postgres", "--pwfile", str(pwfile),
             "--auth-local=trust", "--auth-host=scram-sha-256"])  # fmt: skip
        run([pg_ctl, "-D", str(datadir), "-o", options, "-l", str(log), "-w", "-t", "60", "start"])
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        stop = _as_postgres([pg_ctl, "-D", str(datadir), "-m", "fast", "-w", "stop"])
        subprocess.run(stop, check=False, capture_output=True)
        if log.exists():
            shutil.copyfile(log, workdir / "postgres.log")
        if root:
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# MLflow tracking server
# --------------------------------------------------------------------------------------------


@contextmanager
def mlflow_server(
    workdir: Path, backend_uri: str, artifacts_destination: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run ``mlflow server`` (one worker, no job-execution helpers) for the duration of the block.

    Args:
        workdir: folder for the log (created if missing).
        backend_uri: e.g. ``sqlite:///PATH/mlflow.db`` or ``postgresql+psycopg2://USER:PW@HOST:PORT/DB``.
        artifacts_destination: e.g. a local folder or ``s3://mlflow/artifacts``.
        env: extra environment for the server (for S3 artifacts: ``S3Server.env()``).

    Yields:
        The tracking URI, ``http://127.0.0.1:PORT``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    # Without this flag MLflow 3.17 starts job-runner helpers that survive SIGTERM.
    full_env = {**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    argv = [
        find_tool("mlflow"), "server", "--backend-store-uri", backend_uri,
        "--artifacts-destination", artifacts_destination,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with open(workdir / "mlflow.log", "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: _http_status(f"{uri}/health") == 200, 90, "MLflow server", proc, log=workdir / "mlflow.log")
        yield uri
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------- Ray
HEAD_IP = "127.0.0.2"
WORKER_IP = "127.0.0.3"


def ray_auth_env(folder: Path) -> dict[str, str]:
    """Ray's token authentication for the clusters tests start: a token file of their own.

    Ray 2.60 turns token auth on and `ray start --head` does not create a token (only ``ray.init()``
    does, in ~/.ray): without this, a head started on a fresh machine stops with
    ``AuthenticationError``. Every node and driver of one cluster must read the same file.

    Args:
        folder: where the token file goes (created if missing; reused when already there).

    Returns:
        ``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN_PATH`` for the nodes' and drivers' environment.
    """
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "ray_auth_token"
    if not token.exists():
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@contextmanager
def ray_node(workdir: Path, num_cpus: int, head_address: str | None = None, node_ip: str = HEAD_IP,
             env: dict[str, str] | None = None) -> Iterator[str]:
    """A Ray node in the foreground (``ray start --block``) that we stop ourselves.

    ``ray stop`` would stop every Ray process of this user; here exactly what this context
    started is stopped (its process group), and the head keeps its state in a private temp dir.

    Args:
        workdir: folder for the node's logs (the head's temp dir goes under /tmp: socket paths are short).
        num_cpus: CPUs the node advertises.
        head_address: None starts a head; ``host:port`` joins that head as a worker node.
        node_ip: the node's address. Each node gets its own loopback address (127.0.0.2, 127.0.0.3, ...):
            Ray rewrites "127.0.0.1" to the machine's network address, the others it leaves alone, so
            all traffic stays on loopback. Drivers pass ``RAY_NODE_IP_ADDRESS=HEAD_IP``.
        env: extra environment for the node; its workers inherit it. This is how secrets (S3 keys
            for ``s3://`` checkpoint storage) reach workers: never through runtime_env, which Ray logs.
            The token comes from ``RAY_AUTH_TOKEN_PATH`` here or in the test process' environment
            (conftest.py sets one for the session, see ``ray_auth_env``).

    Yields:
        The head's address ``127.0.0.1:PORT``.
    """
    ray = find_tool("ray")
    env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    if "RAY_AUTH_TOKEN_PATH" not in env and "RAY_AUTH_TOKEN" not in env:
        raise RuntimeError("ray_node needs RAY_AUTH_TOKEN_PATH (see ray_auth_env): a fresh machine has no token")
    if head_address is None:
        port = free_port()
        address = f"{node_ip}:{port}"
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        cmd = [ray, "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
               f"--node-ip-address={node_ip}", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={temp_dir}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
    else:
        address, temp_dir = head_address, None
        cmd = [ray, "start", "--block", f"--address={head_address}", f"--num-cpus={num_cpus}", "--num-gpus=0",
               f"--node-ip-address={node_ip}", f"--node-manager-port={free_port()}",
               f"--object-manager-port={free_port()}", "--disable-usage-stats"]
    log_path = workdir / f"ray-{'head' if head_address is None else 'worker'}-{time.time_ns()}.log"
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for_ray(address, proc, expected_cpus=None if head_address is None else num_cpus, env=env, log=log_path)
        yield address
    finally:
        _stop_group(proc)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_ray(address: str, proc: subprocess.Popen, expected_cpus: int | None, env: dict, log: Path) -> None:
    status = [find_tool("ray"), "status", f"--address={address}"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}{log_tail(log)}")
        out = subprocess.run(status, check=False, capture_output=True, text=True, env=env)
        if out.returncode == 0 and (expected_cpus is None or out.stdout.count("node_") >= 2):
            return
        time.sleep(1)
    raise TimeoutError(f"Ray node for {address} not ready in 90 s{log_tail(log)}")


def _stop_group(proc: subprocess.Popen, grace_s: float = 5) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the node process
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


# --------------------------------------------------------------------------- infra/local/stack
def _port_pair() -> tuple[int, int]:
    """A free port p whose gRPC twin p + 10000 is free too (SeaweedFS' convention)."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port, port + 10000
    raise RuntimeError("no free port pair")


@contextmanager
def local_stack_env() -> Iterator[dict[str, str]]:
    """Environment for ``infra/local/stack`` with a private state folder and free ports; stops the
    stack (if a test started it) and removes the folder afterwards."""
    # Not under pytest's tmp_path: as root, PostgreSQL runs as user postgres, which must be able
    # to traverse the state folder's parents (pytest's are private to root).
    state = Path(tempfile.mkdtemp(prefix="stack-test-"))
    state.chmod(0o755)
    env = {**os.environ, "STACK_DIR": str(state / "stack"), "STACK_WEED_GRPC_OFFSET": "10000"}
    for var in ("STACK_S3_PORT", "STACK_WEED_MASTER_PORT", "STACK_WEED_VOLUME_PORT", "STACK_WEED_FILER_PORT",
                "STACK_WEED_ADMIN_PORT"):  # fmt: skip
        env[var] = str(_port_pair()[0])
    env["STACK_PG_PORT"], env["STACK_MLFLOW_PORT"] = str(free_port()), str(free_port())
    try:
        yield env
    finally:
        subprocess.run([str(STACK_SCRIPT), "stop"], check=False, env=env, capture_output=True, timeout=60)
        shutil.rmtree(state, ignore_errors=True)
