"""Static and live checks of the launch infrastructure.

Static: the Dockerfile lints clean and is built the way the project needs; every image anywhere
(Dockerfile, compose, ``ray up`` config, rendered Kubernetes manifests) is pinned by digest and
the project image is one reference everywhere; both kustomize overlays render offline, their
core objects pass kubernetes-validate --strict and the RayJob passes the KubeRay CRD schema with
unknown fields rejected. Live: ``infra/local/stack`` really starts PostgreSQL, SeaweedFS and
MLflow and stops them again; ``infra/run-pipeline`` runs and pushes a tiny DVC project.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from copy import deepcopy
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import botocore.exceptions
import jsonschema
import kubernetes_validate
import pytest
import yaml
from servers import S3Server, find_tool, local_stack_env

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "infra/compose/docker-compose.yml"
CLUSTER = ROOT / "infra/ray/cluster.yaml"
K8S = ROOT / "infra/k8s"
OVERLAYS = ("cpu-smoke", "gpu")
# KubeRay CRDs (ray.io/v1, v1.7 line): vendored under infra/k8s/crds if the repository has them,
# else $KUBERAY_CRDS, else the shared/ folder handed out beside the checkout (CI has it too).
CRDS = next(
    (p for p in (ROOT / "infra/k8s/crds", Path(os.environ.get("KUBERAY_CRDS", "/nonexistent")),
                 ROOT.parent / "shared/schemas/kuberay") if (p / "ray.io_rayjobs.yaml").exists()),
    None,
)  # fmt: skip
IMAGES_ENV = ROOT / "infra/images.env"
#: The one project image reference allowed without a digest: the gpu flavour, never built yet.
UNBUILT_GPU = "ghcr.io/genmodels/pipeline:gpu"
K8S_VERSION = "1.37.0"

PINNED = re.compile(r"^[a-z0-9][a-z0-9._\-/:]*@sha256:[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------
# helpers: collecting image references
# ---------------------------------------------------------------------------------------------


def dockerfile_from_images(text: str) -> list[str]:
    """Return the image of each FROM line (``${ARG}`` resolved to its default), skipping earlier stages."""
    stages: set[str] = set()
    images = []
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text.split("\nFROM", 1)[0], re.MULTILINE))
    for line in text.splitlines():
        match = re.match(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if not match:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), match.group(1))
        alias = match.group(2)
        if image.lower() not in stages:
            images.append(image)
        if alias:
            stages.add(alias.lower())
    return images


def find_images(obj: Any) -> list[str]:
    """Return every string value stored under a key named ``image`` (or ``*_image``), recursively."""
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and (key == "image" or key.endswith("_image")):
                found.append(value)
            else:
                found.extend(find_images(value))
    elif isinstance(obj, list):
        for item in obj:
            found.extend(find_images(item))
    return found


def unpinned(images: list[str]) -> list[str]:
    """Return the references that are not ``name[:tag]@sha256:<64 hex>``."""
    return [image for image in images if not PINNED.match(image)]


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """Render ``infra/k8s/overlays/<overlay>`` with ``kubectl kustomize`` (offline)."""
    out = subprocess.run(
        [find_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def all_image_sources() -> dict[str, list[str]]:
    """Every image reference in the repository's infrastructure, by source file."""
    sources = {
        "Dockerfile": dockerfile_from_images(DOCKERFILE.read_text()),
        "compose": find_images(yaml.safe_load(COMPOSE.read_text())),
        "cluster.yaml": find_images(yaml.safe_load(CLUSTER.read_text())),
    }
    for overlay in OVERLAYS:
        sources[f"k8s/{overlay}"] = find_images(list(rendered(overlay)))
    return sources


# ---------------------------------------------------------------------------------------------
# helpers: CRD schemas
# ---------------------------------------------------------------------------------------------


@cache
def crd_schema(kind_file: str) -> dict[str, Any]:
    """The ``v1`` openAPIV3Schema of a KubeRay CRD file, e.g. ``ray.io_rayjobs.yaml``."""
    if CRDS is None:
        pytest.fail("KubeRay CRDs not found (infra/k8s/crds, $KUBERAY_CRDS, ../shared/schemas/kuberay)")
    # libyaml's loader when present: the CRD files are 1-1.4 MB (pure Python takes seconds).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / kind_file).read_text(), Loader=loader)  # a safe loader either way
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """List the paths of keys the schema does not declare.

    The API server prunes (silently drops) such keys unless the schema says
    ``x-kubernetes-preserve-unknown-fields``; the KubeRay CRDs do not set
    ``additionalProperties: false``, so plain jsonschema validation would accept a typo.

    Args:
        obj: the object (or part of it) to check.
        schema: its structural schema.
        path: JSON-pointer-like path of ``obj``, for messages.

    Returns:
        Paths such as ``/spec/rayClusterSpec/headGroupSpec/templat``.
    """
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(obj, list):
        items = schema.get("items", {})
        return [p for i, item in enumerate(obj) for p in unknown_fields(item, items, f"{path}/{i}")]
    if not isinstance(obj, dict):
        return []
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    problems = []
    for key, value in obj.items():
        if key in props:
            problems += unknown_fields(value, props[key], f"{path}/{key}")
        elif isinstance(extra, dict):
            problems += unknown_fields(value, extra, f"{path}/{key}")
        elif extra is not True:
            problems.append(f"{path}/{key}")
    return problems


def check_custom_resource(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Validate a custom resource against its CRD schema; return every problem found."""
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    # The root metadata is a full ObjectMeta the CRD schema leaves opaque: check it separately.
    body = {k: v for k, v in doc.items() if k != "metadata"}
    problems += [f"unknown field {p}" for p in unknown_fields(body, schema)]
    meta_keys = {"name", "namespace", "labels", "annotations", "generateName"}
    problems += [f"unknown field /metadata/{k}" for k in doc.get("metadata", {}) if k not in meta_keys]
    return problems


def pod_templates(rayjob: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (name, PodTemplateSpec) of the RayJob's submitter, head and worker groups."""
    spec = rayjob["spec"]
    if "submitterPodTemplate" in spec:
        yield "submitter", spec["submitterPodTemplate"]
    cluster = spec["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield f"worker/{group['groupName']}", group["template"]


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    hadolint = [find_tool("hadolint"), str(DOCKERFILE)]
    result = subprocess.run(hadolint, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_dockerfile_builds_both_targets_from_the_lock_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    targets = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE)
    assert {"cpu", "gpu"} <= set(targets)
    # Runtime stages: non-root numeric user, /app, project code copied after the dependencies.
    for stage in ("gpu", "cpu"):
        body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER\s+1000(:1000)?\s*$", body, re.MULTILINE), stage
        assert "WORKDIR /app" in body, stage
        assert body.index("COPY --from=deps") < body.index("COPY --from=code --chown=1000:1000 /src /app"), stage
        labels = " ".join(re.findall(r"^LABEL .*(?:\n\s+.*)*", body, re.MULTILINE))
        for value in ("${GIT_COMMIT}", "${BASE_IMAGE}", "${LOCK_SHA256}"):
            assert value in labels, (stage, value)
    installs = re.findall(r"pip install --no-deps --require-hashes -r \S*requirements\.lock", text)
    assert len(installs) == 2  # once per deps stage
    assert len(re.findall(r'"torch==\$\{TORCH_VERSION\}"', text)) == 3  # cpu: local wheel or index; gpu: index
    assert "download.pytorch.org/whl/cpu" in text and re.search(r"download\.pytorch\.org/whl/cu\d+", text)
    # One Dockerfile for every base: the base is a build argument whose default is a pinned digest.
    assert re.search(r"^ARG BASE_IMAGE=\S+@sha256:[0-9a-f]{64}$", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS base$", text, re.MULTILINE)
    # Build-time extras (CA bundle, wheels) never reach the runtime stages' code.
    assert "find /src/infra/docker/build-extras -mindepth 1 ! -name README.md -delete" in text
    extras = (ROOT / "infra/docker/build-extras/.gitignore").read_text().split()
    assert extras[0] == "*"
    # No credentials baked in.
    assert not re.search(r"^(ENV|ARG)\s+.*(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", text, re.MULTILINE | re.IGNORECASE)


def test_dockerignore_keeps_data_results_and_secrets_out() -> None:
    entries = set((ROOT / ".dockerignore").read_text().split())
    required = {"data", "models", "samples", "metrics", "reports", "mlruns", "mlflow.db", ".venv",
                ".dvc/cache", "ray_results", ".stack", ".git"}  # fmt: skip
    assert required <= entries, required - entries


# ---------------------------------------------------------------------------------------------
# image pinning and the project image
# ---------------------------------------------------------------------------------------------


def test_pin_checker_flags_unpinned_references() -> None:
    text = "FROM python:3.11-slim AS base\nFROM base AS cpu\nFROM ubuntu@sha256:" + "a" * 64 + "\n"
    assert dockerfile_from_images(text) == ["python:3.11-slim", "ubuntu@sha256:" + "a" * 64]
    assert unpinned(dockerfile_from_images(text)) == ["python:3.11-slim"]
    nested = {"spec": {"containers": [{"image": "busybox:1.36"}]}, "docker": {"worker_image": "x@sha256:12"}}
    assert unpinned(find_images(nested)) == ["busybox:1.36", "x@sha256:12"]


def pinned_project_image() -> str:
    """The project image ``make image`` pushed and pinned (``GENMODELS_IMAGE`` in infra/images.env)."""
    values = dict(re.findall(r"^(\w+)=(\S+)$", IMAGES_ENV.read_text(), re.MULTILINE))
    return values["GENMODELS_IMAGE"]


def test_every_image_is_pinned_by_digest() -> None:
    sources = all_image_sources()
    for name, images in sources.items():
        assert images, f"no images found in {name}"
    compose = sources.pop("compose")
    assert set(compose) == {"${GENMODELS_IMAGE:?set GENMODELS_IMAGE (infra/images.env, written by make image)}"}
    bad = {name: [i for i in unpinned(images) if i != UNBUILT_GPU] for name, images in sources.items()}
    assert not any(bad.values()), f"images not pinned by @sha256 digest: {bad}"


def test_project_image_is_named_once_per_launcher_and_agrees_everywhere() -> None:
    pin = pinned_project_image()
    assert PINNED.match(pin), pin
    sources = all_image_sources()
    assert sources["cluster.yaml"][0] == pin  # head_image
    for overlay in OVERLAYS:
        cpu = [i for i in sources[f"k8s/{overlay}"] if i != UNBUILT_GPU]
        assert set(cpu) == {pin}, (overlay, set(cpu))
    # one place per launcher: the kustomize images entry, head_image, the compose variable
    kust = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())["images"]
    (cpu_entry,) = [e for e in kust if e["name"] == "genmodels-pipeline-cpu"]
    assert f"{cpu_entry['newName']}@{cpu_entry['digest']}" == pin
    others = [p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml"]
    for path in [*others, *(K8S / "overlays").rglob("*.yaml"), COMPOSE]:
        assert pin.split("@")[1] not in path.read_text(), f"{path} repeats the digest instead of naming the image"


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_pin_writes_the_reference_as_yaml_and_keeps_every_comment(tmp_path: Path) -> None:
    """``infra/docker/image pin`` on a copy of the three files it edits: each parses to the new
    reference, everything else (comments, the gpu entries) is unchanged line for line."""
    files = ("infra/k8s/base/kustomization.yaml", "infra/ray/cluster.yaml", "infra/images.env")
    for rel in (*files, "infra/docker/image"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((ROOT / rel).read_bytes())
    (tmp_path / "infra/docker/image").chmod(0o755)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the project's python (ruamel.yaml) as in a checkout
    name, digest = "10.1.2.3:5000/team/pipeline", "sha256:" + hashlib.sha256(b"test image").hexdigest()
    run = subprocess.run([str(tmp_path / "infra/docker/image"), "pin", f"{name}@{digest}"], check=False,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    kust = yaml.safe_load((tmp_path / files[0]).read_text())
    assert kust["images"] == [{"name": "genmodels-pipeline-cpu", "newName": name, "digest": digest},
                              {"name": "genmodels-pipeline-gpu", "newName": "ghcr.io/genmodels/pipeline", "newTag": "gpu"}]
    cluster = yaml.safe_load((tmp_path / files[1]).read_text())
    assert cluster["docker"]["head_image"] == f"{name}@{digest}" and cluster["docker"]["worker_image"] == UNBUILT_GPU
    for rel in files[:2]:
        before, after = (ROOT / rel).read_text(), (tmp_path / rel).read_text()
        assert comment_lines(after) == comment_lines(before), rel
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
        assert all(old.split(":")[0] == new.split(":")[0] for old, new in changed), changed  # same keys, in place
        assert len(changed) == (2 if rel == files[0] else 1), changed
    assert f"GENMODELS_IMAGE={name}@{digest}" in (tmp_path / files[2]).read_text()

    kust_text = (tmp_path / files[0]).read_text().replace("genmodels-pipeline-cpu", "someone-else")
    (tmp_path / files[0]).write_text(kust_text)
    missing = subprocess.run([str(tmp_path / "infra/docker/image"), "pin", f"{name}@{digest}"], check=False,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "no single images entry for genmodels-pipeline-cpu" in missing.stderr


def fake_digests(text: str) -> list[str]:
    """``sha256:`` digests that no registry produced: repeated or counting patterns."""
    found = re.findall(r"sha256:([0-9a-f]{64})", text)
    return [d for d in found if len(set(d)) < 8 or d in "0123456789abcdef" * 5]


SCANNED = {"", ".yaml", ".yml", ".env", ".md", ".py", ".toml"}


def source_files(under: str = ".") -> list[Path]:
    """The files of the project under ``under``: git's tracked files where this is a checkout
    (what a clone has: no bytecode, caches or run state), else every file outside caches."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", under], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode == 0 and listed.stdout:
        return [ROOT / f for f in listed.stdout.decode().split("\0") if f and (ROOT / f).is_file()]
    litter = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache"}
    return [p for p in (ROOT / under).rglob("*") if p.is_file() and not litter & set(p.parts)]


def source_text(path: Path) -> str:
    """``path`` as UTF-8 text; a binary file is an error that names it (not a bare UnicodeDecodeError)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AssertionError(f"{path.relative_to(ROOT)} is not UTF-8 text (byte {exc.start}): "
                             "a binary file among the sources scanned for image digests") from None


def test_source_scan_names_a_binary_file_and_skips_bytecode(tmp_path: Path) -> None:
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\xa7\r\r\n\x00\xff")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(f"{__name__}.ROOT", tmp_path)
        assert source_files() == []  # not a checkout: the fallback walk leaves caches out
        (tmp_path / "blob.yaml").write_bytes(b"image: \xff\xfe")
        assert source_files() == [tmp_path / "blob.yaml"]
        with pytest.raises(AssertionError, match=r"blob\.yaml is not UTF-8 text"):
            source_text(tmp_path / "blob.yaml")


def test_no_placeholder_digest_anywhere() -> None:
    assert fake_digests("x@sha256:" + "0" * 64 + " y@sha256:" + "ab" * 32) == ["0" * 64, "ab" * 32]
    bad = {}
    for path in source_files():
        text = source_text(path) if path.suffix in SCANNED else ""
        if digests := fake_digests(text):
            bad[str(path.relative_to(ROOT))] = digests
    bad.pop("tests/test_infra.py", None)  # this test's own examples
    assert not bad, bad


def test_infra_digests_are_the_pin_or_a_published_base() -> None:
    """Every digest under infra/ and in the Dockerfile is one that was produced: the project image's
    (infra/images.env, written from the registry's answer) or the Dockerfile's published base."""
    allowed = {pinned_project_image().split("@sha256:")[1]}
    allowed |= {i.split("@sha256:")[1] for i in dockerfile_from_images(DOCKERFILE.read_text())}
    texts = [DOCKERFILE.read_text(), *(source_text(p) for p in source_files("infra") if "build-extras" not in p.parts)]
    seen = {d for text in texts for d in re.findall(r"sha256:([0-9a-f]{64})", text)}
    assert seen <= allowed, seen - allowed


# ---------------------------------------------------------------------------------------------
# docker compose and ray up
# ---------------------------------------------------------------------------------------------


def test_compose_defines_the_cluster_without_literal_secrets() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "seaweedfs", "mlflow", "ray-head", "ray-worker-1", "ray-worker-2"}
    for name, service in services.items():
        assert service["command"][0] == "infra/compose/serve", name
        assert service["healthcheck"]["test"][:3] == ["CMD", "infra/compose/serve", "health"], name
        assert service["networks"] == ["genmodels"] and service["init"] is True, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert {n for n, s in services.items() if s.get("ports")} == {"seaweedfs", "mlflow", "ray-head"}
    # Ray's dashboard (Jobs and State APIs): on the compose network, published on loopback only
    assert services["ray-head"]["ports"] == ["127.0.0.1:${RAY_DASHBOARD_PORT:-8265}:8265"]
    head_start = (ROOT / "infra/compose/serve").read_text().split("  ray-head)")[1].split(";;")[0]
    assert "--include-dashboard=true --dashboard-host=0.0.0.0 --dashboard-port=8265" in head_start
    assert "--app-name basic-auth" in (ROOT / "infra/compose/serve").read_text()
    for name in ("ray-head", "ray-worker-1", "ray-worker-2"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token"
        assert services[name]["secrets"] == ["ray_token"]
        assert "workspace:/workspace" in services[name]["volumes"]
    # Secrets come only from files or the env file: every secret-looking value is a required ${VAR:?...}.
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN$|ACCESS_KEY", key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", str(value)), (name, key, value)


SERVE = ROOT / "infra/compose/serve"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (a mount namespace)")
def test_compose_mlflow_gets_the_database_password_in_its_environment_not_its_command_line(tmp_path: Path) -> None:
    """``serve mlflow`` as in its container (compose secrets under /run/secrets: here a private
    tmpfs over /run), with a stand-in ``mlflow`` that reports its command line and PGPASSWORD."""
    password = "s3cret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mlflow").write_text('#!/bin/sh\nprintf "%s\\n" "$*" >"$REPORT"\nprintf "%s" "$PGPASSWORD" >>"$REPORT"\n')
    (fake / "mlflow").chmod(0o755)
    report = tmp_path / "report"
    script = ('mount -t tmpfs secrets /run && mkdir /run/secrets && printf "%s\\n" "$PW" >/run/secrets/postgres_password '
              f'&& exec {SERVE} mlflow')
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PW": password, "REPORT": str(report)}
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], check=False, env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    argv, pgpassword = report.read_text().split("\n", 1)
    assert "--backend-store-uri postgresql+psycopg2://mlflow@postgres:5432/mlflow " in argv, argv
    assert password not in argv
    assert pgpassword == password


def test_compose_postgres_first_start_wait_is_bounded_in_seconds(tmp_path: Path) -> None:
    """The first start's readiness wait (``wait_ready`` of infra/compose/serve) gives up after its
    limit in seconds with a message, and at once when the server has exited."""
    text = SERVE.read_text()
    assert re.search(r'wait_ready "PostgreSQL[^"]*" 60 "\$!" pg_isready', text)
    assert len(re.findall(r"^\s*(?:until|while) ", text, re.MULTILINE)) == 1  # wait_ready's: no unbounded poll
    function = re.search(r"^wait_ready\(\) \{.*?^\}$", text, re.MULTILINE | re.DOTALL).group(0)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        started = time.monotonic()
        late = subprocess.run(["bash", "-c", f'{function}\nwait_ready "the server" 2 {sleeper.pid} false'], check=False,
                              capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
    finally:
        sleeper.kill()
        sleeper.wait()
    assert late.returncode == 1 and "serve: the server not ready after 2 s" in late.stderr, late.stderr
    assert 2 <= took < 7, took  # at least the limit; whole seconds: at most one more (+ a busy machine)
    gone = subprocess.run(["bash", "-c", f'{function}\nwait_ready "the server" 60 {sleeper.pid} false'], check=False,
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "serve: the server exited before it was ready" in gone.stderr, gone.stderr


def test_ray_cluster_yaml_passes_rays_own_schema() -> None:
    (ray_dir,) = find_spec("ray").submodule_search_locations  # type: ignore[union-attr]
    schema = json.loads((Path(ray_dir) / "autoscaler/ray-schema.json").read_text())
    config = yaml.safe_load(CLUSTER.read_text())
    jsonschema.validate(config, schema)
    node_types = config["available_node_types"]
    gpu_types = [t for t in node_types.values() if t.get("docker", {}).get("worker_image") == UNBUILT_GPU]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    assert config["head_node_type"] in node_types
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    # host networking (the launcher's `docker run --net=host`): the dashboard on the head's loopback
    assert "--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=8265" in head_start
    assert "0.0.0.0" not in head_start
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_pass_kubernetes_validate_strict(overlay: str) -> None:
    docs = rendered(overlay)
    core = [d for d in docs if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in core} >= {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"}
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The RayJob's pod templates are core PodTemplateSpecs: validate them with the core schema too.
    (rayjob,) = of_kind(docs, "RayJob")
    for name, template in pod_templates(rayjob):
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name.replace("/", "-")},
                   "template": template}  # fmt: skip
        kubernetes_validate.validate(wrapper, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_and_its_cluster_spec_match_the_kuberay_crds(overlay: str) -> None:
    (rayjob,) = of_kind(rendered(overlay), "RayJob")
    assert check_custom_resource(rayjob, crd_schema("ray.io_rayjobs.yaml")) == []
    # The same cluster spec as a standalone RayCluster, against the RayCluster CRD.
    raycluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "check"},
                  "spec": rayjob["spec"]["rayClusterSpec"]}  # fmt: skip
    assert check_custom_resource(raycluster, crd_schema("ray.io_rayclusters.yaml")) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ray_head_pod_knows_its_pinned_image(overlay: str) -> None:
    """GENMODELS_IMAGE (the MLflow tag `image`) is what kustomize's `images:` resolved, not a name."""
    (rayjob,) = of_kind(rendered(overlay), "RayJob")
    (head,) = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in head["env"]}["GENMODELS_IMAGE"] == head["image"]
    assert PINNED.match(head["image"])


def test_crd_check_catches_typos_and_wrong_types() -> None:
    (rayjob,) = of_kind(rendered("gpu"), "RayJob")
    schema = crd_schema("ray.io_rayjobs.yaml")
    typo = deepcopy(rayjob)
    typo["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "x"
    typo["spec"]["shutdownAfterJobFinish"] = True
    problems = check_custom_resource(typo, schema)
    assert "unknown field /spec/shutdownAfterJobFinish" in problems
    assert any(p.endswith("/containers/0/imagePullPolicyy") for p in problems)
    wrong_type = deepcopy(rayjob)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in p for p in check_custom_resource(wrong_type, schema))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_non_root_with_requests_limits_and_settings(overlay: str) -> None:
    docs = rendered(overlay)
    (deployment,) = of_kind(docs, "Deployment")
    (rayjob,) = of_kind(docs, "RayJob")
    templates = [("mlflow", deployment["spec"]["template"]), *pod_templates(rayjob)]
    for name, template in templates:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            resources = container["resources"]
            assert resources["requests"] and resources["limits"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    for name, template in [("mlflow", deployment["spec"]["template"]), *list(pod_templates(rayjob))[1:]]:
        refs = {next(iter(ref.values()))["name"] for ref in template["spec"]["containers"][0]["envFrom"]}
        assert refs == {"genmodels-config", "genmodels-secrets"}, name
    assert rayjob["spec"]["entrypoint"] == "bash /app/infra/run-pipeline"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_gets_its_store_urls_from_the_environment_not_its_command_line(overlay: str) -> None:
    """The backend store URL holds the database password: MLflow's CLI reads it from
    MLFLOW_BACKEND_STORE_URI (the Secret), so no argument names a store or expands a variable."""
    (deployment,) = of_kind(rendered(overlay), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = [*container["command"], *container.get("args", [])]
    assert argv[:2] == ["mlflow", "server"], argv
    assert not any("store-uri" in a or "artifacts-destination" in a or "$" in a for a in argv), argv
    assert {"genmodels-config", "genmodels-secrets"} <= {next(iter(r.values()))["name"] for r in container["envFrom"]}


def test_overlays_set_profile_and_worker_hardware() -> None:
    def summary(overlay: str) -> tuple[str, list[tuple[str, int, Any]]]:
        docs = rendered(overlay)
        (config,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "genmodels-config"]
        (rayjob,) = of_kind(docs, "RayJob")
        groups = [
            (g["groupName"], g["replicas"], g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu"))
            for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        ]  # fmt: skip
        return config["data"]["PIPELINE_PROFILE"], groups

    profile, groups = summary("cpu-smoke")
    assert profile == "smoke" and groups == [("cpu", 2, None)]
    assert "nvidia.com/gpu" not in json.dumps(list(rendered("cpu-smoke")))
    profile, groups = summary("gpu")
    assert profile == "gpu" and groups == [("gpu", 4, 1)]
    # One Ray Train worker per GPU: the overlay brings as many GPUs as the gpu profile asks for.
    gpu_profile = yaml.safe_load((ROOT / "profiles/gpu.yaml").read_text())["ray"]
    assert gpu_profile["num_workers"] * gpu_profile["resources_per_worker"]["GPU"] == 4 * 1


def test_example_secret_is_valid_placeholder_only_and_not_applied_by_kustomize() -> None:
    path = K8S / "base/secret.example.yaml"
    secret = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert secret["stringData"] and all("REPLACE_ME" in v for v in secret["stringData"].values())
    kustomization = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())
    assert path.name not in kustomization["resources"]
    assert not of_kind(rendered("gpu"), "Secret")


# ---------------------------------------------------------------------------------------------
# live: infra/local/stack
# ---------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    """Environment for ``infra/local/stack`` with a private state folder and free ports."""
    with local_stack_env() as env:
        yield env


def _stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(ROOT / "infra/local/stack"), *args]
    return subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_local_stack_starts_serves_and_stops(stack_env: dict[str, str]) -> None:
    import mlflow
    import psycopg2

    only_s3 = _stack(stack_env, "start", "s3")
    assert only_s3.returncode == 0 and "seaweedfs: started" in only_s3.stdout, only_s3.stdout + only_s3.stderr
    assert "postgres:" not in only_s3.stdout and "mlflow:" not in only_s3.stdout
    assert _stack(stack_env, "status", "s3").returncode == 0
    partial = _stack(stack_env, "status")
    assert partial.returncode == 3 and partial.stdout.count("stopped") == 2, partial.stdout
    started = _stack(stack_env, "start", "mlflow")  # and what MLflow needs: PostgreSQL, S3 (already up)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "postgres: started" in started.stdout and "seaweedfs: already running" in started.stdout
    state = Path(stack_env["STACK_DIR"])
    assert (state / "credentials").stat().st_mode & 0o077 == 0  # secrets readable by the owner only
    status = _stack(stack_env, "status")
    assert status.returncode == 0 and status.stdout.count("running") == 3, status.stdout

    exported = dict(re.findall(r"^export (\w+)=(\S+)$", _stack(stack_env, "env").stdout, re.MULTILINE))
    assert exported["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{stack_env['STACK_MLFLOW_PORT']}"
    assert exported["AWS_ENDPOINT_URL"] == exported["MLFLOW_S3_ENDPOINT_URL"]

    creds = dict(line.split("=", 1) for line in (state / "credentials").read_text().split())
    dsn = f"postgresql://{creds['PG_USER']}:{creds['PG_PASSWORD']}@127.0.0.1:{stack_env['STACK_PG_PORT']}/mlflow"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'experiments'")
        assert cur.fetchone() == (1,)  # MLflow created its schema in this database
    conn.close()

    s3 = S3Server.from_env(exported)
    assert {"mlflow", "dvc"} <= {b["Name"] for b in s3.client().list_buckets()["Buckets"]}
    with pytest.raises(botocore.exceptions.ClientError):
        S3Server(s3.endpoint_url, "wrong", "wrong").client().list_buckets()

    uri = exported["MLFLOW_TRACKING_URI"]
    with urllib.request.urlopen(f"{uri}/health", timeout=5) as resp:
        assert resp.status == 200
    with pytest.MonkeyPatch.context() as mp:  # the stack's MLflow has basic auth: the credentials `env` exports
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(key, exported[key])
        client = mlflow.MlflowClient(uri)
        run = client.create_run(client.create_experiment("stack-test"))
        client.log_text(run.info.run_id, "hello", "note.txt")  # proxied by the server into S3
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.startswith("artifacts/") and k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys)

    pids = [int((state / "run" / f).read_text()) for f in ("weed.pid", "mlflow.pid")]
    pids.append(int((state / "postgres/postmaster.pid").read_text().split()[0]))
    again = _stack(stack_env, "start")
    assert again.returncode == 0 and again.stdout.count("already running") == 3, again.stdout
    assert [int((state / "run" / f).read_text()) for f in ("weed.pid", "mlflow.pid")] == pids[:2]

    only_mlflow = _stack(stack_env, "stop", "mlflow")
    assert only_mlflow.returncode == 0 and only_mlflow.stdout.startswith("mlflow: stopped"), only_mlflow.stdout
    assert _stack(stack_env, "status", "mlflow").returncode == 3
    assert _stack(stack_env, "status", "postgres", "s3").returncode == 0
    stopped = _stack(stack_env, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 10
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]
    status = _stack(stack_env, "status")
    assert status.returncode == 3 and status.stdout.count("stopped") == 3, status.stdout
    for port in ("STACK_PG_PORT", "STACK_S3_PORT", "STACK_MLFLOW_PORT"):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(stack_env[port]))) != 0, port


def command_lines() -> dict[int, bytes]:
    """Every process's command line (``/proc/<pid>/cmdline``, NUL-separated), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
    return found


def wrap_tools(folder: Path, names: tuple[str, ...], record: Path) -> dict[str, str]:
    """Stand-ins for ``names`` on PATH that append their command line to ``record`` and run the
    real program: what short-lived commands (psql, pg_ctl) were given, which no scan of /proc sees."""
    folder.mkdir(mode=0o755)
    record.touch()
    record.chmod(0o666)  # as root the stack runs the PostgreSQL tools as user postgres
    for name in names:
        real = shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None)
        if real is None:
            pytest.skip(f"{name} is not installed")
        (folder / name).write_text(f'#!/bin/sh\necho "$0 $*" >>{record}\nexec {real} "$@"\n')
        (folder / name).chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.mark.slow
def test_local_stack_puts_no_password_on_a_command_line(stack_env: dict[str, str]) -> None:
    """The database and MLflow admin passwords reach the servers through files, stdin and the
    environment: neither is in any process's command line, while MLflow works on PostgreSQL."""
    import mlflow

    tools = Path(tempfile.mkdtemp(prefix="stack-tools-"))
    tools.chmod(0o755)
    try:
        record = tools / "commands.log"
        env = {**stack_env, **wrap_tools(tools / "bin", ("initdb", "pg_ctl", "psql", "pg_isready"), record)}
        started = _stack(env, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        creds = dict(line.split("=", 1) for line in (Path(stack_env["STACK_DIR"]) / "credentials").read_text().split())
        secrets = {key: creds[key].encode() for key in ("PG_PASSWORD", "MLFLOW_PASSWORD")}
        leaks = {pid: key for pid, line in command_lines().items() for key, value in secrets.items() if value in line}
        assert not leaks, {pid: (key, command_lines().get(pid, b"").replace(b"\0", b" ")[:200]) for pid, key in leaks.items()}
        recorded = record.read_text()
        assert "CREATE ROLE" not in recorded and "psql" in recorded and "initdb" in recorded  # the stand-ins ran
        assert not [key for key, value in secrets.items() if value.decode() in recorded]
        assert oct((Path(stack_env["STACK_DIR"]) / "pgpass").stat().st_mode & 0o777) == "0o600"

        exported = dict(re.findall(r"^export (\w+)=(\S+)$", _stack(env, "env").stdout, re.MULTILINE))
        with pytest.MonkeyPatch.context() as mp:
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                mp.setenv(key, exported[key])
            client = mlflow.MlflowClient(exported["MLFLOW_TRACKING_URI"])
            experiment = client.create_experiment("no-password-in-ps")  # a write to PostgreSQL
            assert client.get_experiment(experiment).name == "no-password-in-ps"
    finally:
        shutil.rmtree(tools, ignore_errors=True)


def test_local_stack_names_the_services_it_knows(stack_env: dict[str, str]) -> None:
    unknown = _stack(stack_env, "start", "redis")
    assert unknown.returncode != 0
    assert "unknown service 'redis': choose from postgres, s3, mlflow" in unknown.stderr
    assert not Path(stack_env["STACK_DIR"]).exists()  # refused before anything was created


@pytest.mark.slow
def test_local_stack_that_cannot_start_shows_the_servers_log(stack_env: dict[str, str]) -> None:
    with socket.socket() as taken:  # PostgreSQL's port is in use by someone else
        taken.bind(("127.0.0.1", int(stack_env["STACK_PG_PORT"])))
        taken.listen()
        started = _stack(stack_env, "start")
    assert started.returncode != 0
    assert "PostgreSQL did not start; last lines of" in started.stderr
    assert "could not bind" in started.stderr or "already in use" in started.stderr, started.stderr  # its own log
    assert "STACK_PG_PORT" in started.stderr  # what to do


# ---------------------------------------------------------------------------------------------
# live: infra/run-pipeline on a tiny DVC project
# ---------------------------------------------------------------------------------------------

TINY_DVC_YAML = """\
stages:
  echo:
    cmd: python -c "import yaml; p = yaml.safe_load(open('params.yaml')); open('out.txt', 'w').write(p['profile'])"
    params:
      - profile
    outs:
      - out.txt
"""


@pytest.mark.slow
def test_run_pipeline_sets_profile_reproduces_and_pushes(tmp_path: Path, s3_server: S3Server) -> None:
    source, workspace = tmp_path / "app", tmp_path / "workspace"
    source.mkdir()
    (source / "params.yaml").write_text("profile: default\nseed: 0\n")
    (source / "dvc.yaml").write_text(TINY_DVC_YAML)
    dvc = find_tool("dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=source, check=True, timeout=60)
    s3_server.make_bucket("run-pipeline-test")
    env = {
        **os.environ, **s3_server.env(),
        "PATH": f"{Path(dvc).parent}{os.pathsep}{os.environ['PATH']}",
        "PIPELINE_SOURCE": str(source), "WORKSPACE": str(workspace),
        "PIPELINE_PROFILE": "smoke", "DVC_REMOTE_URL": "s3://run-pipeline-test/store",
    }  # fmt: skip
    argv = [str(ROOT / "infra/run-pipeline")]
    result = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workspace / "out.txt").read_text() == "smoke"
    assert (workspace / "params.yaml").read_text().startswith("profile: smoke\n")
    assert (source / "params.yaml").read_text().startswith("profile: default\n")  # the image's copy is untouched
    pushed = s3_server.client().list_objects_v2(Bucket="run-pipeline-test").get("Contents", [])
    assert any(o["Key"].startswith("store/") for o in pushed)


# ---------------------------------------------------------------------------------------------
# live: infra/local/with-ray
# ---------------------------------------------------------------------------------------------


#: attaches to the head with_ray started and runs one task there
ATTACH = ("import os, ray; ray.init(address=os.environ['RAY_ADDRESS'], logging_level='error'); "
          "print(os.environ['RAY_ADDRESS'], os.environ['GENMODELS_SHIP_CODE'], "
          "ray.get(ray.remote(lambda: 'task-ran').remote()))")


def fresh_home_env(home: Path) -> dict[str, str]:
    """The environment of a new user: an empty HOME and no Ray address or token of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "XDG_"))}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}


@pytest.mark.slow
def test_with_ray_works_on_a_fresh_home_and_leaves_no_token_or_process(tmp_path: Path) -> None:
    home = tmp_path / "home"  # no earlier test has written a token here
    run = subprocess.run([find_tool("python"), str(ROOT / "infra/local/with-ray"), "--", find_tool("python"), "-c",
                          ATTACH], check=False, env=fresh_home_env(home), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    address, ship, task = run.stdout.split()
    assert address.startswith("127.0.0.2:") and ship == "0" and task == "task-ran"
    assert not (home / ".ray" / "auth_token").exists()  # the private token lived in the head's temp folder
    port = address.split(":")[1]
    left = subprocess.run(["pgrep", "-f", f"port={port}"], check=False, capture_output=True, text=True).stdout.split()
    assert not left, f"Ray processes of the head on {address} still running: {left}"


def test_with_ray_shows_why_the_head_did_not_start(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ray").write_text("#!/bin/sh\necho 'ray: something specific went wrong' >&2\nexit 3\n")
    (fake_bin / "ray").chmod(0o755)
    env = {**fresh_home_env(tmp_path / "home"), "PATH": f"{fake_bin}:/usr/bin:/bin"}
    # the system python: with no `ray` beside it, with-ray takes the (fake) one on PATH
    run = subprocess.run(["/usr/bin/env", "python3", str(ROOT / "infra/local/with-ray"), "--", "true"], check=False,
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "did not start (exited with code 3)" in run.stderr
    assert "ray: something specific went wrong" in run.stderr  # the head's own log, not /dev/null
