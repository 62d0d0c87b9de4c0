"""End to end with k3s: the demo DAG's tasks run as pods in k3s from the registry's worker image.

Needs a machine that can pull the pinned upstream images and run privileged containers; where it
cannot, `invoke up` fails and so does this tier (it never skips silently).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from demo_lib import object_key
from harness import Stack

DAG = "demo_rest_to_s3"
TASKS = {"fetch", "upload", "verify"}
pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def pushed_digest(stack: Stack) -> str:
    """The worker image's digest in the registry (`invoke push` again: idempotent)."""
    return stack.push()


@pytest.fixture(scope="module")
def demo_run(stack: Stack, pushed_digest: str) -> str:
    """The demo DAG run to success through the task library (after the push)."""
    return stack.run_dag(DAG, timeout=900)


def kubectl_json(stack: Stack, *args: str) -> Any:
    result = stack.invoke("kubectl", "--", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_kubectl_passthrough_reaches_the_cluster(stack: Stack) -> None:
    nodes = kubectl_json(stack, "get", "nodes")["items"]
    assert len(nodes) == 1
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert ready["Ready"] == "True"
    claim = kubectl_json(stack, "get", "pvc", "airflow-shared")
    assert claim["status"]["phase"] == "Bound"
    missing = stack.invoke("kubectl", "--", "get", "pod", "no-such-pod")
    assert missing.returncode != 0, "kubectl's exit code is passed through"


def test_each_task_ran_as_a_pod_from_the_registry_image(
    stack: Stack, demo_run: str, pushed_digest: str
) -> None:
    pods = kubectl_json(stack, "get", "pods", "-l", f"dag_id={DAG}")["items"]
    by_task = {p["metadata"]["labels"]["task_id"]: p for p in pods}
    assert set(by_task) == TASKS
    for task_id, pod in by_task.items():
        assert pod["status"]["phase"] == "Succeeded", task_id
        container = pod["spec"]["containers"][0]
        assert container["image"] == "registry:5000/airflow-worker:latest"
        status = pod["status"]["containerStatuses"][0]
        assert status["imageID"].endswith(pushed_digest), (task_id, status["imageID"])
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/shared" in mounts


def test_s3_object_equals_what_mockserver_served(stack: Stack, demo_run: str) -> None:
    cfg = stack.settings
    url = f"http://127.0.0.1:{cfg.ports['MOCKSERVER_PORT']}/api/v1/orders"
    with urllib.request.urlopen(url, timeout=10) as response:
        served = json.loads(response.read())
    body = stack.s3().get_object(Bucket="airflow-data", Key=object_key(demo_run))["Body"].read()
    assert json.loads(body) == served


def test_task_logs_are_in_s3(stack: Stack, demo_run: str) -> None:
    for task_id in sorted(TASKS):
        key = f"logs/dag_id={DAG}/run_id={demo_run}/task_id={task_id}/attempt=1.log"
        assert stack.s3_object("airflow-logs", key).strip()
        assert stack.api().task_log(DAG, demo_run, task_id, 1).strip()
