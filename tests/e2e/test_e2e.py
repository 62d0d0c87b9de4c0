"""End to end on the cluster: the KubernetesExecutor runs each task as a pod on the k3s node, from
the worker image in the registry, and everything a task touches is checked where it lives: the pod
objects through kubectl, the shared volume on the node, S3, the task logs through the API.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from demo_lib import object_key, sanitise_run_id

from airflow_k3s.cluster import pod_label_value
from airflow_k3s.settings import ROOT
from tests.harness import DEMO, DEMO_TASKS, Stack

pytestmark = pytest.mark.docker
WORKER_IMAGE = "registry:5000/airflow-worker:latest"


@pytest.fixture(scope="module")
def pushed_digest(stack: Stack) -> str:
    """The worker image's digest in the registry (`invoke push` again: idempotent)."""
    return stack.push()


@pytest.fixture(scope="module")
def demo_run(stack: Stack, pushed_digest: str) -> str:
    """The demo DAG run to success through the task library (after the push)."""
    return stack.run_dag(DEMO, timeout=600)


def run_pods(stack: Stack, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """task_id -> its newest pod, for one run, once every pod of the run has ended: a task's
    state is final before its pod is (the worker uploads the task's log after reporting it)."""
    selector = f"dag_id={dag_id},run_id={pod_label_value(run_id)}"
    deadline = time.monotonic() + 120
    while True:
        pods = stack.pods(selector)
        phases = {p["metadata"]["name"]: p["status"].get("phase") for p in pods}
        if pods and all(phase in ("Succeeded", "Failed") for phase in phases.values()):
            return {p["metadata"]["labels"]["task_id"]: p for p in pods}
        assert time.monotonic() < deadline, f"pods of {run_id} did not end: {phases}"
        time.sleep(1)


def test_each_demo_task_ran_in_its_own_pod_from_the_pushed_digest(
    stack: Stack, demo_run: str, pushed_digest: str
) -> None:
    by_task = run_pods(stack, DEMO, demo_run)
    assert set(by_task) == DEMO_TASKS
    assert len({p["metadata"]["name"] for p in by_task.values()}) == 3
    for task_id, pod in by_task.items():
        assert pod["status"]["phase"] == "Succeeded", task_id
        assert pod["spec"]["nodeName"] == "k3s"
        container = pod["spec"]["containers"][0]
        assert container["name"] == "base"
        assert container["image"] == WORKER_IMAGE
        status = pod["status"]["containerStatuses"][0]
        assert status["imageID"].endswith(pushed_digest), (task_id, status["imageID"])
        assert status["state"]["terminated"]["exitCode"] == 0
        assert pod["spec"]["securityContext"]["runAsUser"] == 50000
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["airflow-shared"]


def test_the_file_fetch_wrote_is_on_the_shared_volume(stack: Stack, demo_run: str) -> None:
    claim = stack.kubectl_json("get", "pvc", "airflow-shared")
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["volumeName"] == "airflow-shared"
    # The PV is a hostPath on the node: the file is there, where upload and verify read it.
    path = f"/var/lib/airflow-shared/{sanitise_run_id(demo_run)}/orders.json"
    on_node = stack.docker.exec("k3s", ["cat", path])
    served = mockserver_orders(stack)
    assert json.loads(str(on_node)) == served


def mockserver_orders(stack: Stack) -> Any:
    url = f"http://127.0.0.1:{stack.settings.ports['MOCKSERVER_PORT']}/api/v1/orders"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_s3_object_equals_what_mockserver_served(stack: Stack, demo_run: str) -> None:
    body = stack.s3().get_object(Bucket="airflow-data", Key=object_key(demo_run))["Body"].read()
    served = mockserver_orders(stack)
    assert json.loads(body) == served
    assert len(served["orders"]) == 3


def test_every_task_log_is_in_s3_and_readable_through_the_api(stack: Stack, demo_run: str) -> None:
    api = stack.api()
    for task_id in sorted(DEMO_TASKS):
        key = f"logs/dag_id={DEMO}/run_id={demo_run}/task_id={task_id}/attempt=1.log"
        text = stack.s3_object("airflow-logs", key).decode()
        assert "Done. Returned value was" in text, f"{task_id}'s log in S3 is incomplete"
        through_api = api.task_log(DEMO, demo_run, task_id, 1)
        assert f"s3://airflow-logs/{key}" in through_api, "the api-server read the log from S3"
        assert "Done. Returned value was" in through_api


def test_a_pod_resolves_the_compose_services(stack: Stack, pushed_digest: str) -> None:
    """Pod DNS: CoreDNS forwards to the node's bridge to Docker's embedded resolver."""
    names = ["s3", "mockserver", "airflow-apiserver", "registry", "postgres"]
    script = (
        f"import json, socket; print(json.dumps({{n: socket.gethostbyname(n) for n in {names!r}}}))"
    )
    name = "e2e-dns-check"
    stack.kubectl("delete", "pod", name, "--ignore-not-found", "--wait=true")
    created = stack.kubectl(
        "run",
        name,
        f"--image={WORKER_IMAGE}",
        "--restart=Never",
        "--command",
        "--",
        "python",
        "-c",
        script,
    )
    assert created.returncode == 0, created.stderr
    deadline = time.monotonic() + 180
    while (phase := stack.kubectl_json("get", "pod", name)["status"].get("phase")) not in (
        "Succeeded",
        "Failed",
    ):
        assert time.monotonic() < deadline, f"pod {name} still {phase}"
        time.sleep(2)
    logs = stack.kubectl("logs", name)
    assert phase == "Succeeded", logs.stdout + logs.stderr
    resolved = json.loads(logs.stdout.strip().splitlines()[-1])
    for service in names:
        networks = stack.container(service)["NetworkSettings"]["Networks"] or {}
        ips = {n["IPAddress"] for n in networks.values()}
        assert resolved[service] in ips, (service, resolved[service], ips)
    stack.kubectl("delete", "pod", name, "--wait=false")


def test_a_running_tasks_log_is_readable_through_the_api_while_it_runs(stack: Stack) -> None:
    """While the task runs, the api-server reads its log from the pod (kube API); after, S3."""
    result = stack.invoke("trigger-dag", "example_progress", "--conf", '{"seconds": 40}')
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1]
    api = stack.api()
    deadline = time.monotonic() + 240
    seen = ""
    while time.monotonic() < deadline:
        state, tis = api.run_state("example_progress", run_id)
        ti = tis.get("progress", {})
        if ti.get("state") == "running":
            seen = api.task_log("example_progress", run_id, "progress", 1)
            if "progress 3/40" in seen:
                break
        assert state not in ("success", "failed"), (
            f"the run ended ({state}) before its log was read"
        )
        time.sleep(2)
    assert "progress 3/40" in seen, f"no progress lines while running:\n{seen[-2000:]}"
    assert api.run_state("example_progress", run_id)[1]["progress"]["state"] == "running"
    print("log while running (from the pod):", seen[-600:])


def test_pod_override_resources_volume_and_image(stack: Stack, pushed_digest: str) -> None:
    """executor_config={"pod_override": ...} as the cncf provider documents it, on the cluster."""
    alt = build_alt_worker(stack)
    run_id = stack.run_dag("example_pod_override", timeout=600)
    by_task = run_pods(stack, "example_pod_override", run_id)
    assert set(by_task) == {"sized", "scratch", "other_image"}
    api = stack.api()
    sized = by_task["sized"]["spec"]["containers"][0]["resources"]
    assert sized["limits"]["memory"] == "700Mi"
    assert sized["requests"] == {"cpu": "50m", "memory": "200Mi"}
    assert by_task["sized"]["metadata"]["labels"]["airflow-k3s/example"] == "sized"
    assert api.xcom("example_pod_override", run_id, "sized")["memory_limit"] == 700 * 1024 * 1024
    volumes = {v["name"] for v in by_task["scratch"]["spec"]["volumes"]}
    assert {"scratch", "shared"} <= volumes
    assert api.xcom("example_pod_override", run_id, "scratch") == {
        "scratch": "written in the scratch volume",
        "shared_mounted": True,
    }
    other = by_task["other_image"]
    assert other["spec"]["containers"][0]["image"] == "registry:5000/airflow-worker:alt"
    assert other["status"]["containerStatuses"][0]["imageID"].endswith(alt)
    assert api.xcom("example_pod_override", run_id, "other_image") == {"variant": "alt"}


def build_alt_worker(stack: Stack) -> str:
    """A variant of the worker image (a marker file more) pushed as :alt; its digest."""
    cfg = stack.settings
    docker = stack.docker
    alt = cfg.worker_image.rsplit(":", 1)[0] + ":alt"
    context = stack.state_dir / "alt-worker"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(
        f"FROM {cfg.worker_image}\nRUN echo alt > /opt/airflow/IMAGE_VARIANT\n"
    )
    docker.build(context, alt)
    return docker.push(alt)


def test_a_failed_try_is_retried_in_a_fresh_pod(stack: Stack) -> None:
    run_id = stack.run_dag("example_retry", timeout=600)
    run_pods(stack, "example_retry", run_id)  # both tries' pods have ended
    pods = stack.pods(f"dag_id=example_retry,run_id={pod_label_value(run_id)}")
    by_try = {p["metadata"]["labels"]["try_number"]: p for p in pods}
    assert set(by_try) == {"1", "2"}, "one pod per try"
    api = stack.api()
    tries = api.get(f"/api/v2/dags/example_retry/dagRuns/{run_id}/taskInstances/flaky/tries")
    states = {t["try_number"]: t["state"] for t in tries["task_instances"]}
    assert states[2] == "success"
    assert states[1] in ("failed", "up_for_retry"), states
    assert "failing try 1 on purpose" in api.task_log("example_retry", run_id, "flaky", 1)
    result = api.xcom("example_retry", run_id, "flaky")
    assert result["try"] == 2
    assert result["first_try_pod"] == by_try["1"]["metadata"]["name"]
    assert result["pod"] == by_try["2"]["metadata"]["name"]


def test_a_task_launches_its_own_pod_with_the_kubernetes_pod_operator(stack: Stack) -> None:
    run_id = stack.run_dag("example_kpo", timeout=600)
    worker = run_pods(stack, "example_kpo", run_id)["launch"]
    assert worker["spec"]["serviceAccountName"] == "airflow-kpo"
    log = stack.api().task_log("example_kpo", run_id, "launch", 1)
    assert "hello from the pod the task launched" in log, log[-3000:]
    children = stack.pods("example=kpo-child")
    assert all(p["metadata"].get("deletionTimestamp") for p in children), "deleted at the end"


def test_two_executors_a_pod_for_one_task_the_scheduler_for_the_other(stack: Stack) -> None:
    run_id = stack.run_dag("example_two_executors", timeout=600)
    pods = run_pods(stack, "example_two_executors", run_id)
    assert set(pods) == {"in_a_pod"}, "the LocalExecutor's task has no pod"
    api = stack.api()
    assert (
        api.xcom("example_two_executors", run_id, "in_a_pod")
        == pods["in_a_pod"]["metadata"]["name"]
    )
    hostname = stack.container("airflow-scheduler")["Config"]["Hostname"]
    assert api.xcom("example_two_executors", run_id, "in_the_scheduler") == hostname
    _, tis = api.run_state("example_two_executors", run_id)
    assert tis["in_the_scheduler"]["executor"] == "LocalExecutor"


def test_task_test_runs_one_task_as_a_pod_outside_any_run(stack: Stack) -> None:
    def run_ids() -> set[str]:
        runs = stack.api().get(f"/api/v2/dags/{DEMO}/dagRuns", limit=100)["dag_runs"]
        return {r["dag_run_id"] for r in runs}

    stack.run_dag(DEMO, timeout=600)  # a run with no logical date, as the UI and the API make
    runs_before = run_ids()
    result = stack.invoke("task-test", DEMO, "fetch", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Wrote 3 orders" in result.stdout
    assert re.search(
        r"pod task-test-demo-rest-to-s3-fetch-\w+ ended: Completed \(exit 0\)", result.stderr
    )
    pods = stack.pods("airflow-k3s/task-test=true")
    assert pods, "the pod stays for inspection"
    assert pods[-1]["spec"]["containers"][0]["args"][:3] == ["airflow", "tasks", "test"]
    # Outside any run, and no run lost: `airflow tasks test` without a date of its own deletes one.
    assert run_ids() == runs_before


def test_users_own_dags_requirements_template_and_base_image(stack: Stack, tmp_path: Path) -> None:
    """DAGS_DIR, WORKER_REQUIREMENTS, POD_TEMPLATE, then WORKER_BASE_IMAGE, each through `invoke
    up` and a run on the cluster; then the repo's defaults again. (Last: it changes the stack.)"""
    dags = tmp_path / "my-dags"
    dags.mkdir()
    (dags / "my_dag.py").write_text(
        "from airflow.sdk import dag, task\n\n\n"
        "@task\ndef mine() -> str:\n    import humanize\n\n    return humanize.__version__\n\n\n"
        "@dag(dag_id='my_dag', schedule=None, catchup=False)\n"
        "def my_dag():\n    mine()\n\n\nmy_dag()\n"
    )
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("humanize==4.12.3\n")
    template = yaml.safe_load((ROOT / "airflow" / "pod_template.yaml").read_text())
    template["metadata"]["labels"]["airflow-k3s/template"] = "mine"
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(template))
    mine = Stack(
        stack.images,
        stack.project,
        stack.state_dir,
        {
            **stack.env,
            "DAGS_DIR": str(dags),
            "WORKER_REQUIREMENTS": str(requirements),
            "POD_TEMPLATE": str(tmp_path / "pod.yaml"),
        },
    )
    try:
        up = mine.invoke("up", timeout=1200)
        assert up.returncode == 0, up.stderr[-3000:]
        run_id = mine.run_dag("my_dag", timeout=600)
        assert mine.api().xcom("my_dag", run_id, "mine") == "4.12.3"
        pod = run_pods(mine, "my_dag", run_id)["mine"]
        assert pod["metadata"]["labels"]["airflow-k3s/template"] == "mine"
        assert "demo_rest_to_s3" not in mine.api().dag_ids(), "the dag-processor reads DAGS_DIR"
        # The user's own Airflow image as the worker's base (here: the local Airflow image, which
        # carries the provider; worker/byo.Dockerfile keeps its user and entrypoint).
        byo = Stack(
            stack.images,
            stack.project,
            stack.state_dir,
            {**stack.env, "WORKER_BASE_IMAGE": "airflow-k3s/airflow:3.3.2"},
        )
        up = byo.invoke("up", timeout=1200)
        assert up.returncode == 0, up.stderr[-3000:]
        run_id = byo.run_dag(DEMO, timeout=600)
        assert set(run_pods(byo, DEMO, run_id)) == DEMO_TASKS
    finally:
        back = stack.invoke("up", timeout=1200)
    assert back.returncode == 0, back.stderr[-3000:]
