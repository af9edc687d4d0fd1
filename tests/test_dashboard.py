"""`infra/local/with-ray` starts its head with Ray's dashboard: its address is printed, the State
API answers (Train's controller and placement-group cleaner need it), and the dashboard's HTTP API
refuses a request without the cluster's token."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from project import run_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Run under with-ray: what a stage or a user would ask the head, with and without the token.
PROBE = r"""
import json, os, urllib.error, urllib.request
from ray.util.state import list_nodes
url = os.environ["RAY_DASHBOARD_URL"]
token = open(os.environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
def status(headers):
    try:
        return urllib.request.urlopen(urllib.request.Request(url + "/api/version", headers=headers), timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code
import time
deadline = time.monotonic() + 60  # the dashboard lists a node once it has heard of it: soon, not at once
while not (nodes := list_nodes(address=os.environ["RAY_ADDRESS"])) and time.monotonic() < deadline:
    time.sleep(1)
print(json.dumps({"url": url, "nodes": [n.state for n in nodes], "without_token": status({}),
                  "with_token": status({"Authorization": "Bearer " + token})}))
"""


def test_with_ray_runs_the_dashboard_and_the_state_api_answers(tmp_path: Path) -> None:
    run = run_command([sys.executable, str(ROOT / "infra/local/with-ray"), "--num-cpus", "1", "--",
                       sys.executable, "-c", PROBE], tmp_path, tracking="isolated", env={"GENMODELS_RAY_DASHBOARD": "1"},
                      timeout=300)
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    printed = re.search(r"with-ray: Ray dashboard at (http://127\.0\.0\.2:\d+) \(its token: the file (\S+)\)", run.stderr)
    assert printed and printed.group(1) == answer["url"], run.stderr
    assert answer["nodes"] == ["ALIVE"]
    assert answer["without_token"] == 401 and answer["with_token"] == 200


def test_no_dashboard_leaves_it_out(tmp_path: Path) -> None:
    probe = "import os; print(os.environ.get('RAY_DASHBOARD_URL', 'none'))"
    run = run_command([sys.executable, str(ROOT / "infra/local/with-ray"), "--num-cpus", "1", "--no-dashboard", "--",
                       sys.executable, "-c", probe], tmp_path, tracking="isolated", timeout=300)
    assert run.stdout.strip().splitlines()[-1] == "none" and "dashboard" not in run.stderr
