"""Faults on a running stack, on the cluster, in this order, each leaving the stack usable for the
next: a scheduler restart while a pod runs (adoption), an S3 outage during a run, a postgres
restart, an edited worker configuration reaching new pods, `invoke up` twice, `invoke down` +
`invoke up` (same node, same data), and last `invoke clean`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from demo_lib import object_key, sanitise_run_id

from airflow_k3s.cluster import pod_label_value
from airflow_k3s.settings import ROOT
from tests.faults.faultlib import (
    DAG,
    running_pod,
    task_states,
    trigger,
    variant,
    wait_for,
    wait_healthy,
    wait_run,
)
from tests.harness import Stack

pytestmark = pytest.mark.docker
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def ended_pods(stack: Stack, run_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    """The run's pods once all have ended (a task's state is final before its pod's)."""

    def ended() -> list[dict[str, Any]] | None:
        pods = stack.pods(f"run_id={pod_label_value(run_id)}")
        done = pods and all(p["status"].get("phase") in ("Succeeded", "Failed") for p in pods)
        return pods if done else None

    result: list[dict[str, Any]] = wait_for(f"the pods of {run_id} to end", ended, timeout, 1)
    return result


def state_of(stack: Stack, run_id: str, task_id: str) -> str:
    return task_states(stack, run_id)[1].get(task_id, ("", 0))[0]


def container_ids(stack: Stack) -> dict[str, str]:
    return {str(c["Service"]): str(c["ID"]) for c in stack.docker.containers()}


def s3_objects(stack: Stack) -> dict[str, str]:
    s3 = stack.s3()
    found: dict[str, str] = {}
    for bucket in ("airflow-data", "airflow-logs"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                found[f"{bucket}/{obj['Key']}"] = obj["ETag"]
    return found


def dag_runs(stack: Stack) -> dict[str, str]:
    runs = stack.api().get(f"/api/v2/dags/{DAG}/dagRuns", limit=100)["dag_runs"]
    return {r["dag_run_id"]: r["state"] for r in runs}


def test_scheduler_restart_while_a_pod_runs_adopts_the_pod(stack: Stack) -> None:
    """The new scheduler adopts the running pod: the task succeeds on its first and only try."""
    run_id = trigger(stack, "example_progress", '{"seconds": 45}')
    pod = wait_for("the task's pod to be running", lambda: running_pod(stack, run_id), 180, 1)
    stack.docker.restart("airflow-scheduler")
    state, tis = wait_run(stack, run_id, "example_progress", timeout=420)
    assert state == "success", tis
    assert tis["progress"] == ("success", 1), "adopted, not retried"
    pods = ended_pods(stack, run_id)
    assert [f"pod/{p['metadata']['name']}" for p in pods] == [pod], "one pod, the adopted one"
    assert pods[0]["status"]["phase"] == "Succeeded"


def test_s3_outage_while_tasks_write(stack: Stack) -> None:
    docker = stack.docker
    # S3 goes down before the run: fetch needs no S3 (REST endpoint -> shared volume), so the
    # first task to write into the outage is always upload.
    docker.stop("s3")
    try:
        run_id = trigger(stack)
        wait_for(
            "upload's first try to fail",
            lambda: state_of(stack, run_id, "upload") == "up_for_retry",
            240,
        )
    finally:
        docker.start("s3")  # back before the retry (retry_delay 10 s)
    state, tis = wait_run(stack, run_id)
    assert state == "success", tis
    assert tis["upload"] == ("success", 2), "upload succeeded on its retry"
    # Where the failed try's error is visible: its pod's output (S3 had no copy of its log).
    shown = stack.invoke("pod-logs", "upload", "--run-id", run_id, "--try-number", "1")
    assert shown.returncode == 0, shown.stderr
    assert "EndpointConnectionError" in shown.stdout
    assert 'Could not connect to the endpoint URL: "http://s3:8333/' in shown.stdout
    assert "final_state=up_for_retry" in shown.stdout
    # Nothing lost: the object is there and the retry's log reached S3.
    assert stack.s3_object("airflow-data", object_key(run_id))
    key = f"logs/dag_id={DAG}/run_id={run_id}/task_id=upload/attempt=2.log"
    assert "Done. Returned value was" in stack.s3_object("airflow-logs", key).decode()


def test_postgres_restart_during_a_run(stack: Stack) -> None:
    run_id = trigger(stack)
    wait_for("a worker pod of the run to be running", lambda: running_pod(stack, run_id), 180)
    stack.docker.restart("postgres")
    state, tis = wait_run(stack, run_id)
    print(f"the run in flight during the postgres restart ended {state}: {tis}")
    wait_healthy(stack)
    after = stack.invoke("trigger-dag", DAG, "--wait", "--timeout", "400")
    assert after.returncode == 0, after.stderr[-4000:]


def worker_pod_env(stack: Stack, name: str, variable: str) -> str:
    """A worker pod as the executor makes it now (`invoke pod-yaml`: the pod template, the
    executor's settings, the worker Secret), run once to print ``variable``; its output."""
    shown = stack.invoke("pod-yaml", DAG, "fetch")
    assert shown.returncode == 0, shown.stderr
    pod = yaml.safe_load(shown.stdout)
    namespace = pod["metadata"]["namespace"]
    pod["metadata"] = {"name": name, "namespace": namespace}
    pod["spec"]["restartPolicy"] = "Never"
    # The image's entrypoint runs python as given (anything else as `airflow ...`).
    script = f"import os; print(os.environ[{variable!r}])"
    pod["spec"]["containers"][0]["args"] = ["python", "-c", script]
    kube = stack.kube
    kube.run("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=true")
    kube.apply(pod)
    try:
        ended = kube.wait_pod_ended(name, namespace, timeout=180)
        output = kube.run("logs", name, "-n", namespace).stdout.strip()
        assert ended["exitCode"] == 0, f"{variable} in the pod: {output or ended}"
        return output.splitlines()[-1]
    finally:
        kube.run("delete", "pod", name, "-n", namespace, "--wait=false", check=False)


def test_an_edited_worker_configuration_reaches_new_pods(stack: Stack, tmp_path: Path) -> None:
    """The Airflow configuration edited (a copy of airflow.env: $AIRFLOW_ENV_FILE), `invoke up`
    again: k3s re-applies the Secret, and a pod started after it has the new variable (no restart
    of the node)."""
    edited = tmp_path / "airflow.env"
    marker = f"edited-{stack.project}"
    edited.write_text(
        (ROOT / "airflow" / "airflow.env").read_text() + f"\nAIRFLOW_VAR_FAULTS_MARKER={marker}\n"
    )
    before = container_ids(stack)
    mine = variant(stack, AIRFLOW_ENV_FILE=str(edited))
    up = mine.invoke("up", "--no-build", timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        assert container_ids(stack)["k3s"] == before["k3s"], "k3s was not restarted for it"
        assert worker_pod_env(stack, "faults-env-edited", "AIRFLOW_VAR_FAULTS_MARKER") == marker
    finally:
        back = stack.invoke("up", "--no-build", timeout=600)  # the repo's configuration again
    assert back.returncode == 0, back.stderr[-3000:]
    secret = stack.kubectl_json("get", "secret", "airflow-worker-env")
    assert "AIRFLOW_VAR_FAULTS_MARKER" not in secret["data"], "the edit is gone again"


def test_a_task_over_its_memory_limit_is_oomkilled(stack: Stack) -> None:
    result = stack.invoke("trigger-dag", "faults_oom", "--wait", "--timeout", "300")
    assert result.returncode == 1
    assert "hog: running -> failed" in result.stderr
    assert "Likely out of memory error (OOM)" in result.stderr, "the task's log says why"
    assert re.search(r"----- pod faults-oom-hog-\S+: \w+ \(base: OOMKilled", result.stderr)
    assert "Traceback" not in result.stderr


def test_a_pod_the_api_server_rejects_fails_fast_with_its_message(stack: Stack) -> None:
    started = time.monotonic()
    result = stack.invoke("trigger-dag", "faults_rejected", "--wait", "--timeout", "300")
    took = time.monotonic() - started
    assert result.returncode == 1
    assert took < 90, f"took {took:.0f} s to fail"
    assert (
        "refused: none -> failed" in result.stderr or "refused: queued -> failed" in result.stderr
    )
    assert "refused: the executor could not start its pod: API server: Pod" in result.stderr
    assert 'is invalid: metadata.labels: Invalid value: "not a valid value!"' in result.stderr


def test_registry_stopped_when_a_pod_starts(stack: Stack) -> None:
    """The pull fails: the task fails fast and `--wait` shows the pull error from the events."""
    docker = stack.docker
    docker.stop("registry")
    try:
        started = time.monotonic()
        result = stack.invoke("trigger-dag", DAG, "--wait", "--timeout", "300")
        took = time.monotonic() - started
    finally:
        docker.start("registry")
    assert result.returncode == 1
    assert took < 150, f"took {took:.0f} s to fail"
    assert "ErrImagePull" in result.stderr or "ImagePullBackOff" in result.stderr
    assert 'Failed to pull image "registry:5000/airflow-worker:latest"' in result.stderr
    wait_healthy(stack)
    after = stack.invoke("trigger-dag", DAG, "--wait", "--timeout", "400")
    assert after.returncode == 0, after.stderr[-4000:]


def running_task(stack: Stack, dag_id: str = "example_progress") -> str:
    """A Running worker pod of the DAG (any run), or ''."""
    selector = f"dag_id={dag_id}"
    found = stack.kubectl("get", "pods", "-l", selector, "--field-selector=status.phase=Running")
    return found.stdout.strip() if found.returncode == 0 and "Running" in found.stdout else ""


def test_api_server_restart_while_a_task_runs_and_a_follower_waits(stack: Stack) -> None:
    """The task's Execution API calls fail while the api-server restarts: the task goes on, or
    fails with a clear reason and succeeds on its retry. `trigger-dag --wait`, following the run
    meanwhile, says it waits for the API, goes on, and exits with the run's true state (0)."""
    follower = stack.start_invoke(
        "trigger-dag", "example_progress", "--conf", '{"seconds": 40}', "--wait", "--timeout", "480"
    )
    try:
        wait_for("the task's pod to be running", lambda: running_task(stack), 180, 1)
        time.sleep(5)
        stack.docker.restart("airflow-apiserver")
        out, err = follower.communicate(timeout=600)
    finally:
        follower.kill()
    print(f"the follower said:\n{err[-6000:]}")
    assert follower.returncode == 0, err[-3000:]
    assert "==> waiting for the Airflow API (" in err, "the follower saw the restart"
    assert "==> the Airflow API answers again" in err
    run_id = out.strip().splitlines()[-1]
    assert f"==> run {run_id} of example_progress ended: success" in err
    wait_healthy(stack)
    state, tis = wait_run(stack, run_id, "example_progress", timeout=60)
    assert state == "success", tis
    if tis["progress"][1] > 1:
        log = stack.api().task_log("example_progress", run_id, "progress", 1)
        print("try 1 ended with:", log[-1500:])


def test_node_restart_idle_and_while_a_task_runs(stack: Stack) -> None:
    """k3s restarted twice: while idle, then while a task's pod runs. The stack recovers, the
    next run succeeds, the PVC's files are still there."""
    runs = dag_runs(stack)
    some_run = next(r for r, s in runs.items() if s == "success")
    shared_file = f"/var/lib/airflow-shared/{sanitise_run_id(some_run)}/orders.json"
    docker = stack.docker
    docker.restart("k3s")
    wait_healthy(stack)
    assert stack.run_dag(DAG, timeout=400)

    run_id = trigger(stack, "example_progress", '{"seconds": 60}')
    wait_for("the task's pod to be running", lambda: running_pod(stack, run_id), 180, 1)
    docker.restart("k3s")
    wait_healthy(stack)
    state, tis = wait_run(stack, run_id, "example_progress", timeout=600)
    print(f"the run whose pod the node restart killed: {state} {tis}")
    # It ended (wait_run), its one retry in a fresh pod or failed; the try whose pod died with the
    # node is never counted a success.
    assert tis["progress"] != ("success", 1), "the pod killed by the node restart 'succeeded'"
    after = stack.invoke("trigger-dag", DAG, "--wait", "--timeout", "400")
    assert after.returncode == 0, after.stderr[-4000:]
    on_node = docker.exec("k3s", ["cat", shared_file])
    assert json.loads(str(on_node))["orders"], "the PVC's files survive the node's restarts"
    nodes = stack.kubectl_json("get", "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["k3s"]


KUBELET_PIDS = (
    'for p in /proc/[0-9]*; do c="$(tr "\\0" " " <"$p/cmdline" 2>/dev/null)"; '
    'case "$c" in /*"k3s kubelet "*) echo "${p#/proc/}";; esac; done'
)


def test_a_kubelet_killed_while_a_task_runs_is_restarted_and_the_task_goes_on(
    stack: Stack,
) -> None:
    """The local node supervises its components one by one (like kind's node): SIGKILL of the
    kubelet while a task's pod runs restarts the kubelet alone; the pod lives on and the task
    succeeds at its first try."""
    if stack.images != "local":
        pytest.skip("IMAGES=upstream: rancher/k3s runs the kubelet inside its one process")
    run_id = trigger(stack, "example_progress", '{"seconds": 45}')
    pod = wait_for("the task's pod to be running", lambda: running_pod(stack, run_id), 180, 1)
    time.sleep(3)
    before = stack.docker.exec("k3s", ["sh", "-c", KUBELET_PIDS]).split()
    assert len(before) == 1, f"one kubelet, not {before}"
    stack.docker.exec("k3s", ["sh", "-c", f"kill -KILL {before[0]}"])
    after = wait_for(
        "a new kubelet",
        lambda: [p for p in stack.docker.exec("k3s", ["sh", "-c", KUBELET_PIDS]).split() if p],
        60,
        1,
    )
    assert after != before
    assert "kubelet exited (killed by killed): starting it again in 1s" in (
        stack.docker.service_log("k3s", tail=400)
    )
    state, tis = wait_run(stack, run_id, "example_progress", timeout=420)
    assert state == "success", tis
    assert tis["progress"] == ("success", 1), "the task's pod outlived the kubelet"
    pods = ended_pods(stack, run_id)
    assert [f"pod/{p['metadata']['name']}" for p in pods] == [pod]
    wait_healthy(stack)


ETCD_PROBE = """
import json, ssl, urllib.request
url, seen = "127.0.0.1:2379/health", {}
try:
    urllib.request.urlopen("http://" + url, timeout=5).read()
    seen["http"] = "answered"
except Exception as exc:
    seen["http"] = f"{type(exc).__name__}: {exc}"
tls = ssl.create_default_context(cafile="/etcd/server-ca.crt")
try:
    urllib.request.urlopen("https://" + url, context=tls, timeout=5).read()
    seen["tls without a certificate"] = "answered"
except Exception as exc:
    seen["tls without a certificate"] = f"{type(exc).__name__}: {exc}"
tls.load_cert_chain("/etcd/client.crt", "/etcd/client.key")
seen["with the node's certificate"] = json.loads(
    urllib.request.urlopen("https://" + url, context=tls, timeout=5).read()
)["health"]
print(json.dumps(seen))
"""


def test_etcd_refuses_a_client_without_its_certificate(stack: Stack, tmp_path: Path) -> None:
    """etcd (IMAGES=local) speaks TLS only and asks every client for a certificate of its own CA,
    as k3s's does: from the node's own network namespace, plain HTTP and TLS without a
    certificate are refused, the API server's client certificate is answered."""
    if stack.images != "local":
        pytest.skip("IMAGES=upstream: rancher/k3s runs kine/etcd in-process, not on a port")
    for name in ("server-ca.crt", "client.crt", "client.key"):
        text = stack.docker.exec("k3s", ["cat", f"/var/lib/rancher/k3s/server/tls/etcd/{name}"])
        (tmp_path / name).write_text(text)
    node = str(stack.container("k3s")["Name"]).lstrip("/")
    result = stack.docker.docker(
        "run",
        "--rm",
        "--user",
        "0",
        f"--network=container:{node}",
        "-v",
        f"{tmp_path}:/etcd:ro",
        "--entrypoint",
        "python",
        stack.settings.airflow_image,
        "-c",
        ETCD_PROBE,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print("etcd answered:", seen)
    assert seen["with the node's certificate"] == "true", "the probe can reach etcd"
    assert seen["http"] != "answered", "plain HTTP is refused"
    assert "certificate required" in seen["tls without a certificate"].lower()


def test_up_twice_changes_nothing(stack: Stack) -> None:
    before = container_ids(stack)
    for attempt in (1, 2):
        result = stack.invoke("up", timeout=900)
        assert result.returncode == 0, f"`invoke up` #{attempt}: {result.stderr[-3000:]}"
        assert container_ids(stack) == before, f"`invoke up` #{attempt} replaced containers"
    assert "Traceback" not in result.stderr


def test_down_then_up_keeps_runs_objects_images_and_the_node(stack: Stack) -> None:
    registry = f"http://127.0.0.1:{stack.settings.ports['REGISTRY_PORT']}/v2/airflow-worker"
    manifest = httpx.get(f"{registry}/manifests/latest", headers={"Accept": MANIFEST_V2})
    digest = manifest.headers["Docker-Content-Digest"]
    # A second tag that only a kept registry volume can still have after `up` (which re-pushes
    # `latest`).
    put = httpx.put(
        f"{registry}/manifests/kept-by-down",
        content=manifest.content,
        headers={"Content-Type": MANIFEST_V2},
    )
    assert put.status_code == 201, put.text
    runs, objects = dag_runs(stack), s3_objects(stack)
    assert runs
    assert any(k.startswith("airflow-data/orders/") for k in objects)
    some_run = next(r for r, s in runs.items() if s == "success")
    shared_file = f"/var/lib/airflow-shared/{sanitise_run_id(some_run)}/orders.json"
    pods_before = {p["metadata"]["name"] for p in stack.pods(f"dag_id={DAG}")}
    node_uid = stack.kubectl_json("get", "node", "k3s")["metadata"]["uid"]

    down = stack.invoke("down", timeout=300)
    assert down.returncode == 0, down.stderr
    assert not stack.docker.containers(), "containers left running after down"
    up = stack.invoke("up", timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]

    assert dag_runs(stack) == runs
    assert s3_objects(stack).items() >= objects.items()
    kept = httpx.head(f"{registry}/manifests/kept-by-down", headers={"Accept": MANIFEST_V2})
    assert kept.status_code == 200
    assert kept.headers["Docker-Content-Digest"] == digest
    # The same node (not a new one beside a NotReady ghost), its pods and its volume's files.
    nodes = stack.kubectl_json("get", "nodes")["items"]
    assert [(n["metadata"]["name"], n["metadata"]["uid"]) for n in nodes] == [("k3s", node_uid)]
    ready: dict[str, Any] = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert pods_before <= {p["metadata"]["name"] for p in stack.pods(f"dag_id={DAG}")}
    on_node = stack.docker.exec("k3s", ["cat", shared_file])
    assert json.loads(str(on_node))["orders"]
    after = stack.invoke("trigger-dag", DAG, "--wait", "--timeout", "400")
    assert after.returncode == 0, after.stderr[-4000:]


def test_clean_leaves_nothing(stack: Stack) -> None:
    result = stack.invoke("clean", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "deleting project" in result.stderr
    assert stack.leftovers() == []
    left: list[Any] = sorted(p.name for p in stack.state_dir.iterdir())
    assert left == [], f"generated files left in {stack.state_dir}: {left}"
