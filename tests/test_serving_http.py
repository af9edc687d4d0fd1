"""A real ``mlflow models serve`` process (``--env-manager local``) serving the champion of a tiny
CGAN from a sqlite registry on a loopback port, outside the checkout: real HTTP requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from servers import find_tool, free_port, stop_process, wait_until
from serving_models import log_tiny

from components.model_registry import register_run
from components.serving.generator import decode_images

pytestmark = pytest.mark.slow
MODEL = "models:/genmodels-test-cgan@champion"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(base URL, tracking URI)`` of the serving process; stopped (its group) afterwards."""
    folder = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    run_id, _ = log_tiny(uri, "cgan", folder / "cgan")
    register_run(uri, run_id, "genmodels-test", "cgan", {"fid": 5.0, "extractor_checksum": "x", "family": "cgan"})
    port = free_port()
    # the server starts `uvicorn` by name: the venv's bin must be on PATH (as in an activated venv)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [find_tool("mlflow"), "models", "serve", "-m", MODEL, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with open(folder / "serve.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{base}/ping", timeout=2).status == 200, 180, "mlflow models serve",
                   proc)
        yield base, uri
    finally:
        stop_process(proc)


def post(base: str, body: bytes | dict, content_type: str = "application/json") -> tuple[int, dict | str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def test_served_champion_answers_with_decodable_images(served: tuple[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pyfunc

    base, uri = served
    body = {"dataframe_records": [{"num_images": 3, "label": "two"}, {"num_images": 2, "label": 7}],
            "params": {"seed": 4}}
    status, answer = post(base, body)
    assert status == 200, answer
    rows = answer["predictions"]
    assert [(r["request"], r["label"]) for r in rows] == [(0, 2), (0, 2), (0, 2), (1, 7), (1, 7)]
    images = decode_images([r["image"] for r in rows])
    assert images.dtype == np.uint8 and images.shape == (5, 1, 28, 28)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    here = mlflow.pyfunc.load_model(MODEL).predict(
        pd.DataFrame({"num_images": [3, 2], "label": ["two", 7]}), params={"seed": 4})
    assert np.array_equal(images, decode_images(here["image"].tolist()))  # the server and a client agree
    status, split = post(base, {"dataframe_split": {"columns": ["num_images", "label"], "data": [[3, "two"]]},
                                "params": {"seed": 4}})
    assert status == 200 and [r["image"] for r in split["predictions"]] == [r["image"] for r in rows[:3]]


@pytest.mark.parametrize(("body", "content_type", "message"), [
    ({"dataframe_records": [{"num_images": 2, "label": "jacket"}]}, "application/json", "unknown label 'jacket'"),
    ({"dataframe_records": [{"num_images": 0, "label": 1}]}, "application/json", "num_images must be a whole number"),
    ({"dataframe_records": [{"label": 1}]}, "application/json", "num_images"),
    ({"dataframe_records": [{"num_images": 1}], "params": {"seed": "abc"}}, "application/json", "seed"),
    (b"{not json", "application/json", "Invalid input"),
    ({"dataframe_records": [{"num_images": 1}]}, "text/plain", "only supports the following content types"),
])
def test_malformed_requests_get_a_4xx_with_a_message(served: tuple[str, str], body: bytes | dict,
                                                     content_type: str, message: str) -> None:
    status, answer = post(served[0], body, content_type)
    assert 400 <= status < 500, (status, answer)
    text = answer if isinstance(answer, str) else answer.get("message", "")
    assert message.lower() in text.lower(), answer
