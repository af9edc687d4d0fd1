"""Real local servers for tests, started by the project's own scripts.

The team stack's services (PostgreSQL, SeaweedFS S3, MLflow) come from ``infra/local/stack``, Ray
nodes from the functions of ``infra/local/with-ray``: the tests run what a user runs, and no server
flag lives here. Every server binds loopback on free ports, keeps its state in a private folder and
is stopped (and waited for) when its context manager exits, so several test sessions can run side
by side on one machine without sharing ports or state.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REGION = "us-east-1"
STACK_SCRIPT = Path(__file__).resolve().parents[1] / "infra" / "local" / "stack"
WITH_RAY_SCRIPT = STACK_SCRIPT.with_name("with-ray")


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


def _load_with_ray() -> ModuleType:
    """``infra/local/with-ray`` as a module: the tests start and stop Ray nodes with its functions."""
    loader = importlib.machinery.SourceFileLoader("with_ray", str(WITH_RAY_SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("with_ray", loader))
    loader.exec_module(module)
    return module


with_ray = _load_with_ray()
#: The one way these helpers stop a server they started: SIGTERM its process group, SIGKILL what is left.
stop_process = with_ray.stop_group


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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Server:
        """The server an environment points at (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...)."""
        return cls(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])

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


def stack(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``infra/local/stack ARGS`` with ``env`` (from ``local_stack_env``); output captured."""
    return subprocess.run([str(STACK_SCRIPT), *args], check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)


def stack_exports(env: dict[str, str]) -> dict[str, str]:
    """What ``eval "$(infra/local/stack env)"`` would set: ``{name: value}``."""
    exported = stack(env, "env", timeout=30)
    if exported.returncode != 0:
        raise RuntimeError(f"infra/local/stack env failed: {exported.stderr.strip()}")
    return dict(re.findall(r"^export (\w+)=(\S+)$", exported.stdout, re.MULTILINE))


@contextmanager
def local_stack_env(folder: Path | None = None) -> Iterator[dict[str, str]]:
    """Environment for ``infra/local/stack`` with a private state folder and free ports; stops the
    stack (what a test started of it) afterwards.

    Args:
        folder: the state folder's parent, kept afterwards (e.g. a pytest tmp folder: its logs stay
            there). None: a fresh ``/tmp/stack-test-*``, removed afterwards; PostgreSQL needs that
            as root, since it runs as user postgres, which must traverse the state folder's parents
            (pytest's are private to root).
    """
    state = Path(tempfile.mkdtemp(prefix="stack-test-")) if folder is None else folder
    state.chmod(0o755)
    env = {**os.environ, "STACK_DIR": str(state / "stack"), "STACK_WEED_GRPC_OFFSET": "10000"}
    for var in ("STACK_S3_PORT", "STACK_WEED_MASTER_PORT", "STACK_WEED_VOLUME_PORT", "STACK_WEED_FILER_PORT",
                "STACK_WEED_ADMIN_PORT"):  # fmt: skip
        env[var] = str(_port_pair()[0])
    env["STACK_PG_PORT"], env["STACK_MLFLOW_PORT"] = str(free_port()), str(free_port())
    try:
        yield env
    finally:
        stack(env, "stop", timeout=60)
        if folder is None:
            shutil.rmtree(state, ignore_errors=True)


@contextmanager
def local_stack(*services: str, folder: Path | None = None) -> Iterator[dict[str, str]]:
    """Start ``services`` (postgres, s3, mlflow; none: all three) with ``infra/local/stack start``.

    Args:
        services: what to start; the script adds what they need (mlflow needs the other two).
        folder: see ``local_stack_env``.

    Yields:
        What ``infra/local/stack env`` exports (tracking URI and credentials, S3 endpoint and keys).
    """
    with local_stack_env(folder) as env:
        started = stack(env, "start", *services)
        if started.returncode != 0:
            raise RuntimeError(f"infra/local/stack start {' '.join(services)} failed ({started.returncode}):\n"
                               f"{started.stdout}{started.stderr}")
        yield stack_exports(env)


@contextmanager
def seaweedfs(folder: Path | None = None) -> Iterator[S3Server]:
    """The stack's SeaweedFS S3 alone (``infra/local/stack start s3``), for the duration of the block.

    It accepts one identity only, the keys the stack generated into its credentials file (any other
    key is rejected); the yielded ``S3Server`` carries them.

    Args:
        folder: see ``local_stack_env``.
    """
    with local_stack("s3", folder=folder) as exported:
        yield S3Server.from_env(exported)


# --------------------------------------------------------------------------- Ray
HEAD_IP = with_ray.HEAD_IP
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
    token = folder / "auth_token"
    if not token.exists():
        with_ray.write_token(str(folder))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@contextmanager
def ray_node(workdir: Path, num_cpus: int, head_address: str | None = None, node_ip: str = HEAD_IP,
             env: dict[str, str] | None = None, hide: Path | None = None) -> Iterator[str]:
    """A Ray node started as ``infra/local/with-ray`` starts its head, and stopped the same way.

    ``ray stop`` would stop every Ray process of this user; here exactly what this context
    started is stopped (its process group), and a head keeps its state in a private temp dir.

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
        hide: a folder this node and its workers must not see, as on a second machine: the node
            runs in a mount namespace of its own with an empty tmpfs over it (needs root).

    Yields:
        The head's address ``host:port``.
    """
    base = {**os.environ, **(env or {})}
    if "RAY_AUTH_TOKEN_PATH" not in base:
        raise RuntimeError("ray_node needs RAY_AUTH_TOKEN_PATH (see ray_auth_env): a fresh machine has no token")
    node_env = with_ray.node_env(base["RAY_AUTH_TOKEN_PATH"], base)
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp") if head_address is None else None
    log = workdir / f"ray-{'head' if head_address is None else 'worker'}-{time.time_ns()}.log"
    under = [] if hide is None else [
        "unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs hidden "$0" && exec "$@"', str(hide)]
    node, address = with_ray.start_node(str(log), node_env, num_cpus, node_ip, head_address, temp_dir, under)
    try:
        with_ray.wait_ready(address, node, str(log), node_env, min_nodes=0 if head_address is None else 2)
        yield address
    finally:
        stop_process(node)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
