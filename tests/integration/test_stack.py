"""The stack for real, without k3s (IMAGES=local): services, registry round trip, the demo DAG.

The tasks run where pods would run them: the stand-in executor (tests/standin) builds each pod with
the cncf provider's PodGenerator from the pod template, and runs its container from the worker image
pulled back from the registry. These tests prove it by digest.
"""

from __future__ import annotations

import json
import urllib.request

import httpx
import pytest
from demo_lib import object_key
from harness import SERVICES_LOCAL, Stack

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
    return stack.run_dag(DAG, timeout=600)


def test_every_service_is_healthy_on_loopback_ports(stack: Stack) -> None:
    states = stack.invoke("status")
    assert states.returncode == 0
    seen = {
        line.split()[0]: line.split()[1]
        for line in states.stdout.splitlines()
        if line.split() and line.split()[0] in SERVICES_LOCAL
    }
    assert set(seen) == SERVICES_LOCAL
    for service, state in seen.items():
        assert state == ("exited(0)" if service == "airflow-init" else "healthy"), service
    for container in stack.docker().compose.ps():
        for bindings in (container.network_settings.ports or {}).values():
            for binding in bindings or []:
                assert binding["HostIp"] == "127.0.0.1", (container.name, binding)


def test_worker_image_round_trips_through_the_registry(stack: Stack, pushed_digest: str) -> None:
    cfg = stack.settings
    registry = f"http://127.0.0.1:{cfg.ports['REGISTRY_PORT']}"
    head = httpx.head(
        f"{registry}/v2/airflow-worker/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert head.headers["Docker-Content-Digest"] == pushed_digest
    docker = stack.docker()
    docker.image.remove(cfg.worker_image, force=True)
    docker.image.pull(cfg.worker_image, quiet=True)
    repo = cfg.worker_image.rsplit(":", 1)[0]
    assert f"{repo}@{pushed_digest}" in docker.image.inspect(cfg.worker_image).repo_digests


def test_demo_tasks_ran_as_pods_from_the_registry_image(
    stack: Stack, demo_run: str, pushed_digest: str
) -> None:
    cfg = stack.settings
    docker = stack.docker()
    pods = [
        p
        for p in docker.container.list(
            all=True,
            filters=[
                ("label", "airflow-k3s.standin=pod"),
                ("label", f"airflow-k3s.project={stack.project}"),
                ("label", f"pod.label/dag_id={DAG}"),
            ],
        )
    ]
    by_task = {(p.config.labels or {})["pod.label/task_id"]: p for p in pods}
    assert set(by_task) == TASKS, "each task runs in its own pod"
    repo = cfg.worker_image.rsplit(":", 1)[0]
    for task_id, pod in by_task.items():
        assert pod.state.exit_code == 0, task_id
        assert pod.config.image == f"{repo}@{pushed_digest}", "ran the image pulled by digest"
        assert (pod.config.labels or {})["airflow-k3s.image-digest"].endswith(pushed_digest)
        assert pod.config.user == "50000:0"
        env = dict(e.split("=", 1) for e in pod.config.env or [])
        assert (
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
            == "http://airflow-apiserver:8080/execution/"
        )
        assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
        assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env, "workers need no DB"
        mounts = {m.destination: m.name for m in pod.mounts}
        assert mounts.get("/shared") == f"{stack.project}_shared-data"


def test_s3_object_equals_what_the_endpoint_served(stack: Stack, demo_run: str) -> None:
    cfg = stack.settings
    url = f"http://127.0.0.1:{cfg.ports['MOCKSERVER_PORT']}/api/v1/orders"
    with urllib.request.urlopen(url, timeout=10) as response:
        served = json.loads(response.read())
    body = stack.s3().get_object(Bucket="airflow-data", Key=object_key(demo_run))["Body"].read()
    assert json.loads(body) == served
    assert len(served["orders"]) == 3


def test_every_task_log_is_in_s3_and_readable_through_the_api(stack: Stack, demo_run: str) -> None:
    api = stack.api()
    for task_id in sorted(TASKS):
        key = f"logs/dag_id={DAG}/run_id={demo_run}/task_id={task_id}/attempt=1.log"
        text = stack.s3_object("airflow-logs", key).decode()
        assert "Done. Returned value was" in text, f"{task_id}'s log in S3 is incomplete"
        through_api = api.task_log(DAG, demo_run, task_id, 1)
        assert f"s3://airflow-logs/{key}" in through_api, "the api-server read the log from S3"
        assert "Done. Returned value was" in through_api


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["trigger-dag", "no_such_dag"],
            6,
            "unknown DAG id 'no_such_dag'; known DAGs: demo_rest_to_s3",
        ),
        (["trigger-dag", DAG, "--conf", "{not json"], 2, "--conf is not valid JSON"),
        (["trigger-dag", DAG, "--conf", "[1, 2]"], 2, "--conf must be a JSON object"),
        (["kubectl", "--", "get", "pods"], 8, "needs k3s, which IMAGES=local does not run"),
    ],
)
def test_bad_input_gets_one_clear_line(
    stack: Stack, args: list[str], code: int, message: str
) -> None:
    result = stack.invoke(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_stack_not_running_is_said_plainly(stack: Stack) -> None:
    other = Stack(
        images=stack.images,
        project="airflow-k3s-not-running",
        state_dir=stack.state_dir,
        env={**stack.env, "COMPOSE_PROJECT_NAME": "airflow-k3s-not-running"},
    )
    result = other.invoke("trigger-dag", DAG)
    assert result.returncode == 4
    assert "the stack is not running" in result.stderr
    assert "Traceback" not in result.stderr
